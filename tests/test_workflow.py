"""End-to-end runs of the workflow on the simulated survey (small scale), judged against truth."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
from conftest import BIN, REPO, layouts_with_bands, run_snakemake

pytestmark = pytest.mark.workflow
SCALE = 0.0625  # 1/16 of the real detectors: 128 x 128 SW pixels
# Bands of these runs: a short and a long NIRCam channel and the shortest and longest MIRI band of the
# galaxy, the bluest and reddest band of the deep field. The demo run (tests/bench/demo_truth.py) judges
# every band; here each band costs ~1 min of CI per run.
BANDS = {
    "phangs_galaxy": {"nircam": ["F200W", "F335M"], "miri": ["F770W", "F2100W"]},
    "ceers_deep": {"nircam": ["F115W", "F444W"]},
}
GALAXY_BANDS = [b for bands in BANDS["phangs_galaxy"].values() for b in bands]
ONE_CORE_BANDS = ("F200W", "F770W")  # the mosaics of the serial run (galaxy_runs)


def write_override(path, extra: dict) -> str:
    data = yaml.safe_load((REPO / "tests" / "configs" / "clean_sky.yaml").read_text()) if extra.pop("clean") else {}
    data.setdefault("simulation", {})["scale"] = SCALE
    data["simulation"]["layouts"] = layouts_with_bands(BANDS)
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
    # ... and so do the report (tests/test_report.py) and the deep-field finishing (test_release.py,
    # test_mosaic_background.py, test_depth.py): these runs judge the mosaics
    data["report"] = {"enabled": False}
    data["finishing"] = {part: {"enabled": False} for part in ("background", "depth", "release")}
    for key, value in extra.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data))
    return str(path)


def checked_run(workdir, *args, configfiles=(), cores=2):
    result = run_snakemake(workdir, "--cores", str(cores), *args, configfiles=configfiles)
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
    """The galaxy with all effects on, run twice in separate directories: with 2 cores, then with 1
    (same products whatever runs concurrently: no shared temporary names).

    Between the simulation and the rest of the first run every input of the science path
    (exposures, references, truth) is checksummed, to prove the downstream steps never modify them.
    The second run starts from a copy of those inputs (with their file times) and makes the mosaics
    of ONE_CORE_BANDS, serially.
    """
    first = tmp_path_factory.mktemp("galaxy0")
    override = write_override(first / "override.yaml", {"clean": False, "targets": ["NGC0628"]})
    checked_run(first, *SIMULATION_PRODUCTS, configfiles=[override])
    checksums = input_checksums(first)
    checked_run(first, configfiles=[override])

    second = tmp_path_factory.mktemp("galaxy1")
    override = write_override(second / "override.yaml", {"clean": False, "targets": ["NGC0628"]})
    for folder in INPUT_FOLDERS:
        shutil.copytree(first / "results" / "NGC0628" / folder, second / "results" / "NGC0628" / folder, symlinks=True)
    wanted = [f"results/NGC0628/mosaic/NGC0628_{band}_i2d.fits" for band in ONE_CORE_BANDS]
    checked_run(second, *wanted, configfiles=[override], cores=1)
    return [(first, checksums), (second, None)]


# the survey, its truth and the previous program's exposures (persistence history): a real survey's inputs
SIMULATION_PRODUCTS = (
    "results/NGC0628/truth/NGC0628_exposures_truth.ecsv",
    "results/NGC0628/truth/sky_truth.json",
    "simulate_history_NGC0628",
)
INPUT_FOLDERS = ("simulated", "references", "truth")  # what the simulation writes: a real survey's inputs


def input_checksums(workdir):
    """SHA-256 of every file the simulation wrote (exposures, references, truth), by relative path."""
    root = workdir / "results" / "NGC0628"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in INPUT_FOLDERS
        for p in sorted((root / folder).rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.relative_to(root).parts[1:2] == ("mosaics",)
    }


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, galaxy_runs):
    """The galaxy run killed (SIGKILL to Snakemake and all its jobs) while a mosaic is being
    written, then resumed as a user would: `snakemake --unlock`, then the same command (the
    default profile has rerun-incomplete). Everything before the mosaic stage is copied (with
    its file times) from the first galaxy run, so only Stage 3 runs here: grid, tiles, outlier
    detection, drizzle, gather, correlated noise of every band.

    Returns (workdir, the temporary file the kill interrupted).
    """
    first, _ = galaxy_runs[0]
    workdir = tmp_path_factory.mktemp("galaxy_killed")
    override = write_override(workdir / "override.yaml", {"clean": False, "targets": ["NGC0628"]})
    stage3 = shutil.ignore_patterns("mosaic", "mosaics", "outliers", "drizzled")
    shutil.copytree(first / "results", workdir / "results", symlinks=True, ignore=stage3)
    for _attempt in range(3):
        caught = run_until_a_mosaic_is_being_written(workdir, override)
        result = run_snakemake(workdir, "--unlock", configfiles=[override])
        assert result.returncode == 0, result.stderr[-3000:]
        if caught.exists():  # else the rename beat the kill by a few ms: kill the resumed run instead
            break
    assert caught.exists(), "the interrupted temporary mosaic should be left behind by SIGKILL"
    assert not caught.with_name(final_name(caught)).exists(), "a half-written mosaic took its final name"
    checked_run(workdir, configfiles=[override])
    return workdir, caught


TMP_MOSAIC = re.compile(r"^\.(?P<stem>.+_i2d)\.tmp\d+\.fits$")  # wfutils.atomic_output's temporary name


def final_name(tmp):
    return TMP_MOSAIC.match(tmp.name)["stem"] + ".fits"


def run_until_a_mosaic_is_being_written(workdir, override, target="NGC0628", timeout=3600):
    """Start the workflow and SIGKILL its process group as soon as a temporary mosaic appears
    (gather_tiles streaming the tiles, or correlated_noise saving the final mosaic)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
    }
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
           "--configfile", str(REPO / "config" / "config.yaml"), str(override)]  # fmt: skip
    folders = [workdir / "results" / target / sub for sub in ("drizzled", "mosaic")]
    with open(workdir / "killed_run.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        caught = None
        try:
            while caught is None and proc.poll() is None and time.monotonic() < deadline:
                for folder in folders:
                    names = os.listdir(folder) if folder.is_dir() else []
                    hits = [n for n in names if TMP_MOSAIC.match(n)]
                    if hits:
                        os.killpg(proc.pid, signal.SIGKILL)
                        caught = folder / hits[0]
                        break
                time.sleep(0.002)
        finally:
            if proc.poll() is None and caught is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert caught is not None, (
        f"no mosaic was seen being written (exit {proc.returncode}); see {workdir}/killed_run.log"
    )
    return caught


def mosaics(workdir):
    return sorted((workdir / "results").glob("*/mosaic/*_i2d.fits"))


# ----------------------------------------------------------------------------- accuracy against truth
def test_every_band_of_both_targets_has_a_mosaic(clean_run):
    names = {p.name for p in mosaics(clean_run)}
    expected = {f"NGC0628_{b}_i2d.fits" for b in GALAXY_BANDS}
    expected |= {f"DEEPFIELD1_{b}_i2d.fits" for b in BANDS["ceers_deep"]["nircam"]}
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
def assert_same_mosaics(first, second, bands, what):
    """The mosaics of ``bands`` in ``second`` equal ``first``'s bit for bit, every array (headers carry
    dates and are not compared); ``second`` has no other mosaic."""
    from astropy.io import fits

    names = [f"NGC0628_{band}_i2d.fits" for band in bands]
    assert [p.name for p in mosaics(second)] == sorted(names)
    for name in names:
        path, other = (run / "results" / "NGC0628" / "mosaic" / name for run in (first, second))
        for ext in ("SCI", "ERR", "WHT", "CON", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"):
            a, b = fits.getdata(path, ext), fits.getdata(other, ext)
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), f"{name}[{ext}] differs {what}"


def test_two_runs_with_1_and_2_cores_give_identical_mosaics(galaxy_runs):
    (first, _), (second, _) = galaxy_runs
    assert_same_mosaics(first, second, ONE_CORE_BANDS, "between a --cores 2 and a --cores 1 run")


def test_inputs_are_never_modified(galaxy_runs):
    workdir, before = galaxy_runs[0]
    after = input_checksums(workdir)
    assert len(before) > 300 and any(k.startswith("references/") for k in before)
    assert after == before


def test_corrections_read_the_validated_exposures(galaxy_runs):
    """Every exposure enters the corrections through results/<t>/validated/, a link to the unmodified input."""
    workdir, _ = galaxy_runs[0]
    root = workdir / "results" / "NGC0628"
    links = sorted((root / "validated").glob("*_cal.fits"))
    assert len(links) == len(list((root / "simulated" / "cal").glob("*_cal.fits")))
    assert all(p.is_symlink() and p.resolve() == (root / "simulated" / "cal" / p.name).resolve() for p in links)
    report = (root / "validation" / "NGC0628_validation.tsv").read_text().splitlines()
    assert len(report) == len(links) + 1 and all(row.split("\t")[4] == "ok" for row in report[1:])


def test_a_run_killed_while_writing_a_mosaic_resumes_to_identical_products(galaxy_runs, interrupted_run):
    (first, _), _ = galaxy_runs
    workdir, caught = interrupted_run
    assert_same_mosaics(first, workdir, GALAXY_BANDS, "after a SIGKILL and a rerun")
    assert not caught.exists(), f"{caught.name}, left by the killed job, was not cleaned up by its rerun"
    leftovers = [p.name for p in (workdir / "results").rglob(".*.tmp*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    log = (workdir / "killed_run.log").read_text()
    assert "Finished job" in log, "the kill came before any job had finished"


def test_a_second_run_has_nothing_to_do(galaxy_runs):
    workdir, _ = galaxy_runs[0]
    override = workdir / "override.yaml"
    result = run_snakemake(workdir, "-n", configfiles=[override])
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
