"""End-to-end runs of the workflow on the simulated survey (small scale), judged against truth."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.workflow
SCALE = 0.0625  # 1/16 of the real detectors: 128 x 128 SW pixels


def write_override(path, extra: dict) -> str:
    data = yaml.safe_load((REPO / "tests" / "configs" / "clean_sky.yaml").read_text()) if extra.pop("clean") else {}
    data.setdefault("simulation", {})["scale"] = SCALE
    # At 1/16 scale the MIRI field spans only a few 0.6" pixels of the IRAC-like reference,
    # too few for the anchoring fit (tests/test_anchor.py covers anchoring at its own scale).
    data["anchoring"] = {"enabled": False}
    # ... and too few reference-band sources for astrometry: 2-5 per MIRI visit, a 3" spread for the
    # galaxy's F300M fit with rotation, ~15 in the deep field's F277W. The steps then fail as they
    # should; tests/test_astrometry.py and the 1/8-scale demo (tests/bench/demo_truth.py) cover them.
    data.setdefault("corrections", {}).update(
        {step: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for step in ("align_relative", "align_absolute")}
    )
    # PSF matching (~100 jobs for both targets) runs in its own workflow test (tests/test_psf.py).
    data["psf"] = {"enabled": False}
    data["catalogs"] = {"enabled": False}  # tests/test_catalogs.py runs the catalog stage (its own run)
    for key, value in extra.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data))
    return str(path)


def checked_run(workdir, *args, configfiles=()):
    result = run_snakemake(workdir, "--cores", "2", *args, configfiles=configfiles)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """Both demo targets with every effect off but noise: mosaics must reproduce the truth."""
    workdir = tmp_path_factory.mktemp("clean")
    override = write_override(workdir / "override.yaml", {"clean": True})
    checked_run(workdir, configfiles=[override])
    return workdir


@pytest.fixture(scope="module")
def galaxy_runs(tmp_path_factory):
    """The galaxy with all effects on, run twice (2 cores) in separate directories.

    Between the simulation and the rest of the first run the simulated inputs are
    checksummed, to prove the downstream steps never modify them.
    """
    runs = []
    for i in range(2):
        workdir = tmp_path_factory.mktemp(f"galaxy{i}")
        override = write_override(workdir / "override.yaml", {"clean": False, "targets": ["NGC0628"]})
        checksums = None
        if i == 0:
            checked_run(workdir, "results/NGC0628/truth/NGC0628_exposures_truth.ecsv", configfiles=[override])
            checksums = tree_checksums(workdir / "results" / "NGC0628" / "simulated")
        checked_run(workdir, configfiles=[override])
        runs.append((workdir, checksums))
    return runs


def tree_checksums(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.fits"))}


def mosaics(workdir):
    return sorted((workdir / "results").glob("*/mosaic/*_i2d.fits"))


# ----------------------------------------------------------------------------- accuracy against truth
def test_every_band_of_both_targets_has_a_mosaic(clean_run):
    names = {p.name for p in mosaics(clean_run)}
    expected = {
        f"NGC0628_{b}_i2d.fits" for b in ("F200W", "F300M", "F335M", "F360M", "F770W", "F1000W", "F1130W", "F2100W")
    }
    expected |= {f"DEEPFIELD1_{b}_i2d.fits" for b in ("F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W")}
    assert names == expected


def test_mosaic_flux_matches_truth_within_one_percent(clean_run):
    from astropy.io import fits

    ratios = {}
    for path in mosaics(clean_run):
        target = path.parent.parent.name
        band = path.name.split("_")[1]
        truth = fits.getdata(
            clean_run / "results" / target / "truth" / "mosaics" / f"{target}_{band}_truth.fits", "SCI"
        )
        with fits.open(path) as hdul:
            sci, wht = hdul["SCI"].data, hdul["WHT"].data
        good = np.isfinite(sci) & (wht > 0) & np.isfinite(truth)
        assert good.mean() > 0.05, f"{path.name}: almost no valid pixels"
        ratios[path.name] = float(sci[good].sum() / truth[good].sum())
    print(json.dumps(ratios, indent=1))
    bad = {k: v for k, v in ratios.items() if abs(v - 1) > 0.01}
    assert not bad, f"mosaic/truth flux ratio off by more than 1%: {bad}"


def test_bands_share_one_grid(clean_run):
    """Same tangent point and orientation, integer pixel-scale ratios, aligned outer edges."""
    from astropy.io import fits
    from astropy.wcs import WCS

    for target in ("NGC0628", "DEEPFIELD1"):
        grid = json.loads((clean_run / "results" / target / "mosaic" / "grid.json").read_text())
        finest = min(spec["pixel_scale"] for spec in grid["filters"].values())
        corners = []
        for path in sorted((clean_run / "results" / target / "mosaic").glob("*_i2d.fits")):
            wcs = WCS(fits.getheader(path, "SCI"))
            ratio = abs(wcs.wcs.cd[1, 1] if wcs.wcs.has_cd() else wcs.wcs.cdelt[1]) * 3600 / finest
            assert ratio == pytest.approx(round(ratio), abs=1e-6)
            corners.append(wcs.pixel_to_world_values(-0.5, -0.5))
            assert np.allclose(wcs.wcs.crval, grid["crval"], atol=1e-9)
        assert np.allclose(corners, corners[0], atol=1e-4 / 3600)  # edges agree to 0.1 mas


def test_mosaics_are_image_models_with_provenance(clean_run):
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    path = mosaics(clean_run)[0]
    with datamodels.open(path) as model:
        assert model.meta.bunit_data == "MJy/sr"
        for ext in ("data", "err", "con", "wht", "var_poisson", "var_rnoise", "var_flat"):
            assert getattr(model, ext) is not None
    header = fits.getheader(path, 0)
    assert header["WFVERS"] and header["WFSTEP"] == "correlated_noise"
    assert header["WFCFGHSH"] != "standalone"
    assert "NCPIXRAT" in header and "NCORRFAC" in header
    # provenance chain: correlated_noise <- gather_tiles <- drizzle_tile <- crf exposures
    gathered = path.parent.parent / "drizzled" / header["WFIN0001"]
    gathered_header = fits.getheader(gathered, 0)
    assert gathered_header["WFSTEP"] == "gather_tiles" and gathered_header["WFIN0001"].startswith("tile_")
    band = path.name.split("_")[1]
    tile_header = fits.getheader(gathered.parent / band / gathered_header["WFIN0001"], 0)
    assert tile_header["WFSTEP"] == "drizzle_tile"
    assert tile_header["WFNINPUT"] > 1 and tile_header["WFIN0001"].endswith("_crf.fits")


# ----------------------------------------------------------------------------- reruns and inputs
def test_two_runs_give_identical_mosaics(galaxy_runs):
    from astropy.io import fits

    (first, _), (second, _) = galaxy_runs
    paths = mosaics(first)
    assert len(paths) == 8
    for path in paths:
        other = second / path.relative_to(first)
        for ext in ("SCI", "ERR", "WHT", "CON"):
            a, b = fits.getdata(path, ext), fits.getdata(other, ext)
            assert np.array_equal(a, b, equal_nan=True), f"{path.name}[{ext}] differs between runs"


def test_inputs_are_never_modified(galaxy_runs):
    workdir, before = galaxy_runs[0]
    after = tree_checksums(workdir / "results" / "NGC0628" / "simulated")
    assert before and after == before


def test_a_second_run_has_nothing_to_do(galaxy_runs):
    workdir, _ = galaxy_runs[0]
    override = workdir / "override.yaml"
    result = run_snakemake(workdir, "-n", configfiles=[override])
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
