"""Benchmark of the output-tiled mosaic (issue 6): memory, time and exactness against jwst; one JSON line.

Full-size (2048 x 2048) NIRCam F200W exposures of the PHANGS-like galaxy layout (2 x 2
pointings x 4 dithers x 8 SW detectors = 128 exposures) are made cheaply: a blank sky of
0.1 MJy/sr plus a per-exposure offset (rms 0.01 MJy/sr), Gaussian noise with exactly the
variance of VAR_RNOISE + VAR_POISSON, reference-pixel borders, 0.05% dead pixels and 0.05%
pixels whose VAR_POISSON is exactly 0 (the CEERS "holes"), with the simulator's WCS
(``simulate_survey.detector_model``, scale 1, no pointing errors) and metadata. The 16-input
case is the first 16 exposures (one pointing, two dithers). Sections (``--only`` runs some,
the others are taken from ``bench_<section>.json`` of an earlier run in ``--workdir``):

``small``
    the 16 exposures go through ``noise_model.py`` (pedestal, VAR_RNOISE rescale, zero
    variances -> inf); their mosaic is made by the tiled scripts -- ``mosaic_tiles.py``, one
    ``drizzle_tile.py`` per tile, ``gather_tiles.py``, each a separate process run one after
    the other -- and by jwst's ResampleStep in memory (``resample_mosaic.py``), back to back;
    wall time, CPU time and peak RSS (VmHWM) per process; the two mosaics compared pixel by
    pixel; then ``correlated_noise.py --apply`` on the tiled mosaic: the sky is blank, so the
    truth residual is the mosaic itself -- pixel and 0.2" aperture scatter against ERR with
    and without the correlation correction.
``outliers``
    the 16 noise-corrected exposures with cosmic rays added (3e-4 of the pixels, 5-300 x ERR)
    go through ``median_tile.py`` per tile and ``flag_outliers.py`` (through
    ``each_exposure.py``, one process for the band, as the workflow runs it), and through
    jwst's OutlierDetectionStep in memory twice: on its own median frame
    (``outlier_detection.py``) and on the band's grid (the same step, its ResampleImage given
    the grid's WCS parameters); flags compared with each other and with the injected hits.
``scaling``
    peak RSS of single drizzle_tile / median_tile / flag_outliers jobs (the most-covered tile)
    at ``--scaling-sizes`` tile sizes: the memory model behind the workflow's ``mem_mb``.
``large``
    the 128-input mosaic by the tiled scripts (the jwst single pass would hold ~13 GB of
    inputs; it runs only with ``--jwst-128``). When the disk cannot hold the tiles and the
    mosaic together, each tile file is deleted as soon as its job is measured and the gather
    is not run (the result says so).

    python tests/bench/mosaic.py                      # temporary directory, tile 4096 (~45 min, 13 GB disk)
    python tests/bench/mosaic.py --workdir /tmp/mosaic_bench --keep
    python tests/bench/mosaic.py --workdir /tmp/mosaic_bench --only small outliers   # reuse the other sections

Output: ``{"bench": "mosaic", ...}`` with peak RSS in MB, times in s.

Measured (tile 4096, 2 cores shared with other jobs): largest tile job 1888 MB (16 inputs)
vs 1884 MB (128; ratio 0.998); 16 inputs: ours 1888 MB / 103-140 s vs ResampleStep 6966 MB /
88-137 s (0.27x memory, 1.02-1.17x wall time in two runs); SCI bit-identical except 484 of
37.6 M pixels (none in the tile at the grid origin: drizzle's float64 corner and overlap
arithmetic rounds differently at a tile's smaller output coordinates), max relative difference
7.0e-6 (2.6e-7 of max(|SCI|, ERR)); 527 pixels and 1.4e-5, at one pixel where |SCI| = 0.003 ERR,
before the tile pixel maps became the single pass's minus the tile origin; WHT/ERR/VAR <= 5e-7
(152 WHT pixels not bit-identical), CON identical; pixel scatter / ERR 0.668 -> 1.002 with
the correlation correction, 0.2" apertures 0.968 (raw ERR) and 1.022 (ERR x NCORRFAC);
outlier flags identical to OutlierDetectionStep on the same grid (Jaccard 0.9999, 0.37x memory,
0.97x time). The 128-input gather did not fit on the disk (12 GB free).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
PYTHON = sys.executable
TARGET = {"target": "BENCH", "ra": 24.173946, "dec": 15.783662, "layout": "phangs_galaxy", "program": 9001}
FILTER = "F200W"
BACKGROUND = 0.1  # MJy/sr


# --------------------------------------------------------------------------- inputs
def simulation_config() -> dict:
    import yaml

    cfg = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulation"])
    cfg["scale"] = 1.0
    layout = cfg["layouts"]["phangs_galaxy"]
    layout["nircam"]["filters"] = [FILTER]
    layout["miri"]["filters"] = []
    layout["miri_offfield"]["filters"] = []
    return cfg


def make_exposures(folder: Path, count: int) -> list[Path]:
    """The first ``count`` F200W exposures of the layout at full size (blank sky, exact noise)."""
    from stdatamodels.jwst.datamodels import dqflags

    import simulate_survey as sim
    from wflib import survey_plan, wfutils

    cfg = simulation_config()
    plan = [e for e in sim.target_plan(TARGET, cfg) if e.filter == FILTER and e.role == "science"][:count]
    renderer = sim.ExposureRenderer(TARGET["target"], {"ra": TARGET["ra"], "dec": TARGET["dec"]}, {}, plan, {}, cfg, {})
    det = cfg["detectors"]["NRC_SW"]
    paths = []
    for exp in plan:
        path = folder / f"{exp.name}_cal.fits"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(zlib.crc32(exp.name.encode()))
        model = sim.detector_model(exp, sim.true_attitude(exp), 1.0)
        shape = model.data.shape
        level = BACKGROUND + rng.normal(0.0, 0.01)
        var_rn = (det["photmjsr"] * det["read_noise_e"] / (det["gain"] * exp.exptime)) ** 2
        var_p = level * det["photmjsr"] / (det["gain"] * exp.exptime)
        model.var_rnoise = np.full(shape, var_rn, np.float32)
        model.var_poisson = np.full(shape, var_p, np.float32)
        model.var_flat = np.full(shape, (det["flat_error"] * level) ** 2, np.float32)
        model.data = (level + rng.standard_normal(shape, dtype=np.float32) * math.sqrt(var_rn + var_p)).astype(
            np.float32
        )
        dq = np.zeros(shape, np.uint32)
        b = survey_plan.REFERENCE_BORDER
        border = np.ones(shape, bool)
        border[b:-b, b:-b] = False
        dq[border] |= dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["REFERENCE_PIXEL"]
        dead = rng.uniform(size=shape) < 5e-4
        dq[dead] |= dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["DEAD"]
        model.data[dead] = np.nan
        holes = rng.uniform(size=shape) < 5e-4
        model.var_poisson[holes] = 0.0
        model.dq = dq
        model.err = np.sqrt(model.var_rnoise + model.var_poisson + model.var_flat).astype(np.float32)
        renderer.fill_metadata(model, exp)
        wfutils.save_model(model, path, [], "bench", "bench_mosaic")
    return paths


# --------------------------------------------------------------------------- processes
def vm_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a running process, MB; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run(cmd, log: Path, poll_s: float = 0.05) -> dict:
    """Run one job in its own process: wall time, CPU time and peak RSS (MB).

    The peak is the process's own VmHWM, sampled every ``poll_s`` until it exits (getrusage's
    ru_maxrss would include the pages the child inherited from this process when forked).
    """
    env = {**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "true"}
    start = time.perf_counter()
    peak = 0.0
    with open(log, "ab") as fh:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=fh, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, vm_hwm_mb(proc.pid))
            time.sleep(poll_s)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed ({proc.returncode}); see {log}")
    return {"wall_s": wall, "max_rss_mb": peak, "cpu_s": usage.ru_utime + usage.ru_stime}


def summarise(jobs: list[dict]) -> dict:
    largest = max(jobs, key=lambda j: j["max_rss_mb"])
    tiles = [j for j in jobs if j["kind"] == "drizzle_tile"]
    return {
        "jobs": len(jobs),
        "tile_jobs": len(tiles),
        "wall_s": round(sum(j["wall_s"] for j in jobs), 1),
        "cpu_s": round(sum(j["cpu_s"] for j in jobs), 1),
        "peak_rss_mb": round(largest["max_rss_mb"], 1),
        "largest_job": largest["kind"],
        "peak_rss_tile_mb": round(max(j["max_rss_mb"] for j in tiles), 1),
        "max_inputs_per_tile": max(j.get("inputs", 0) for j in tiles),
        "gather_rss_mb": next((round(j["max_rss_mb"], 1) for j in jobs if j["kind"] == "gather_tiles"), None),
        "gather_wall_s": next((round(j["wall_s"], 1) for j in jobs if j["kind"] == "gather_tiles"), None),
        "per_tile_inputs_rss_mb_wall_s": [[j["inputs"], round(j["max_rss_mb"]), round(j["wall_s"], 1)] for j in tiles],
    }


def make_grid(inputs, out: Path) -> dict:
    import mosaic_grid

    mosaic_grid.main([*map(str, inputs), "--out", str(out), "--ra", str(TARGET["ra"]), "--dec", str(TARGET["dec"])])
    return json.loads(out.read_text())


def tiled_mosaic(inputs, grid_path: Path, work: Path, tile_size: int, out: Path, params: dict, gather=True):
    """mosaic_tiles -> drizzle_tile per tile -> gather_tiles, each in its own process.

    ``gather=False`` (short of disk): each tile file is deleted as soon as its job is measured.
    """
    work.mkdir(parents=True, exist_ok=True)
    log = work / "jobs.log"
    tiles_json = work / "tiles.json"
    common = ["--grid", grid_path, "--filter", FILTER]
    listing = [PYTHON, SCRIPTS / "mosaic_tiles.py", *common, "--tile-size", tile_size, "--out", tiles_json, *inputs]
    jobs = [{"kind": "mosaic_tiles", **run(listing, log)}]
    table = json.loads(tiles_json.read_text())
    tile_files = []
    for row in table["tiles"]:
        names = list(dict.fromkeys([table["inputs"][0], *row["inputs"]]))
        path = work / f"tile_{row['index']:03d}.fits"
        cmd = [PYTHON, SCRIPTS / "drizzle_tile.py", *common, "--tile", row["index"], "--tile-size", tile_size]
        cmd += ["--tiles", tiles_json, "--out", path, "--params", json.dumps(params), *names]
        jobs.append({"kind": "drizzle_tile", "tile": row["index"], "inputs": len(row["inputs"]), **run(cmd, log)})
        tile_files.append(path)
        if not gather:
            path.unlink()
    if gather:
        cmd = [PYTHON, SCRIPTS / "gather_tiles.py", *common, "--out", out, *tile_files]
        jobs.append({"kind": "gather_tiles", **run(cmd, log)})
    for path in tile_files:  # intermediate products: ~0.5 GB per 4096^2 tile
        path.unlink(missing_ok=True)
    return jobs


def jwst_mosaic(inputs, grid_path: Path, out: Path, params: dict, log: Path) -> dict:
    cmd = [PYTHON, SCRIPTS / "resample_mosaic.py", "--grid", grid_path, "--filter", FILTER, "--out", out]
    return run([*cmd, "--params", json.dumps(params), *inputs], log)


# --------------------------------------------------------------------------- comparisons
def max_relative_difference(ours: Path, theirs: Path) -> dict:
    from astropy.io import fits

    out = {}
    with fits.open(ours) as a, fits.open(theirs) as b:
        good = b["WHT"].data > 0
        for ext in ("SCI", "ERR", "WHT", "VAR_RNOISE"):
            x, y = a[ext].data[good].astype(np.float64), b[ext].data[good].astype(np.float64)
            both = np.isfinite(x) & np.isfinite(y)
            rel = np.abs(x[both] - y[both]) / np.maximum(np.abs(y[both]), 1e-30)
            out[ext] = float(rel.max()) if rel.size else math.nan
        # the pedestal-subtracted sky crosses zero, where any rounding is a large fraction of the value:
        # also relative to max(|SCI|, ERR), i.e. to the noise where the signal is below it
        x, y = a["SCI"].data[good].astype(np.float64), b["SCI"].data[good].astype(np.float64)
        scale = np.maximum(np.abs(y), b["ERR"].data[good])
        both = np.isfinite(x) & np.isfinite(y) & (scale > 0)
        out["SCI_rel_to_max_abs_sci_err"] = float((np.abs(x - y)[both] / scale[both]).max())
        out["SCI_max_abs_diff_mjysr"] = float(np.abs(x - y)[both].max())
        # where the relative difference exceeds 1e-5: how many pixels, how close to zero they are
        rel = np.abs(x - y)[both] / np.maximum(np.abs(y[both]), 1e-30)
        out["SCI_pixels_compared"] = int(both.sum())
        out["SCI_pixels_not_bit_identical"] = int(np.count_nonzero(x[both] != y[both]))
        out["SCI_pixels_rel_gt_1e-5"] = int(np.count_nonzero(rel > 1e-5))
        out["SCI_rel_gt_1e-5_max_abs_sci_over_err"] = (
            float((np.abs(y[both]) / b["ERR"].data[good][both])[rel > 1e-5].max()) if (rel > 1e-5).any() else None
        )
        ulp = np.spacing(scale[both].astype(np.float32)).astype(np.float64)
        out["SCI_max_diff_float32_ulps_of_max_abs_sci_err"] = float((np.abs(x - y)[both] / ulp).max())
        out["CON_equal"] = bool(np.array_equal(a["CON"].data, b["CON"].data))
        out["NaN_pattern_equal"] = bool(np.array_equal(np.isnan(a["SCI"].data), np.isnan(b["SCI"].data)))
    return out


def noise_ratios(mosaic: Path, corrected: Path) -> dict:
    """Scatter of pixels and 0.2" apertures against ERR, before and after the correlation correction.

    The sky is blank and pedestal-subtracted, so SCI is pure noise (simulator truth).
    """
    from astropy.io import fits

    import correlated_noise as cn

    with fits.open(mosaic) as raw, fits.open(corrected) as fixed:
        sci = raw["SCI"].data.astype(np.float64)
        valid = np.isfinite(sci) & (raw["WHT"].data > 0) & np.isfinite(raw["ERR"].data)
        err_raw = raw["ERR"].data.astype(np.float64)
        err_fixed = fixed["ERR"].data.astype(np.float64)
        head = fixed[0].header
        corr = head["NCORRFAC"]
    inner = valid.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    sci = sci - np.median(sci[inner])
    radius = 0.1 / 0.031
    out = {
        "pixel_raw": cn.robust_std(sci[inner] / err_raw[inner]),
        "pixel_corrected": cn.robust_std(sci[inner] / err_fixed[inner]),
        "aperture_0p2_raw": cn.aperture_ratio(sci, err_raw, inner, radius)[0],
        "aperture_0p2_corrected": cn.aperture_ratio(sci, err_fixed, inner, radius)[0] / corr,
        "NCPIXRAT": head["NCPIXRAT"],
        "NCAPRAT": head["NCAPRAT"],
        "NCORRFAC": corr,
        "NCACFFAC": head["NCACFFAC"],
    }
    return {k: round(float(v), 4) for k, v in out.items()}


def noise_model_summary(paths) -> dict:
    """What noise_model.py measured and did on the exposures (their primary-header cards)."""
    from astropy.io import fits

    heads = [fits.getheader(p, 0) for p in paths]
    ratio = np.array([h["SKYRATIO"] for h in heads])
    scale = np.array([h["RNSCALE"] for h in heads])
    return {
        "sky_ratio_min_median_max": [round(float(f(ratio)), 4) for f in (np.min, np.median, np.max)],
        "rescaled_exposures": int(np.sum(scale != 1.0)),
        "zero_variances_to_inf_per_exposure": round(float(np.mean([h["NZEROVAR"] for h in heads])), 1),
    }


# --------------------------------------------------------------------------- main
def small_section(root: Path, args, params: dict) -> dict:
    """16 exposures: noise_model, the tiled mosaic and jwst's single pass back to back, exactness, noise."""
    import noise_model

    out = {}
    t0 = time.perf_counter()
    cal = make_exposures(root / "cal", args.n_small)
    out["simulate_small_s"] = round(time.perf_counter() - t0, 1)
    corrected = []
    t0 = time.perf_counter()
    for path in cal:
        target = root / "noise" / path.name
        if not target.exists():
            noise_model.main([str(path), str(target), "--log", str(root / "noise_model.log")])
        corrected.append(target)
    out["noise_model_s_per_exposure"] = round((time.perf_counter() - t0) / len(cal), 2)
    out["noise_model"] = noise_model_summary(corrected)
    small = root / f"n{args.n_small}"
    small.mkdir(exist_ok=True)
    grid = small / "grid.json"
    spec = make_grid(corrected, grid)["filters"][FILTER]
    ours_i2d = small / "ours_i2d.fits"
    ours = summarise(tiled_mosaic(corrected, grid, small / "tiled", args.tile_size, ours_i2d, params))
    theirs = jwst_mosaic(corrected, grid, small / "jwst_i2d.fits", params, small / "jwst.log")
    out[f"n{args.n_small}"] = {
        "grid_shape": spec["shape"],
        "ours": ours,
        "jwst": {k: round(theirs[k], 1) for k in ("wall_s", "cpu_s", "max_rss_mb")},
        "rss_ratio_ours_over_jwst": round(ours["peak_rss_mb"] / theirs["max_rss_mb"], 3),
        "wall_ratio_ours_over_jwst": round(ours["wall_s"] / theirs["wall_s"], 3),
        "cpu_ratio_ours_over_jwst": round(ours["cpu_s"] / theirs["cpu_s"], 3),
        "max_rel_diff_vs_single_pass": max_relative_difference(ours_i2d, small / "jwst_i2d.fits"),
    }
    fixed = small / "ours_corrnoise_i2d.fits"
    cn = run([PYTHON, SCRIPTS / "correlated_noise.py", "--apply", "--log", root / "cn.log", ours_i2d, fixed],
             root / "cn_job.log")  # fmt: skip
    out["noise"] = {**noise_ratios(ours_i2d, fixed), "job_rss_mb": round(cn["max_rss_mb"], 1)}
    if not args.keep:
        for path in (ours_i2d, fixed, small / "jwst_i2d.fits"):
            path.unlink()
    return out


