"""The report's sections follow the DAG (issue 12): dry runs of the default survey list a QA job
for each step that runs on a target, and none for a step that does not."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import run_snakemake


def planned_outputs(workdir, *config_args, configfiles=()):
    result = run_snakemake(workdir, "-n", "--forceall", *config_args, configfiles=configfiles, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return set(re.findall(r"^\s+output: (.+)$", result.stdout, re.M)), result.stdout


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory):
    outputs, _ = planned_outputs(tmp_path_factory.mktemp("plan"))
    return {p.strip() for line in outputs for p in line.split(", ")}


def test_every_step_of_the_galaxy_has_its_section(default_plan):
    report = "results/NGC0628/report"
    expected = {
        f"{report}/mosaics/NGC0628_F770W_quicklook.png",
        f"{report}/composite/NGC0628_rgb.png",
        f"{report}/destripe/NGC0628_F200W_stripes.png",
        f"{report}/destripe/NGC0628_F200W_multitile_stripes.png",
        f"{report}/level_match/NGC0628_F1130W_offsets.png",
        f"{report}/figures/level_match_F1130W_graph.png",
        f"{report}/figures/align_relative_NIRCAM_scatter.png",
        f"{report}/figures/align_relative_MIRI_scatter.png",
        f"{report}/figures/align_absolute_NIRCAM_F300M_scatter.png",
        f"{report}/figures/anchoring_fit.png",
        f"{report}/tables/align_relative_residuals.html",
        f"{report}/tables/anchoring_fit.html",
        f"{report}/noise/NGC0628_noise.png",
        f"{report}/benchmarks/NGC0628_benchmarks.png",
        # sections 08 and 10 (tests/test_report.py runs without PSF matching and catalogs)
        "results/psf/psf_fwhm.ecsv",
        "results/NGC0628/matched/qa/NGC0628_F770W_noise_curve.png",
        "results/NGC0628/catalogs/qa/NGC0628_mci_plane.png",
        "results/NGC0628/catalogs/qa/NGC0628_associations.png",
    }
    assert expected <= default_plan, sorted(expected - default_plan)
    # MIRI is not destriped
    assert f"{report}/destripe/NGC0628_F770W_stripes.png" not in default_plan


def test_steps_that_do_not_run_have_no_section(default_plan):
    report = "results/DEEPFIELD1/report"
    assert f"{report}/composite/DEEPFIELD1_rgb.png" in default_plan
    assert f"{report}/destripe/DEEPFIELD1_F200W_stripes.png" in default_plan
    # the deep field skips relative astrometry, multi-exposure destriping and anchoring (no F360M)
    assert not any("align_relative" in p or "anchoring" in p or "multitile" in p for p in default_plan if report in p)
    assert f"{report}/figures/align_absolute_NIRCAM_F277W_scatter.png" in default_plan
    # no previous release configured: no regression
    assert not any("/regress/" in p for p in default_plan)
    # tables of later steps appear only when a rule makes them
    assert not any("psf_kernel_metrics" in p or "depths" in p for p in default_plan)


def test_report_disabled_and_previous_release(tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"targets": ["DEEPFIELD1"], "report": {"enabled": False}}))
    outputs, _ = planned_outputs(tmp_path, configfiles=[off])
    assert outputs and not any("/report/" in line for line in outputs)
    release = tmp_path / "release"
    (release / "DEEPFIELD1" / "mosaic").mkdir(parents=True)
    (release / "DEEPFIELD1_F444W_i2d.fits").write_bytes(b"")  # flat layout
    (release / "DEEPFIELD1" / "mosaic" / "DEEPFIELD1_F115W_i2d.fits").write_bytes(b"")  # like results/
    override = tmp_path / "regress.yaml"
    override.write_text(yaml.safe_dump({"targets": ["DEEPFIELD1"], "regress": {"previous_release": str(release)}}))
    outputs, stdout = planned_outputs(tmp_path, configfiles=[override])
    flat = {p.strip() for line in outputs for p in line.split(", ")}
    assert {
        "results/DEEPFIELD1/regress/DEEPFIELD1_F444W_i2d_regress.fits",
        "results/DEEPFIELD1/regress/DEEPFIELD1_F115W_i2d_regress.fits",
        "results/DEEPFIELD1/report/regress/DEEPFIELD1_regress.html",
    } <= flat
    assert not any("DEEPFIELD1_F200W_i2d_regress" in p for p in flat)  # not in the previous release
