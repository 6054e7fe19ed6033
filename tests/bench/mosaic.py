"""Benchmark of the output-tiled mosaic (issue 6): memory, time and exactness against jwst; one JSON line.

Full-size (2048 x 2048) NIRCam F200W exposures of the PHANGS-like galaxy layout (2 x 2
pointings x 4 dithers x 8 SW detectors = 128 exposures) are made cheaply: a blank sky of
0.1 MJy/sr plus a per-exposure offset (rms 0.01 MJy/sr), Gaussian noise with exactly the
variance of VAR_RNOISE + VAR_POISSON, reference-pixel borders, 0.05% dead pixels and 0.05%
pixels whose VAR_POISSON is exactly 0 (the CEERS "holes"), with the simulator's WCS
(``simulate_survey.detector_model``, scale 1, no pointing errors) and metadata. The 16-input
case is the first 16 exposures (one pointing, two dithers).

1. the 16 exposures go through ``noise_model.py`` (pedestal, VAR_RNOISE rescale, zero
   variances -> inf);
2. the 16-input mosaic is made by the tiled scripts -- ``mosaic_tiles.py``, one
   ``drizzle_tile.py`` per tile, ``gather_tiles.py``, each a separate process run one after
   the other -- and by jwst's ResampleStep in memory (``resample_mosaic.py``), back to back;
   wall time and peak RSS are measured per process (``os.wait4``);
3. ``correlated_noise.py --apply`` on the tiled mosaic; the sky is blank, so the truth
   residual is the mosaic itself: pixel and 0.2" aperture scatter against ERR with and
   without the correlation correction;
4. the 128-input mosaic by the tiled scripts (the jwst single pass would hold ~13 GB of
   inputs; it runs only with ``--jwst-128``).

    python tests/bench/mosaic.py                      # temporary directory, tile 4096 (~45 min, 13 GB disk)
    python tests/bench/mosaic.py --workdir /tmp/mosaic_bench --keep
    python tests/bench/mosaic.py --workdir /tmp/mosaic_bench --only small   # rerun 16, reuse the 128 numbers

Output: ``{"bench": "mosaic", ...}`` with peak RSS in MB, times in s.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
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
    import survey_plan
    import wfutils

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
        "gather_rss_mb": round(next(j["max_rss_mb"] for j in jobs if j["kind"] == "gather_tiles"), 1),
    }


def make_grid(inputs, out: Path) -> dict:
    import mosaic_grid

    mosaic_grid.main([*map(str, inputs), "--out", str(out), "--ra", str(TARGET["ra"]), "--dec", str(TARGET["dec"])])
    return json.loads(out.read_text())


def tiled_mosaic(inputs, grid_path: Path, work: Path, tile_size: int, out: Path, params: dict) -> list[dict]:
    """mosaic_tiles -> drizzle_tile per tile -> gather_tiles, each in its own process."""
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
    jobs.append(
        {"kind": "gather_tiles", **run([PYTHON, SCRIPTS / "gather_tiles.py", *common, "--out", out, *tile_files], log)}
    )
    for path in tile_files:  # intermediate products: ~0.5 GB per 4096^2 tile
        path.unlink()
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
        "jwst": {"wall_s": round(theirs["wall_s"], 1), "peak_rss_mb": round(theirs["max_rss_mb"], 1)},
        "rss_ratio_ours_over_jwst": round(ours["peak_rss_mb"] / theirs["max_rss_mb"], 3),
        "wall_ratio_ours_over_jwst": round(ours["wall_s"] / theirs["wall_s"], 3),
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
    section = {"grid_shape": spec["shape"], "ours": summarise(tiled_mosaic(cal, grid, large / "tiled", args.tile_size,
                                                                           ours_i2d, params))}  # fmt: skip
    if args.jwst_128:
        theirs = jwst_mosaic(cal, grid, large / "jwst_i2d.fits", params, large / "jwst.log")
        section["jwst"] = {"wall_s": round(theirs["wall_s"], 1), "peak_rss_mb": round(theirs["max_rss_mb"], 1)}
        section["max_rel_diff_vs_single_pass"] = max_relative_difference(ours_i2d, large / "jwst_i2d.fits")
    else:
        section["jwst_inputs_in_memory_mb"] = round(sum(p.stat().st_size for p in cal) / 1e6, 0)
    section["mosaic_file_mb"] = round(ours_i2d.stat().st_size / 1e6, 0)
    if not args.keep:
        ours_i2d.unlink()
    out[f"n{args.n_large}"] = section
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="keep inputs and products here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the mosaics (~20 GB)")
    parser.add_argument("--tile-size", type=int, default=4096)
    parser.add_argument("--n-small", type=int, default=16)
    parser.add_argument("--n-large", type=int, default=128)
    parser.add_argument("--jwst-128", action="store_true", help="also run jwst's single pass on the large set")
    parser.add_argument(
        "--only", choices=["small", "large"], help="run one section; the other is read from a previous run's "
        "bench_<section>.json in --workdir (the 128-exposure section takes ~30 min on 2 cores)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mosaic_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    params = {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}
    result = {"bench": "mosaic", "tile_size_px": args.tile_size, "input_shape": [2048, 2048], "filter": FILTER}
    sections = {"small": small_section, "large": large_section}
    try:
        for name, section in sections.items():
            cache = root / f"bench_{name}.json"
            if args.only and args.only != name:
                if not cache.exists():
                    raise SystemExit(f"--only {args.only}: no earlier {cache} to take the {name} section from")
                result.update(json.loads(cache.read_text()))
                continue
            values = section(root, args, params)
            cache.write_text(json.dumps(values))
            result.update(values)
            print(json.dumps(result), file=sys.stderr, flush=True)
        a, b = result[f"n{args.n_small}"]["ours"], result[f"n{args.n_large}"]["ours"]
        result["tile_rss_ratio_large_over_small"] = round(b["peak_rss_tile_mb"] / a["peak_rss_tile_mb"], 3)
        result["job_rss_ratio_large_over_small"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)  # with --workdir the inputs stay for the next run
    print(json.dumps(result))


if __name__ == "__main__":
    main()
