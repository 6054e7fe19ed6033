"""Benchmark of the 1/f destriping (issue #3): residual stripes, flux, speed; prints ONE JSON line.

    python tests/bench/destripe.py                      # everything, scale 1.0 (2048 x 2048 detectors)
    python tests/bench/destripe.py --scale 0.5 --skip-perf
    python tests/bench/destripe.py --work-dir /tmp/destripe-bench   # keep and reuse the simulated data
    python tests/bench/destripe.py --work-dir /tmp/destripe-bench --perf-only
    python tests/bench/destripe.py --targets deep --skip-perf       # the deep field only

What it measures (metric: ``tests/bench/stripe_metric.py``):

* Synthetic survey at ``--scale`` (default 1.0: the real detector geometry; source sizes are
  fixed in pixels, so smaller scales crowd each amplifier and shrink the galaxy) with one
  tile: galaxy (``phangs_galaxy``; F200W, module A of 4 dithers = 16 exposures, and F335M)
  and deep field (``ceers_deep``; F200W dither 1 = 8 exposures, and F444W).  Wisps,
  persistence, background offsets and pointing errors are off (see ``BENCH_EFFECTS``).
* ``residual``: pooled ratio RMS(residual stripe profile) / RMS(injected profile) per
  target, band, method, on all scales (``all``) and below 128 rows (``lt128``): row_median
  (baseline), median_filter and remstriping with their published parameters, our
  ``local_galaxy`` (median_filter with the local block background, scales 3..127) and
  ``local_allscales`` (local background over whole columns, every scale), and jwst's
  CleanFlickerNoiseStep (median fit; jwst default ``background_method='median'`` and
  ``'model'``).  ``floor_sky_known``: the single-exposure floor, per-amplifier clipped row
  means of the exposure minus its true sky (``sky_known_correction``), i.e. only the noise of
  a row statistic; ``floor_sky_known_local_galaxy_mask``: the same on the pixels outside
  ``local_galaxy``'s source mask.
* ``multi``: galaxy bands after ``local_galaxy`` + multi-exposure destriping: as published
  (``published``), with matched resampling, k/(k+1) consensus weighting and no pass 2
  (``consensus``), and our recommendation (``recommended``: the joint least-squares solve of
  all exposures' large-scale stripes, then ``consensus``); and the information floor of any
  overlap-based destriper for this dither pattern (``overlap_floor``: the injected stripes'
  part fixed to sky rows and columns, which no difference between exposures at one position
  angle can see;
  ``overlap_floor_pass2``: less its structure below the pass-2 length, as an ideal pass 2).
* ``flux``: the same corrections applied to galaxy exposures without 1/f noise (SCI -
  STRIPES, identical to a simulator run with ``one_over_f.enabled: false``, each effect
  having its own random stream): median |change| (MJy/sr), summed change / summed sky over
  the exposure and within the galaxy (brighter half of the pixels); and on a real image
  without 1/f noise (DSS M13 shipped with astropy, scaled to a JWST-like noise).
* ``perf``: seconds per 2048 x 2048 exposure per method on one core and the peak RSS of that
  process (each method in its own subprocess, OMP/BLAS threads = 1); ``multitile_16_s``: the
  multi-exposure CLI on the 16 galaxy F200W module-A exposures (scale 1.0 only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# scripts/ first: this file is also called destripe.py and its folder is on the path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "scripts"))

import stripe_metric as sm  # noqa: E402

# published methods with their published parameters, the baseline, and our two settings
LOCAL = {"method": "median_filter", "highpass": "local", "local_block": 16, "statistic": "mean_median"}
SINGLE = {
    "row_median": {"method": "row_median"},
    "median_filter": {"method": "median_filter"},
    "remstriping": {"method": "remstriping"},
    # galaxy setting: local background over 65 rows, profile scales 3..127 (large scales: multi-exposure)
    "local_galaxy": {**LOCAL, "local_length": 65, "fallback_fraction": 0.5},
    # deep-field setting: background per 16-column block over the whole column, every scale
    "local_allscales": {**LOCAL, "local_length": 0, "scales": [4095], "column_scales": [4095]},
}
DEEP_EXTRA = {"remstriping_fallback95": {"method": "remstriping", "fallback_fraction": 0.95}}
# method whose source mask the sky-known floor is also measured with
FLOOR_MASK = "local_galaxy"
JWST = {"jwst_cfn_median": {"background_method": "median"}, "jwst_cfn_model": {"background_method": "model"}}
MULTI = {
    # PHANGS-JWST as published: full difference, pass 2 on, the exposure compared as observed
    # (with the exposure resampled like the others, all / lt128 moved by < 0.01 at full size)
    "published": {"match_resampling": False},
    # matched resampling, k/(k+1) of the difference, no pass 2 (pass 2 on: +0.01)
    "consensus": {"match_resampling": True, "consensus": True, "large_scale": False},
    # recommended (the config's): the joint least-squares solve, then "consensus"
    "recommended": {"joint": True, "match_resampling": True, "consensus": True, "large_scale": False},
}
log = logging.getLogger("bench.destripe")


# --------------------------------------------------------------------------- helpers
def load(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        return hdul["SCI"].data.astype(np.float32), hdul["DQ"].data.copy()


def jwst_clean(path, params, sci=None):
    """jwst CleanFlickerNoiseStep (median fit) on an exposure; ``sci`` replaces the file's SCI."""
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    from jwst.clean_flicker_noise import CleanFlickerNoiseStep
    from stdatamodels.jwst import datamodels

    with datamodels.open(str(path)) as model:
        if sci is not None:
            model.data = sci.copy()
        result = CleanFlickerNoiseStep(skip=False, fit_method="median", **params).run(model)
        return np.asarray(result.data, np.float32)