def large_section(root: Path, args, params: dict) -> dict:
    """128 exposures: the tiled mosaic (and jwst's single pass with --jwst-128)."""
    out = {}
    t0 = time.perf_counter()
    cal = make_exposures(root / "cal", args.n_large)
    out["simulate_large_s"] = round(time.perf_counter() - t0, 1)
    large = root / f"n{args.n_large}"
    large.mkdir(exist_ok=True)
    grid = large / "grid.json"
    spec = make_grid(cal, grid)["filters"][FILTER]
    ours_i2d = large / "ours_i2d.fits"
    # tiles (~32 B per grid pixel) and then the mosaic (24 B + 4 B per context plane) are on disk together
    pixels = spec["shape"][0] * spec["shape"][1]
    needed_gb = pixels * (32 + 24 + 4 * math.ceil(args.n_large / 32)) / 1e9 + 3.0  # 3 GB left for others
    free_gb = shutil.disk_usage(large).free / 1e9
    gather = free_gb > needed_gb
    jobs = tiled_mosaic(cal, grid, large / "tiled", args.tile_size, ours_i2d, params, gather=gather)
    section = {"grid_shape": spec["shape"], "ours": summarise(jobs)}
    if not gather:
        section["gather"] = f"not run: {free_gb:.1f} GB free, tiles + mosaic need {needed_gb:.1f} GB"
    if args.jwst_128 and gather:
        theirs = jwst_mosaic(cal, grid, large / "jwst_i2d.fits", params, large / "jwst.log")
        section["jwst"] = {"wall_s": round(theirs["wall_s"], 1), "peak_rss_mb": round(theirs["max_rss_mb"], 1)}
        section["max_rel_diff_vs_single_pass"] = max_relative_difference(ours_i2d, large / "jwst_i2d.fits")
    else:
        section["jwst_inputs_in_memory_mb"] = round(sum(p.stat().st_size for p in cal) / 1e6, 0)
    if gather:
        section["mosaic_file_mb"] = round(ours_i2d.stat().st_size / 1e6, 0)
        if not args.keep:
            ours_i2d.unlink()
    out[f"n{args.n_large}"] = section
    return out


