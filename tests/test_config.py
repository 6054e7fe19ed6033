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
    assert "outlier_detection_NGC0628_" in result.stdout
    assert "DEEPFIELD1" not in result.stdout, "a DEEPFIELD1 job was scheduled with targets=NGC0628"


def test_rule_graph_is_drawable():
    """`snakemake --rulegraph` emits a DOT graph from Stage 2 products to the mosaics."""
    result = subprocess.run(
        [str(SNAKEMAKE), "--rulegraph", "--nolock"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.lstrip().startswith("digraph")
    for rule in ("simulate_sky", "mosaic_grid", "resample", "all"):
        assert f'label = "{rule}"' in result.stdout
