"""The output-tiled Stage 3 of a 128-exposure band, planned by a dry run (issue 6).

A real-data target at cal level whose 128 NIRCam F200W exposures (2 x 2 pointings x 4 dithers
x 8 detectors, full-size footprints) are FITS files with headers only: the grid job reads
their S_REGION, then a dry run lists one median and one drizzle job per output tile and, with
the Slurm profile, sends the short-wavelength tile jobs and the gather job to the big-memory
partition. Nothing but grid.json is computed.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import REPO, run_snakemake

RA0, DEC0 = 150.1, 2.2
DETECTOR_ARCSEC = 63.4  # 2040 pixels of 0.031"
DETECTORS = ["nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4"]
TILE_SIZE = 2048
SHEET = "target\tra\tdec\tdistance_mpc\tinput\tlayout\tprogram\tinput_level\tofffield_obs\tnotes\n"


def s_region(xi_arcsec, eta_arcsec):
    """Square footprint centred at the tangent-plane offset (small-field approximation)."""
    half = DETECTOR_ARCSEC / 2
    corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    ra = [RA0 + (xi_arcsec + dx) / 3600 / math.cos(math.radians(DEC0)) for dx, _ in corners]
    dec = [DEC0 + (eta_arcsec + dy) / 3600 for _, dy in corners]
    return "POLYGON ICRS " + " ".join(f"{r:.9f} {d:.9f}" for r, d in zip(ra, dec, strict=True))


def write_exposure(path, visit, dither, k, xi, eta):
    primary = fits.PrimaryHDU()
    h = primary.header
    h["INSTRUME"], h["DETECTOR"], h["FILTER"] = "NIRCAM", DETECTORS[k].upper(), "F200W"
    h["EXPSTART"] = 60000.0 + visit * 0.1 + dither * 0.01
    h["PROGRAM"], h["OBSERVTN"], h["VISIT"] = "01234", "001", f"{visit:03d}"
    h["EFFEXPTM"], h["PATT_NUM"] = 400.0, dither
    sci = fits.ImageHDU(np.zeros((2, 2), np.float32), name="SCI")
    sci.header["BUNIT"] = "MJy/sr"
    sci.header["S_REGION"] = s_region(xi, eta)
    fits.HDUList([primary, sci]).writeto(path)


@pytest.fixture(scope="module")
def big_target(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled")
    data = root / "data"
    data.mkdir()
    for visit in range(1, 5):
        tx, ty = (visit - 1) % 2, (visit - 1) // 2
        for dither in range(1, 5):
            for k in range(8):
                xi = tx * 140.0 + (k % 4) * 64.5 + dither * 1.5
                eta = ty * 70.0 + (k // 4) * 64.5 + dither * 1.0
                name = f"jw01234001{visit:03d}_02101_{dither:05d}_{DETECTORS[k]}_cal.fits"
                write_exposure(data / name, visit, dither, k, xi, eta)
    sheet = root / "targets.tsv"
    sheet.write_text(SHEET + f"BIG\t{RA0}\t{DEC0}\t\t{data}\t\t1234\tcal\t\t128 exposures\n")
    corrections = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["corrections"]
    override = root / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "targets_sheet": str(sheet),
                "targets": ["BIG"],
                "corrections": {step: {**cfg, "enabled": False} for step, cfg in corrections.items()},
                "anchoring": {"enabled": False},
                # header-only stand-ins (no arrays, no gwcs): input validation would reject them
                "validation": {"enabled": False},
                "mosaic": {"tile_size_px": TILE_SIZE},
            }
        )
    )
    workdir = root / "run"
    workdir.mkdir()
    result = run_snakemake(workdir, "-j1", "results/BIG/mosaic/grid.json", configfiles=[override], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"workdir": workdir, "override": override}


def test_dry_run_lists_one_job_per_output_tile(big_target):
    grid = json.loads((big_target["workdir"] / "results/BIG/mosaic/grid.json").read_text())
    ny, nx = grid["filters"]["F200W"]["shape"]
    ntiles = math.ceil(ny / TILE_SIZE) * math.ceil(nx / TILE_SIZE)
    assert ntiles >= 20, f"grid {ny} x {nx} should need many {TILE_SIZE}-px tiles"
    result = run_snakemake(big_target["workdir"], "-n", "--quiet", "rules", configfiles=[big_target["override"]])
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert int(counts["median_tile"]) == ntiles
    assert int(counts["drizzle_tile"]) == ntiles
    assert int(counts["gather_tiles"]) == 1
    assert int(counts["flag_outliers_BIG_F200W"]) == 1


def test_slurm_profile_sends_big_jobs_to_their_partition(big_target, monkeypatch):
    monkeypatch.setenv("JWST_SLURM_ACCOUNT", "")
    monkeypatch.setenv("JWST_SLURM_PARTITION", "normal")
    monkeypatch.setenv("JWST_SLURM_BIGMEM_PARTITION", "bigmem")
    result = run_snakemake(
        big_target["workdir"],
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        configfiles=[big_target["override"]],
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # jobs of a group (the profile packs tile jobs) are printed indented under "Group job ..."
    jobs = re.split(r"\n(?=\s*\[.*\]\n)|\n(?=\s*(?:local)?rule \w+:)", result.stdout)
    partitions = {}
    for block in jobs:
        rule = re.search(r"rule (\w+):", block)
        part = re.search(r"slurm_partition=(\w+)", block)
        if rule and part:
            partitions.setdefault(rule.group(1), set()).add(part.group(1))
    assert partitions.get("gather_tiles") == {"bigmem"}, partitions
    assert partitions.get("drizzle_tile") == {"bigmem"}, partitions
    assert partitions.get("median_tile") == {"bigmem"}, partitions
    assert os.environ["JWST_SLURM_BIGMEM_PARTITION"] == "bigmem"