def outlier_parameters() -> dict:
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section in ("mosaic", "resample"):  # the workflow's thresholds, wherever the config keeps them
        if "outlier_detection" in cfg.get(section, {}):
            return dict(cfg[section]["outlier_detection"])
    return {"snr": "5.0 4.0", "scale": "2.0 1.5", "maskpt": 0.7}


def inject_cosmic_rays(src: Path, dst: Path, rate: float = 3e-4) -> np.ndarray:
    """Copy of an exposure with cosmic-ray hits added; returns the (y, x) of the hit pixels.

    ``rate`` of the usable pixels get 5-300 x ERR (log-uniform); half of the hits spill 30%
    of their charge into the pixel to their right.
    """
    from stdatamodels.jwst import datamodels

    from wflib import wfutils

    rng = np.random.default_rng(zlib.crc32(src.name.encode()) + 1)
    with datamodels.open(str(src)) as model:
        usable = np.isfinite(model.data) & ((model.dq & 1) == 0)
        usable[:, -1] = False
        hit = (rng.uniform(size=usable.shape) < rate) & usable
        y, x = np.nonzero(hit)
        amp = model.err[y, x] * 10 ** rng.uniform(math.log10(5.0), math.log10(300.0), y.size)
        data = np.array(model.data)
        data[y, x] += amp
        spill = rng.uniform(size=y.size) < 0.5
        data[y[spill], x[spill] + 1] += 0.3 * amp[spill]
        model.data = data
        wfutils.save_model(model, dst, [str(src)], "bench", "bench_cosmic_rays")
    return np.stack([y, x]), np.stack([y[spill], x[spill] + 1]), amp