def single_corrected(name, path, sci, dq, params):
    """(corrected image, source mask of the method or None)."""
    import destripe

    if name.startswith("jwst"):
        return jwst_clean(path, params, sci), None
    result = destripe.stripe_model(sci, dq, params)
    return sci - result.model, result.mask != 0


def sky_known_correction(sci, dq, sky, masked=None):
    """``sci`` minus per-amplifier 3-sigma-clipped row means of ``sci - sky`` (the sky known exactly).

    The best a row statistic can do on one exposure: what is left is the noise of the row means
    (of the pixels outside ``masked`` when given).  Scored like the methods, it is the
    single-exposure floor of the benchmark's metric.
    """
    import destripe

    region = destripe.science_region(sci.shape, 4, False)
    use = sm.valid_pixels(sci, dq) & (True if masked is None else ~masked)
    amps = destripe.amplifier_slices(sci.shape[1])
    rows, _ = destripe.row_profiles(sci - sky, use, amps, region, 3.0, 5, fallback_fraction=1.0, statistic="mean")
    return sci - destripe.finish_model(np.nan_to_num(rows), np.zeros(sci.shape[1]), amps, region, use)


def ratios(sums_all, sums_hp):
    return {"all": round(sm.pooled_ratio(sums_all), 4), "lt128": round(sm.pooled_ratio(sums_hp), 4)}


def rounded(values: dict, digits: int = 6) -> dict:
    return {k: round(v, digits) for k, v in values.items()}


def evaluate_single(paths, methods, flux_paths):
    """Residual ratios per method over ``paths`` and flux changes on ``flux_paths`` without 1/f.

    One exposure at a time (full-size truth arrays are 16 MB each), every method on it.
    """
    sums = {name: ([], [], []) for name in methods}  # all scales, < 128 rows, flux parts
    floors = {"sky_known": ([], []), f"sky_known_{FLOOR_MASK}_mask": ([], [])}
    seconds = dict.fromkeys(methods, 0.0)
    for path in paths:
        sci, dq = load(path)
        truth = sm.read_truth(sm.truth_path(path), names=("STRIPES", "SKY", "BKG"))
        clean = sci - truth["STRIPES"]
        for name, params in methods.items():
            start = time.time()
            corrected, masked = single_corrected(name, path, sci, dq, params)
            seconds[name] += time.time() - start
            sums[name][0].append(sm.exposure_residual(corrected, sci, truth, dq))
            sums[name][1].append(sm.exposure_residual(corrected, sci, truth, dq, highpass=129))
            if name == FLOOR_MASK:
                for key, mask in zip(floors, (None, masked), strict=True):
                    floor = sky_known_correction(sci, dq, truth["SKY"] + truth["BKG"], mask)
                    floors[key][0].append(sm.exposure_residual(floor, sci, truth, dq))
                    floors[key][1].append(sm.exposure_residual(floor, sci, truth, dq, highpass=129))
            if path in flux_paths:
                change = single_corrected(name, path, clean, dq, params)[0] - clean
                valid = sm.valid_pixels(clean + change, dq) & sm.valid_pixels(clean, dq)
                sums[name][2].append(sm.flux_sums(change, valid, truth["SKY"]))
    out = {}
    for name in methods:
        all_scales, small_scales, flux = sums[name]
        out[name] = {**ratios(all_scales, small_scales), "s_per_exposure": round(seconds[name] / len(paths), 3)}
        if flux:
            out[name]["flux"] = rounded(sm.pool_flux(flux))
        log.info("%s: %s", name, out[name])
    for key, (all_scales, small_scales) in floors.items():
        if all_scales:
            out[f"floor_{key}"] = ratios(all_scales, small_scales)
            log.info("single-exposure floor, %s: %s", key, out[f"floor_{key}"])
    return out


