"""Bad configurations fail at parse time and name what is wrong; the default survey plans.

Each test is a `snakemake --dry-run` from the repository root: it parses the Snakefile,
validates config and sheet, and builds the DAG, writing nothing but `.snakemake/` metadata.
`--forceall` lists every job whatever results/ already holds, `--nolock` lets the tests run
beside a real run of the workflow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def dry_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`snakemake --dry-run` on the repository with extra arguments; stdout and stderr merged."""
    return subprocess.run(
        [str(SNAKEMAKE), "--dry-run", "--forceall", "--nolock", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def assert_rejected(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout[-3000:]}"
    for needle in needles:
        assert needle in result.stdout, f"{needle!r} not in the error output:\n{result.stdout[-3000:]}"


@pytest.fixture(scope="module", autouse=True)
def snakemake_available():
    if not SNAKEMAKE.exists():
        pytest.fail(f"{SNAKEMAKE} not found; run the tests with the venv's python (`make test`)")


def test_out_of_range_value_names_the_key(tmp_path):
    override = tmp_path / "bad_pixfrac.yaml"
    override.write_text("mosaic:\n  pixfrac: 3.0\n")
    result = dry_run("--quiet", "--configfile", str(override))
    assert_rejected(result, "pixfrac", "maximum")


def test_unknown_target_is_named(tmp_path):
    result = dry_run("--quiet", "--config", "targets=NOSUCH")
    assert_rejected(result, "NOSUCH", "not in the targets sheet")


def test_duplicated_target_in_sheet_is_named(tmp_path):
    lines = (REPO / "config" / "targets.tsv").read_text().splitlines()
    header, first = lines[0], lines[1]
    duplicated = first.split("\t")[0]
    sheet = tmp_path / "targets.tsv"
    sheet.write_text("\n".join([header, *lines[1:], first]) + "\n")
    result = dry_run("--quiet", "--config", f"targets_sheet={sheet}")
    assert_rejected(result, duplicated, "more than once")


def test_unknown_top_level_key_is_rejected():
    result = dry_run("--quiet", "--config", "bogus_key=1")
    assert_rejected(result, "bogus_key", "Additional properties are not allowed")


def test_default_config_plans_the_simulated_survey():
    result = dry_run()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "simulate_sky" in result.stdout
    for target in ("NGC0628", "DEEPFIELD1"):
        assert f"simulate_exposures_{target}_" in result.stdout, f"no simulation job for {target}"


def test_target_selection_schedules_only_that_target():
    result = dry_run("--config", "targets=NGC0628")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "level_match_NGC0628_" in result.stdout
    assert "DEEPFIELD1" not in result.stdout, "a DEEPFIELD1 job was scheduled with targets=NGC0628"


def test_rule_graph_is_drawable():
    """`snakemake --rulegraph` emits a DOT graph from Stage 2 products to the mosaics."""
    result = subprocess.run(
        [str(SNAKEMAKE), "--rulegraph", "--nolock"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.lstrip().startswith("digraph")
    for rule in ("simulate_sky", "destripe_NGC0628_F200W", "mosaic_grid", "gather_tiles", "all"):
        assert f'label = "{rule}"' in result.stdout


def test_correction_chain_runs_in_the_papers_order():
    """Every correction is in the galaxy's DAG, and each consumes the previous step's files."""
    result = dry_run("--config", "targets=NGC0628", "--printshellcmds")
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    for rule in (
        "persistence_mask_NGC0628_NRCA3",
        "destripe_NGC0628_F200W",
        "miri_background_NGC0628_F770W",
        "align_relative_NGC0628_NIRCAM",
        "align_relative_NGC0628_MIRI",
        "align_absolute_NGC0628_F300M",
        "align_absolute_NGC0628_F1000W",
        "lyot_split_NGC0628_F770W",
        "level_match_NGC0628_F770W",
        "destripe_multitile_NGC0628_F200W",
        "noise_model_NGC0628_F770W",
    ):
        assert f"rule {rule}:" in out, f"{rule} missing from the DAG"
    # wisp subtraction is off for galaxies by default (config: the fit is unreliable under a disk)
    assert "rule wisp_subtract_" not in out
    # NIRCam A3 F200W: persistence_mask (all filters of the detector) -> destripe
    assert "results/NGC0628/persistence_mask/jw09001001001_02101_00001_nrca3_cal.fits" in out
    # NIRCam: destripe -> align_relative -> align_absolute -> level_match -> destripe_multitile -> noise_model
    assert "results/NGC0628/destripe/jw09001001001_02101_00001_nrca1_cal.fits" in out
    assert "--anchor-catalog results/NGC0628/align_absolute/NIRCAM_F300M_catalog.ecsv" in out
    assert "--refcat results/NGC0628/align_absolute/NIRCAM_F300M_catalog.ecsv" in out
    assert "--refcat results/NGC0628/references/NGC0628_refcat.ecsv" in out
    assert "each_exposure.py destripe" in out and "each_exposure.py noise_model" in out


def test_overrides_select_jobs_by_layout_and_switch_steps(tmp_path):
    """The deep field destripes on every scale (local background over whole columns) and skips the
    relative/multi-exposure steps; an override can turn a step off."""
    result = dry_run("--config", "targets=DEEPFIELD1", "--printshellcmds")
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    assert '"local_length":0' in out and '"scales":[4095]' in out
    assert "align_relative_DEEPFIELD1" not in out and "destripe_multitile_DEEPFIELD1" not in out
    assert "align_absolute_DEEPFIELD1_F277W" in out
    # deep field: wisps subtracted on A3/A4/B3/B4 in F150W/F200W only, before persistence and destriping
    assert "rule wisp_subtract_DEEPFIELD1_F200W_NRCA3:" in out
    assert "--template results/DEEPFIELD1/references/wisps/wisp_nrca3_f200w.fits" in out
    assert "wisp_subtract_DEEPFIELD1_F200W_NRCA1" not in out and "wisp_subtract_DEEPFIELD1_F277W" not in out
    override = tmp_path / "no_destripe_f200w.yaml"
    override.write_text(
        "corrections:\n  destripe:\n    enabled: true\n    instruments: [NIRCAM]\n"
        "    overrides:\n      - {filters: [F200W], enabled: false}\n"
    )
    result = dry_run("--config", "targets=NGC0628", "--configfile", str(override))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "destripe_NGC0628_F300M" in result.stdout and "destripe_NGC0628_F200W" not in result.stdout


def test_missing_astrometry_reference_band_falls_back_to_the_nearest_band(tmp_path):
    override = tmp_path / "refband.yaml"
    override.write_text(
        "corrections:\n  align_relative:\n    enabled: true\n    instruments: [NIRCAM, MIRI]\n"
        "    params: {reference_band: {NIRCAM: F410M, MIRI: F1000W}}\n"
    )
    result = dry_run("--config", "targets=NGC0628", "--configfile", str(override), "--printshellcmds")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "NIRCAM reference band F410M was not observed for NGC0628; using F360M" in result.stdout
    assert "--reference-band F360M" in result.stdout


def test_bad_override_selector_is_rejected(tmp_path):
    override = tmp_path / "bad_override.yaml"
    override.write_text(
        "corrections:\n  destripe:\n    enabled: true\n    instruments: [NIRCAM]\n"
        "    overrides:\n      - {bands: [F200W], enabled: false}\n"
    )
    result = dry_run("--quiet", "--configfile", str(override))
    assert_rejected(result, "bands")