def outliers_section(root: Path, args, params: dict) -> dict:
    """16 exposures with cosmic rays: tiled outlier detection (median_tile + flag_outliers) vs jwst's.

    jwst's OutlierDetectionStep runs in memory (``outlier_detection.py``: ModelLibrary, in_memory)
    on the same files with the same thresholds; flags are compared pixel by pixel.
    """
    from astropy.io import fits

    od = outlier_parameters()
    small = root / f"n{args.n_small}"
    small.mkdir(exist_ok=True)
    crdir = root / "cr"
    crdir.mkdir(exist_ok=True)
    import noise_model

    inputs, injected, spilled, total_hits = [], [], [], 0
    for path in make_exposures(root / "cal", args.n_small):
        clean = root / "noise" / path.name  # the small section's noise-corrected exposures
        if not clean.exists():
            clean.parent.mkdir(exist_ok=True)
            noise_model.main([str(path), str(clean), "--log", str(root / "noise_model.log")])
        dst = crdir / path.name
        hits, spills, _ = inject_cosmic_rays(clean, dst)
        total_hits += hits.shape[1]
        inputs.append(dst)
        injected.append(hits)
        spilled.append(spills)
    grid = small / "grid.json"
    if not grid.exists():
        make_grid(inputs, grid)
    log = root / "outliers_jobs.log"
    work = root / "outliers"
    work.mkdir(exist_ok=True)
    common = ["--grid", grid, "--filter", FILTER]
    tiles_json = work / "tiles.json"
    listing = [PYTHON, SCRIPTS / "mosaic_tiles.py", *common, "--tile-size", args.tile_size, "--out", tiles_json]
    jobs = [{"kind": "mosaic_tiles", **run([*listing, *inputs], log)}]
    table = json.loads(tiles_json.read_text())
    median_params = json.dumps({"maskpt": od["maskpt"], **params})
    medians = []
    for row in table["tiles"]:
        names = list(dict.fromkeys([table["inputs"][0], *row["inputs"]]))
        out = work / f"median_{row['index']:03d}.fits"
        cmd = [PYTHON, SCRIPTS / "median_tile.py", *common, "--tile", row["index"], "--tile-size", args.tile_size,
               "--tiles", tiles_json, "--out", out, "--params", median_params, *names]  # fmt: skip
        jobs.append({"kind": "median_tile", "inputs": len(row["inputs"]), **run(cmd, log)})
        medians.append(out)
    # flagging as the workflow runs it: one process per band (each_exposure.py), one exposure at a time
    flag_args = [*common, "--params", json.dumps({"snr": od["snr"], "scale": od["scale"]}), *medians]
    cmd = [PYTHON, SCRIPTS / "each_exposure.py", "flag_outliers", "--out-dir", work, "--input-option", "exposure",
           "--per-file", "out={name}_crf.fits", "--args", " ".join(shlex.quote(str(a)) for a in flag_args)]  # fmt: skip
    jobs.append({"kind": "flag_outliers", "exposures": len(inputs), **run([*cmd, *inputs], log)})
    outlier = 16  # DQ OUTLIER
    ours_crf = [work / path.name.replace("_cal", "_crf") for path in inputs]
    flags = {"ours": [(fits.getdata(path, "DQ") & outlier) > 0 for path in ours_crf]}
    for path in ours_crf:  # 100 MB each; the flags are kept
        path.unlink()
    # jwst's OutlierDetectionStep in memory: its own median frame (default), and the band's grid
    jwst = {}
    for variant, script in (("jwst", [SCRIPTS / "outlier_detection.py"]), ("jwst_on_grid", [__file__, JWST_ON_GRID])):
        jwst_dir = root / f"outliers_{variant}"
        jwst_dir.mkdir(exist_ok=True)
        extra = ["--grid", grid] if variant == "jwst_on_grid" else []
        cmd = [PYTHON, *script, *extra, "--out-dir", jwst_dir, "--params", json.dumps({**od, **params}), *inputs]
        jwst[variant] = run(cmd, root / f"outliers_{variant}.log")
        crf = [jwst_dir / path.name.replace("_cal", "_crf") for path in inputs]
        flags[variant] = [(fits.getdata(path, "DQ") & outlier) > 0 for path in crf]
        shutil.rmtree(jwst_dir)
    truths = []
    for shape_of, hits, spills in zip(flags["ours"], injected, spilled, strict=True):
        truth = np.zeros(shape_of.shape, bool)
        truth[hits[0], hits[1]] = True
        truth[spills[0], spills[1]] = True
        truths.append(truth)

    def agreement(a_list, b_list) -> dict:
        both = sum(int((a & b).sum()) for a, b in zip(a_list, b_list, strict=True))
        either = sum(int((a | b).sum()) for a, b in zip(a_list, b_list, strict=True))
        return {"both": both, "jaccard": round(both / max(either, 1), 4)}

    largest = max(jobs, key=lambda j: j["max_rss_mb"])
    out = {
        "thresholds": od,
        "injected_hits": total_hits,
        "ours": {
            "jobs": len(jobs),
            "wall_s": round(sum(j["wall_s"] for j in jobs), 1),
            "cpu_s": round(sum(j["cpu_s"] for j in jobs), 1),
            "peak_rss_mb": round(largest["max_rss_mb"], 1),
            "largest_job": largest["kind"],
            "median_tile_rss_mb": round(max(j["max_rss_mb"] for j in jobs if j["kind"] == "median_tile"), 1),
            "median_tile_wall_s": round(sum(j["wall_s"] for j in jobs if j["kind"] == "median_tile"), 1),
            "flag_outliers_rss_mb": round(max(j["max_rss_mb"] for j in jobs if j["kind"] == "flag_outliers"), 1),
            "flag_outliers_wall_s": round(sum(j["wall_s"] for j in jobs if j["kind"] == "flag_outliers"), 1),
        },
        "flagged": {key: sum(int(f.sum()) for f in value) for key, value in flags.items()},
        "hit_recall": {
            key: round(sum(int(f[h[0], h[1]].sum()) for f, h in zip(value, injected, strict=True)) / total_hits, 4)
            for key, value in flags.items()
        },
        "flagged_not_injected": {
            key: sum(int((f & ~t).sum()) for f, t in zip(value, truths, strict=True)) for key, value in flags.items()
        },
    }
    for variant, theirs in jwst.items():
        out[variant] = {k: round(theirs[k], 1) for k in ("wall_s", "cpu_s", "max_rss_mb")}
        out[f"ours_vs_{variant}"] = {
            **agreement(flags["ours"], flags[variant]),
            "rss_ratio": round(out["ours"]["peak_rss_mb"] / theirs["max_rss_mb"], 3),
            "wall_ratio": round(out["ours"]["wall_s"] / theirs["wall_s"], 3),
        }
    out["jwst_vs_jwst_on_grid"] = agreement(flags["jwst"], flags["jwst_on_grid"])
    if not args.keep:
        shutil.rmtree(crdir)
        shutil.rmtree(work)
    return {"outliers": out}