def multi_inputs(paths, single_params, clean=False):
    """Exposure objects after single-exposure destriping (of the 1/f-free version with ``clean``)
    and, per exposure, what the metric needs: (input - STRIPES, single-corrected, DQ, SKY)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    import destripe
    import destripe_multitile as dm

    exposures, metric = [], []
    for path in paths:
        sci, dq = load(path)
        truth = sm.read_truth(sm.truth_path(path), names=("STRIPES", "SKY"))
        target = sci - truth["STRIPES"]
        observed = target if clean else sci
        corrected = observed - destripe.stripe_model(observed, dq, single_params).model
        usable = destripe.usable_pixels(sci, dq, destripe.science_region(sci.shape, 4, False))
        wcs = WCS(fits.getheader(path, "SCI"))
        exposures.append(dm.Exposure(Path(path).name, np.where(usable, corrected, np.nan), usable, wcs))
        metric.append((target, corrected, dq, truth["SKY"], truth["STRIPES"]))
    return exposures, metric


def overlap_floors(paths):
    """Residual ratios (all, lt128) of an ideal multi-exposure destriper that removes everything
    the overlaps can see: the injected stripes minus their projection on patterns fixed to the
    common sky grid's rows and columns (per grid row, resp. column, the mean of every exposure's
    stripes there), which no difference between exposures taken at one position angle can tell
    from sky.  Key ``overlap_floor``; ``overlap_floor_pass2``: also less the projection's
    structure below pass 2's default length, as an ideal pass 2 would (it assumes the sky has none)."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from scipy.ndimage import median_filter

    import destripe
    import destripe_multitile as dm

    exposures, stripes = [], []
    for path in paths:
        sci, dq = load(path)
        usable = destripe.usable_pixels(sci, dq, destripe.science_region(sci.shape, 4, False))
        stripes.append((sm.read_truth(sm.truth_path(path), names=("STRIPES",))["STRIPES"], dq))
        exposures.append(dm.Exposure(Path(path).name, sci, usable, WCS(fits.getheader(path, "SCI"))))
    grid, shape, boxes = dm.common_grid([e.wcs for e in exposures], [e.data.shape for e in exposures])
    for exp, box in zip(exposures, boxes, strict=True):
        exp.box = box
    maps = dm.build_maps(exposures, grid, "fast")
    total, count = np.zeros(shape), np.zeros(shape)
    for exp, (forward, _), (pattern, _) in zip(exposures, maps, stripes, strict=True):
        y0, y1, x0, x1 = exp.box
        on_grid = dm.resample(np.where(exp.usable, pattern, np.nan), forward.coords())
        ok = np.isfinite(on_grid)
        total[y0:y1, x0:x1][ok] += on_grid[ok]
        count[y0:y1, x0:x1][ok] += 1

    def projection(axis, pass2_length):
        with np.errstate(invalid="ignore"):
            mean = total.sum(axis=axis) / count.sum(axis=axis)
        idx = np.arange(mean.size)
        mean = np.interp(idx, idx[np.isfinite(mean)], mean[np.isfinite(mean)])
        return mean - median_filter(mean, int(pass2_length) | 1, mode="reflect") if pass2_length else mean

    def floor(pass2_length):
        rows, cols = projection(1, pass2_length), projection(0, pass2_length)
        sums_all, sums_hp = [], []
        for exp, (_, back), (pattern, dq) in zip(exposures, maps, stripes, strict=True):
            y0, y1, x0, x1 = exp.box
            left = dm.resample((rows[y0:y1, None] + cols[None, x0:x1]).astype(np.float32), back.coords())
            # metric input: "corrected" = original - (stripes - left), i.e. only ``left`` remains
            original = np.zeros_like(pattern)
            corrected = (original - (pattern - np.nan_to_num(left))).astype(np.float32)
            truth = {"STRIPES": pattern}
            sums_all.append(sm.exposure_residual(corrected, original, truth, dq))
            sums_hp.append(sm.exposure_residual(corrected, original, truth, dq, highpass=129))
        return ratios(sums_all, sums_hp)

    return {
        "overlap_floor": floor(None),
        "overlap_floor_pass2": floor(dm.pass_two_length(exposures[0].data.shape[0])),
    }


def evaluate_multi(paths, single_params):
    """Single (``single_params``) + multi-exposure destriping of one band, for each MULTI setting."""
    import destripe_multitile as dm

    out = {}
    for name, params in MULTI.items():
        exposures, metric = multi_inputs(paths, single_params)
        start = time.time()
        models = dm.destripe_exposures(exposures, params)
        seconds = time.time() - start
        sums_all, sums_hp = [], []
        for (target, corrected, dq, _, stripes), model in zip(metric, models, strict=True):
            final = corrected - model
            truth = {"STRIPES": stripes}
            sums_all.append(sm.exposure_residual(final, target + stripes, truth, dq))
            sums_hp.append(sm.exposure_residual(final, target + stripes, truth, dq, highpass=129))
        result = {**ratios(sums_all, sums_hp), "seconds": round(seconds, 1)}
        del exposures, metric, models
        exposures, metric = multi_inputs(paths, single_params, clean=True)
        models = dm.destripe_exposures(exposures, params)
        parts = []
        for (target, corrected, dq, sky, _), model in zip(metric, models, strict=True):
            # total change (single + multi) of an exposure without 1/f noise
            parts.append(sm.flux_sums(corrected - model - target, sm.valid_pixels(target, dq), sky))
        result["flux_single_plus_multi"] = rounded(sm.pool_flux(parts))
        del exposures, metric, models
        out[name] = result
        log.info("multi %s: %s", name, result)
    return out


def real_image_flux():
    """Destriping a real image without 1/f noise: DSS M13 from astropy's test data, JWST-like scaling."""
    import astropy

    import destripe

    path = Path(astropy.__file__).parent / "io" / "fits" / "hdu" / "compressed" / "tests" / "data" / "m13.fits"
    if not path.exists():
        return {"skipped": f"{path} not found"}
    from astropy.io import fits

    raw = fits.getdata(path).astype(np.float64)[2:298, 2:298]  # 296 x 296: 4 amplifiers of 74 columns
    sky_level = np.median(raw)
    noise = 1.4826 * np.median(np.abs(raw - sky_level))
    # scale so that the sky noise is 0.015 MJy/sr (the simulated F200W galaxy exposures) on a 0.1 MJy/sr sky
    image = ((raw - sky_level) * (0.015 / noise) + 0.1).astype(np.float32)
    dq = np.zeros(image.shape, np.uint32)
    dq[:4] = dq[-4:] = 1
    dq[:, :4] = dq[:, -4:] = 1
    sci = np.where(dq == 0, image, np.nan).astype(np.float32)
    out = {"image": "astropy m13.fits (DSS, 296x296)", "sky_noise_mjysr": 0.015}
    from scipy.ndimage import gaussian_filter

    signal = gaussian_filter(image - 0.1, 2.0)  # the cluster without the sky, smoothed for the aperture
    valid = dq == 0
    small_local = {**SINGLE["local_galaxy"], "local_block": 8, "local_length": 17}  # 296-pixel image
    for name, params in {**SINGLE, "local_galaxy_small": small_local}.items():
        model = destripe.stripe_model(sci, dq, params).model
        out[name] = rounded(sm.flux_change(-model, valid, signal))
    return out