JWST_ON_GRID = "jwst-outliers-on-grid"


def jwst_outliers_on_grid(argv) -> None:
    """Subprocess entry: ``outlier_detection.py`` with jwst's median frame set to the band's grid.

    jwst's OutlierDetectionStep drizzles onto a frame of its own (the first input's
    orientation); here its ``ResampleImage`` gets the grid's WCS parameters (what
    ResampleStep passes for crpix/crval/rotation/pixel_scale/output_shape), so the two
    methods differ only in how they are split into jobs.
    """
    import jwst.resample.resample as jwst_resample

    import outlier_detection

    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", required=True)
    args, rest = parser.parse_known_args(argv)
    grid = json.loads(Path(args.grid).read_text())
    spec = grid["filters"][FILTER]
    wcs_pars = {
        "crpix": list(spec["crpix"]),
        "crval": list(grid["crval"]),
        "rotation": float(grid.get("rotation", 0.0)),
        "pixel_scale": spec["pixel_scale"],
        "pixel_scale_ratio": 1.0,
        "output_shape": list(spec["shape"]),  # (ny, nx), as ResampleStep hands it over
    }

    class OnGrid(jwst_resample.ResampleImage):
        def __init__(self, *a, **k):
            k["wcs_pars"] = wcs_pars
            super().__init__(*a, **k)

    jwst_resample.ResampleImage = OnGrid
    outlier_detection.main(rest)