# --------------------------------------------------------------------------- performance
def perf_worker(method_json, path):
    """Child process: time one method on one exposure (best of 3) and report the peak RSS.

    CPU seconds (process time) measure the work on one core whatever else the machine runs;
    wall seconds are reported beside them.
    """
    import destripe

    params = json.loads(method_json)
    sci, dq = load(path)
    cpu, wall = [], []
    for _ in range(3):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        if params.get("jwst"):
            jwst_clean(path, params["jwst"])
        else:
            destripe.stripe_model(sci, dq, params)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    print(json.dumps({"cpu_seconds": min(cpu), "wall_seconds": min(wall), "peak_rss_mb": round(peak_rss_mb(), 1)}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ``ru_maxrss`` would include a parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


MULTI_WORKER = """
import pathlib, sys, time
sys.path.insert(0, {scripts!r})
import destripe_multitile
wall, cpu = time.time(), time.process_time()
destripe_multitile.main(sys.argv[1:])
hwm = [l for l in pathlib.Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
print(time.time() - wall, time.process_time() - cpu, int(hwm[0].split()[1]) / 1024.0)
"""


def one_core_env():
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[key] = "1"
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    return env


def perf(path, multi_paths, out_dir):
    """Per-method timing on one 2048 x 2048 exposure and the multi-exposure CLI on ``multi_paths``."""
    results = {}
    methods = {**SINGLE, "jwst_cfn_model": {"jwst": JWST["jwst_cfn_model"]}}
    for name, params in methods.items():
        proc = subprocess.run(
            [sys.executable, __file__, "--perf-worker", json.dumps(params), str(path)],
            capture_output=True,
            text=True,
            env=one_core_env(),
            check=True,
        )
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("perf %s: %s", name, results[name])
    multi = None
    if multi_paths:
        code = MULTI_WORKER.format(scripts=str(REPO / "scripts"))
        args = ["--out-dir", str(out_dir), "--params", json.dumps(MULTI["recommended"]), *map(str, multi_paths)]
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=one_core_env(), check=True
        )
        wall, cpu, rss = proc.stdout.strip().splitlines()[-1].split()
        multi = {
            "n_exposures": len(multi_paths),
            "cpu_seconds": round(float(cpu), 1),
            "wall_seconds": round(float(wall), 1),
            "peak_rss_mb": round(float(rss), 1),
        }
        log.info("perf multi-tile: %s", multi)
    return results, multi


# --------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="simulation.scale of the residual benchmark")
    parser.add_argument("--work-dir", help="keep the simulated data here (reused when present)")
    parser.add_argument("--skip-perf", action="store_true")
    parser.add_argument("--perf-only", action="store_true", help="only the timing part (and the real image)")
    parser.add_argument("--targets", default="galaxy,deep", help="which fields to measure (galaxy, deep)")
    parser.add_argument("--perf-worker", nargs=2, metavar=("PARAMS", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.perf_worker:
        perf_worker(*args.perf_worker)
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("stpipe", "jwst", "stcal", "simulate_survey", "destripe", "destripe_multitile"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    import yaml

    warnings.simplefilter("ignore")
    start = time.time()
    sim_config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulation"]
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="destripe-bench-")
        work = Path(tmp.name)
    targets = set(args.targets.split(","))
    sets = {}
    if "galaxy" in targets:
        galaxy = sm.simulate(work / "galaxy", sim_config, "phangs_galaxy", ["F200W", "F335M"], args.scale)
        sets[("galaxy", "F200W")] = [p for p in sm.exposures_of(galaxy, "F200W") if "nrca" in p.name]  # module A
        sets[("galaxy", "F335M")] = sm.exposures_of(galaxy, "F335M")
    if "deep" in targets:
        deep = sm.simulate(work / "deep", sim_config, "ceers_deep", ["F200W", "F444W"], args.scale)
        sets[("deep", "F200W")] = [p for p in sm.exposures_of(deep, "F200W") if "_00001_" in p.name]
        sets[("deep", "F444W")] = sm.exposures_of(deep, "F444W")
    log.info("simulated data ready after %.0f s", time.time() - start)
    result = {"bench": "destripe", "scale": args.scale, "residual": {}, "multi": {}}
    for (target, band), paths in sets.items():
        if args.perf_only:
            break
        methods = {**SINGLE, **(DEEP_EXTRA if target == "deep" else {}), **JWST}
        flux_paths = paths[:4] if target == "galaxy" else []
        log.info("%s %s: %d exposures", target, band, len(paths))
        single = evaluate_single(paths, methods, flux_paths)
        result["residual"].setdefault(target, {})[band] = single
        if target == "galaxy":
            multi = {**evaluate_multi(paths, SINGLE["local_galaxy"]), **overlap_floors(paths)}
            log.info("multi floor: %s; with an ideal pass 2: %s", multi["overlap_floor"], multi["overlap_floor_pass2"])
            result["multi"].setdefault(target, {})[band] = multi
    result["real_image_flux"] = real_image_flux()
    if not args.skip_perf:
        perf_dir = work / "perf"
        full = sm.simulate(perf_dir / "deep", sim_config, "ceers_deep", ["F444W"], 1.0, dithers=1)
        multi_paths = sets[("galaxy", "F200W")] if args.scale == 1.0 and "galaxy" in targets else []
        with tempfile.TemporaryDirectory(prefix="destripe-mt-") as out_dir:
            per_method, multi = perf(sm.exposures_of(full, "F444W")[0], multi_paths, out_dir)
        result["perf"] = {
            "cpu_seconds_per_2048_exposure": {k: round(v["cpu_seconds"], 3) for k, v in per_method.items()},
            "wall_seconds_per_2048_exposure": {k: round(v["wall_seconds"], 3) for k, v in per_method.items()},
            "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in per_method.items()},
            "multitile": multi,
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    result["wall_s"] = round(time.time() - start, 1)
    result["bench_peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result, separators=(",", ":")))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