def scaling_section(root: Path, args, params: dict) -> dict:
    """Peak RSS of single tile jobs against tile size (the most-covered tile of the 16-exposure grid).

    For ``mem_mb``: drizzle_tile, median_tile and flag_outliers at ``--scaling-sizes`` tile sizes;
    the line through the points is the memory model the workflow's resources use.
    """
    small = root / f"n{args.n_small}"
    inputs = [root / "noise" / p.name for p in make_exposures(root / "cal", args.n_small)]
    grid = small / "grid.json"
    if not grid.exists():
        make_grid(inputs, grid)
    work = root / "scaling"
    work.mkdir(exist_ok=True)
    log = work / "jobs.log"
    common = ["--grid", grid, "--filter", FILTER]
    od = outlier_parameters()
    median_params = json.dumps({"maskpt": od["maskpt"], **params})
    rows = []
    for size in args.scaling_sizes:
        tiles_json = work / f"tiles_{size}.json"
        run([PYTHON, SCRIPTS / "mosaic_tiles.py", *common, "--tile-size", size, "--out", tiles_json, *inputs], log)
        table = json.loads(tiles_json.read_text())
        row = max(table["tiles"], key=lambda r: (len(r["inputs"]), -r["index"]))
        names = list(dict.fromkeys([table["inputs"][0], *row["inputs"]]))
        pixels = (row["x1"] - row["x0"]) * (row["y1"] - row["y0"])
        tile_args = ["--tile", row["index"], "--tile-size", size, "--tiles", tiles_json]
        entry = {"tile_size": size, "tile_pixels": pixels, "inputs": len(row["inputs"]), "ntiles": table["ntiles"]}
        out = work / f"tile_{size}.fits"
        cmd = [PYTHON, SCRIPTS / "drizzle_tile.py", *common, *tile_args, "--out", out, "--params", json.dumps(params)]
        job = run([*cmd, *names], log)
        entry["drizzle_tile"] = {"rss_mb": round(job["max_rss_mb"], 1), "wall_s": round(job["wall_s"], 1)}
        out.unlink()
        medians = []
        needed = [r for r in table["tiles"] if r is row or str(inputs[0]) in r["inputs"]]  # what flag_outliers reads
        for r in needed:
            median = work / f"median_{size}_{r['index']:03d}.fits"
            cmd = [PYTHON, SCRIPTS / "median_tile.py", *common, "--tile", r["index"], "--tile-size", size,
                   "--tiles", tiles_json, "--out", median, "--params", median_params]  # fmt: skip
            job = run([*cmd, *dict.fromkeys([table["inputs"][0], *r["inputs"]])], log)
            if r["index"] == row["index"]:
                entry["median_tile"] = {"rss_mb": round(job["max_rss_mb"], 1), "wall_s": round(job["wall_s"], 1)}
            medians.append(median)
        crf = work / f"crf_{size}.fits"
        flag_params = json.dumps({"snr": od["snr"], "scale": od["scale"]})
        cmd = [PYTHON, SCRIPTS / "flag_outliers.py", *common, "--exposure", inputs[0], "--out", crf,
               "--params", flag_params, *medians]  # fmt: skip
        job = run(cmd, log)
        entry["flag_outliers"] = {"rss_mb": round(job["max_rss_mb"], 1), "wall_s": round(job["wall_s"], 1)}
        for path in (crf, *medians):
            path.unlink()
        rows.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    fits = {}
    for kind in ("drizzle_tile", "median_tile"):
        x = np.array([r["tile_pixels"] for r in rows], float) / 1e6
        y = np.array([r[kind]["rss_mb"] for r in rows], float)
        if len(rows) >= 2:
            slope, intercept = np.polyfit(x, y, 1)
            fits[kind] = {"mb_per_megapixel": round(float(slope), 1), "intercept_mb": round(float(intercept), 1)}
    return {"scaling": {"rows": rows, "linear_fit": fits}}


SECTIONS = {
    "small": small_section,
    "outliers": outliers_section,
    "scaling": scaling_section,
    "large": large_section,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="keep inputs and products here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the mosaics (~20 GB)")
    parser.add_argument("--tile-size", type=int, default=4096)
    parser.add_argument("--n-small", type=int, default=16)
    parser.add_argument("--n-large", type=int, default=128)
    parser.add_argument("--scaling-sizes", type=int, nargs="+", default=[1024, 2048, 3072])
    parser.add_argument("--jwst-128", action="store_true", help="also run jwst's single pass on the large set")
    parser.add_argument(
        "--only", nargs="+", choices=list(SECTIONS), help="run these sections; the others are read from a previous "
        "run's bench_<section>.json in --workdir where there is one"
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mosaic_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    params = {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}
    result = {"bench": "mosaic", "tile_size_px": args.tile_size, "input_shape": [2048, 2048], "filter": FILTER}
    try:
        for name, section in SECTIONS.items():
            cache = root / f"bench_{name}.json"
            if args.only and name not in args.only:
                if cache.exists():  # the other sections from an earlier run in --workdir, if any
                    result.update(json.loads(cache.read_text()))
                continue
            values = section(root, args, params)
            cache.write_text(json.dumps(values))
            result.update(values)
            print(json.dumps(result), file=sys.stderr, flush=True)
        if f"n{args.n_small}" in result and f"n{args.n_large}" in result:
            a, b = result[f"n{args.n_small}"]["ours"], result[f"n{args.n_large}"]["ours"]
            result["tile_rss_ratio_large_over_small"] = round(b["peak_rss_tile_mb"] / a["peak_rss_tile_mb"], 3)
            result["job_rss_ratio_large_over_small"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)  # with --workdir the inputs stay for the next run
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == [JWST_ON_GRID]:
        jwst_outliers_on_grid(sys.argv[2:])
    else:
        main()
