"""Benchmark of the background and level scripts against the simulator's truth: one JSON line.

Simulates the galaxy target (layout ``phangs_galaxy``, config scale, every effect on
except pointing errors: relative astrometry runs before level matching in the workflow,
so the inputs here are aligned) in a temporary directory, then runs the chain of issue #4:

* MIRI bands: ``miri_background.py`` (off-field parallels, closest visit in time) ->
  ``miri_lyot_split.py`` -> ``level_match.py`` (dithers, then tiles) and jwst's
  ``SkyMatchStep`` on the *same* split files; recovered offsets are compared with the
  truth table (injected per-exposure offsets and Lyot levels, minus the off-field
  background each exposure had subtracted, plus the level the galaxy light inside the
  off-field frames adds to each exposure: ``offfield_sky_levels``), after removing the
  common constant; ``level_match_vs_injected`` ignores that galaxy light;
* NIRCam LW bands: ``level_match.py`` on the cal files (offsets ~0.01 MJy/sr);
* mosaics of the matched exposures with ``resample_mosaic.py`` (ResampleStep) on the
  ``mosaic_grid.py`` grid, then ``anchor_background.py``: the anchored bands against the
  IRAC-like references (F770W <- IRAC4, F360M <- IRAC1, the simulator's proxies), the other
  bands against them, the MIRI Lyot parts' footprints left out (``exclude_coronagraph``);
  ``error_noise_free`` is the intercept of the same fits on noiseless copies of the mosaics
  (``noise_free_mosaics``): the error the shape of the band relations leaves without noise.
  The true sky pedestal of a mosaic is the pixel-weighted mean over its input exposures of
  median(matched SCI - truth SKY).

    .venv/bin/python tests/bench/levels.py [--miri F770W,...] [--nircam F335M,F360M]
        [--workdir DIR] [--no-skymatch] [--scale S] [--skip-anchoring] [--sim-seed S]

Output (one line): {"bench": "levels", "miri": {band: {...}}, "nircam": {...},
"anchoring": {band: {...}}, "offfield": {...}, "lyot": {...}, "times_s": {...}, ...}.
Offsets and errors in MJy/sr; "rms_*" are root mean squares over exposures (dithers:
within each visit after removing the visit mean; tiles: the visit means).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import anchor_background  # noqa: E402
import level_match  # noqa: E402
import miri_background  # noqa: E402
import miri_lyot_split  # noqa: E402
import mosaic_grid  # noqa: E402
import resample_mosaic  # noqa: E402
import simulate_survey  # noqa: E402

TARGET = {
    "target": "NGC0628",
    "ra": 24.173946,
    "dec": 15.783662,
    "layout": "phangs_galaxy",
    "program": 9001,
    "distance_mpc": 9.84,
}
MIRI_LYOT_SUFFIX = "_lyot"


# ----------------------------------------------------------------------------- simulation
def bench_sim_config(scale=None, seed=None) -> dict:
    """The workflow's simulation config with pointing errors off (inputs as after relative astrometry)."""
    cfg = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulation"])
    cfg["effects"]["pointing_errors"]["enabled"] = False
    if scale:
        cfg["scale"] = scale
    if seed is not None:
        cfg["seed"] = seed
    return cfg


def simulate(root: Path, cfg: dict, bands, log_file) -> None:
    """Sky, references and the exposures of ``bands`` (science and off-field) under ``root``."""
    simulate_survey.simulate_target(root, cfg, TARGET, bands, log_file=log_file)


def truth_rows(root: Path, band: str) -> dict:
    from astropy.table import Table

    table = Table.read(root / "truth" / f"{band}.ecsv", format="ascii.ecsv")
    return {str(r["exposure"]): r for r in table}


def is_offfield(name: str) -> bool:
    """Off-field parallels carry sequence digit 2 in the JWST name (``_02201_``)."""
    return name.split("_")[1][2] == "2"


# ----------------------------------------------------------------------------- metrics
def offset_metrics(recovered: dict, truth: dict, visits: dict, weak=(), formal=None) -> dict:
    """RMS of recovered minus true offsets of the imager parts after removing their mean.

    Also the Lyot level error: (Lyot part - imager part) recovered minus true, per exposure,
    separately for the Lyot parts the level matching reports as weakly tied (``weak``: formal
    error above its threshold, i.e. tied to the mosaic only by a thin strip); with ``formal``
    (name -> formal error) that error in units of the Lyot part's formal error.
    """
    imager = [n for n in recovered if not n.endswith(MIRI_LYOT_SUFFIX)]
    err = {n: recovered[n] - truth[n] for n in recovered}
    constant = float(np.mean([err[n] for n in imager]))
    resid = {n: err[n] - constant for n in err}
    by_visit: dict[str, list] = {}
    for n in imager:
        by_visit.setdefault(visits[n], []).append(resid[n])
    visit_means = {v: float(np.mean(e)) for v, e in by_visit.items()}
    dithers = [resid[n] - visit_means[visits[n]] for n in imager]
    out = {
        "n_images": len(imager),
        "injected_rms": float(np.std([truth[n] for n in imager])),
        "rms_total": float(np.sqrt(np.mean([resid[n] ** 2 for n in imager]))),
        "rms_dithers": float(np.sqrt(np.mean(np.square(dithers)))),
        "rms_tiles": float(np.sqrt(np.mean(np.square(list(visit_means.values()))))),
    }
    lyot = [n for n in recovered if n.endswith(MIRI_LYOT_SUFFIX)]
    if lyot:
        level_err = [resid[n] - resid[n[: -len(MIRI_LYOT_SUFFIX)]] for n in lyot]
        out["lyot_level_error_rms"] = float(np.sqrt(np.mean(np.square(level_err))))
        out["lyot_level_error_max"] = float(np.max(np.abs(level_err)))
        for label, selected in (("well_tied", False), ("weakly_tied", True)):
            errs = [e for n, e in zip(lyot, level_err, strict=True) if (n in weak) == selected]
            out[f"lyot_{label}_n"] = len(errs)
            out[f"lyot_{label}_error_max"] = float(np.max(np.abs(errs))) if errs else None
        if formal:
            z = [e / formal[n] for n, e in zip(lyot, level_err, strict=True)]
            out["lyot_error_over_formal_rms"] = float(np.sqrt(np.mean(np.square(z))))
            out["lyot_error_over_formal_max"] = float(np.max(np.abs(z)))
    return out


def offfield_sky_levels(images, split_dir: Path, root: Path, offfield_frames: dict, step: int = 8) -> dict:
    """Offsets the galaxy light in the off-field frames adds to each image, and the sky plane it leaves.

    The off-field pointing is not empty: the galaxy's outer disk reaches it (its SKY truth holds
    a few 0.001 MJy/sr in F770W, falling across the detector). The off-field background image
    carries that light, so every science exposure gets ``-OFFSKY(x, y)`` in *detector*
    coordinates: the same tilt in every exposure. On the sky this is one global plane plus a
    constant per exposure that depends on where the exposure sits. Those constants are real
    level differences between the images (level matching must find them; no offset removes
    the plane), so they belong to the truth that level matching is judged against.

    Least squares over every ``step``-th usable pixel of all images: one constant per image plus
    a plane in tangent-plane arcsec. ``offfield_frames`` maps image name -> names of the
    off-field frames its background came from. Returns {"offsets": {name: constant},
    "plane_mjysr_per_arcmin": [d/dxi, d/deta], "remainder_rms": rms of what neither explains}.
    """
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    cache = {}
    blocks = []  # (ra, dec, -OFFSKY) of each image's sampled pixels
    for image in images:
        frames = tuple(sorted(offfield_frames[image["name"]]))
        if frames not in cache:
            skies = [fits.getdata(root / "truth" / "exp" / f"{n}_truth.fits", "SKY") for n in frames]
            cache[frames] = np.median(skies, axis=0)[::step, ::step]
        with datamodels.open(str(split_dir / image["file"])) as model:
            use = ((model.dq[::step, ::step] & 1) == 0) & np.isfinite(model.data[::step, ::step])
            yy, xx = np.mgrid[0 : model.data.shape[0] : step, 0 : model.data.shape[1] : step]
            ra, dec = model.meta.wcs(xx[use].astype(float), yy[use].astype(float))
        blocks.append((np.asarray(ra), np.asarray(dec), -cache[frames][use]))
    ra0, dec0 = float(np.mean(blocks[0][0])), float(np.mean(blocks[0][1]))
    n_img = len(images)
    values = np.concatenate([b[2] for b in blocks])
    image_of = np.repeat(np.arange(n_img), [len(b[2]) for b in blocks])
    design = np.zeros((len(values), n_img + 2))
    design[np.arange(len(values)), image_of] = 1.0
    xi, eta = simulate_survey.tangent_offsets(
        np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]), ra0, dec0
    )
    design[:, n_img], design[:, n_img + 1] = xi, eta
    solution = np.linalg.lstsq(design, values, rcond=None)[0]
    return {
        "offsets": {image["name"]: float(c) for image, c in zip(images, solution[:n_img], strict=True)},
        "plane_mjysr_per_arcmin": [float(60 * solution[n_img]), float(60 * solution[n_img + 1])],
        "remainder_rms": float(np.std(values - design @ solution)),
    }


def skymatch_levels(paths) -> dict:
    """jwst SkyMatchStep (default parameters, skymethod 'match', nothing subtracted): level per image."""
    from jwst.datamodels import ModelLibrary
    from jwst.skymatch import SkyMatchStep

    library = ModelLibrary([str(p) for p in paths], on_disk=False)
    result = SkyMatchStep(skymethod="match", subtract=False).run(library)
    levels = {}
    with result:
        for i in range(len(result)):
            model = result.borrow(i)
            levels[Path(model.meta.filename).name.replace("_cal.fits", "")] = float(model.meta.background.level or 0.0)
            result.shelve(model, i, modify=False)
    return levels


def pedestal_truth(mosaic: Path, band: str, root: Path, cfg: dict, grid: Path, logs: str) -> float:
    """Sky pedestal of a mosaic: median of (mosaic - noiseless truth sky on the same grid), both
    smoothed by the same 2" Gaussian first. Unsmoothed, the drizzle-broadened PSF of the mosaic
    leaves positive residual wings over more pixels than the negative cores and biases the
    median by ~+0.015 MJy/sr in F770W."""
    from astropy.io import fits

    truth = root / "work" / "truth" / f"{band}_truth.fits"
    simulate_survey.main(
        [
            "--log",
            logs,
            "truth-mosaic",
            "--sim",
            json.dumps(cfg),
            "--target",
            json.dumps(TARGET),
            "--filter",
            band,
            "--sky-dir",
            str(root / "truth"),
            "--grid",
            str(grid),
            "--out",
            str(truth),
        ]
    )
    image = fits.getdata(mosaic, "SCI").astype(float)
    sky = fits.getdata(truth, "SCI").astype(float)
    sky[~np.isfinite(image)] = np.nan
    pixel = json.loads(Path(grid).read_text())["filters"][band]["pixel_scale"]
    smooth_image = anchor_background.convolve_to(image, 0.0, 2.0, pixel)
    smooth_sky = anchor_background.convolve_to(sky, 0.0, 2.0, pixel)
    return float(np.nanmedian(smooth_image - smooth_sky))


def effective_fwhm_arcsec(band: str, cfg: dict, grid: dict) -> float:
    """Gaussian-equivalent FWHM of a band's mosaic PSF: the simulator's PSF model (its second moment)
    plus the drizzle's pixel smearing (native and output pixel boxes). The workflow's PSF-model
    stage provides these numbers for real data (config anchoring.fwhm_arcsec)."""
    from wflib import survey_plan

    variance = sum(w * s**2 for w, s in simulate_survey.psf_components(band, cfg["psf"]))
    native = survey_plan.CHANNELS[survey_plan.channel_of(band)]["pixscale"]
    variance += (native**2 + grid["filters"][band]["pixel_scale"] ** 2) / 12.0
    return round(2.3548 * float(np.sqrt(variance)), 4)


def offfield_noise_ratio(report: dict, root: Path, cal_dir: Path, out_dir: Path, flat_error: float, names) -> float:
    """Residual background RMS / pure-noise expectation, mean over science exposures.

    Residual = subtracted SCI - truth SKY, minus its median in each connected detector region
    (constant offsets are level matching's business). Expectation per pixel: the science
    VAR_POISSON + VAR_RNOISE + (flat error x SKY)^2 plus the mean off-field variance / N
    frames (an ideal mean of the frames). Sigma-clipped (5 sigma) std of the normalised residual.
    """
    from astropy.io import fits
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    ratios = []
    for entry in report["science"]:
        name = entry["exposure"]
        with fits.open(out_dir / f"{name}_cal.fits") as out, fits.open(cal_dir / f"{name}_cal.fits") as cal:
            sky = fits.getdata(root / "truth" / "exp" / f"{name}_truth.fits", "SKY").astype(float)
            resid = out["SCI"].data.astype(float) - sky
            var = cal["VAR_POISSON"].data + cal["VAR_RNOISE"].data + (flat_error * sky) ** 2
            good = np.isfinite(resid) & ((out["DQ"].data & 1) == 0)
        frames = [cal_dir / f"{n}_cal.fits" for n in names if is_offfield(n) and n[2:13] in entry["offfield_visits"]]
        off_var = [fits.getdata(p, "VAR_POISSON") + fits.getdata(p, "VAR_RNOISE") for p in frames]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NON_SCIENCE pixels: NaN in every frame
            var = var + np.nanmean(off_var, axis=0) / len(frames)
        labels, n = ndimage.label(good)
        z = []
        for k in range(1, n + 1):
            region = labels == k
            if region.sum() >= 20:
                z.append((resid[region] - np.median(resid[region])) / np.sqrt(var[region]))
        ratios.append(sigma_clipped_stats(np.concatenate(z), sigma=5)[2])
    return float(np.mean(ratios))


# ----------------------------------------------------------------------------- the chain
def run_miri_band(root, band, cfg, params, logs, times, skymatch=True) -> dict:
    truth = truth_rows(root, band)
    cal = root / "cal"
    names = sorted(n for n in truth if n.endswith("mirimage"))
    science = [cal / f"{n}_cal.fits" for n in names if not is_offfield(n)]
    offfield = [cal / f"{n}_cal.fits" for n in names if is_offfield(n)]
    work = root / "work" / band
    t = time.perf_counter()
    miri_background.main(
        [
            *map(str, science),
            "--offfield",
            *map(str, offfield),
            "--out-dir",
            str(work / "bkg"),
            "--report",
            str(work / "bkg.json"),
            "--params",
            json.dumps(params["miri_background"]),
            "--log",
            logs,
        ]
    )
    times["miri_background"] += time.perf_counter() - t
    bkg_report = json.loads((work / "bkg.json").read_text())
    t = time.perf_counter()
    miri_lyot_split.main(
        [
            *[str(work / "bkg" / p.name) for p in science],
            "--out-dir",
            str(work / "split"),
            "--params",
            json.dumps(params["lyot_split"]),
            "--log",
            logs,
        ]
    )
    times["lyot_split"] += time.perf_counter() - t
    split = sorted((work / "split").glob("*_cal.fits"))
    t = time.perf_counter()
    level_match.main(
        [
            *map(str, split),
            "--out-dir",
            str(work / "matched"),
            "--report",
            str(work / "levels.json"),
            "--qa-png",
            str(work / "levels.png"),
            "--params",
            json.dumps(params["level_match"]),
            "--log",
            logs,
        ]
    )
    times["level_match"] += time.perf_counter() - t
    report = json.loads((work / "levels.json").read_text())

    # truth: injected offset (+ Lyot level) minus the off-field background level that was
    # subtracted, plus the level the off-field frames' own galaxy light adds (offfield_sky_levels)
    pairing = {e["exposure"]: e["offfield_visits"] for e in bkg_report["science"]}
    injected, visits, frames_of = {}, {}, {}
    for image in report["images"]:
        name = image["name"]
        lyot = name.endswith(MIRI_LYOT_SUFFIX)
        base = name[: -len(MIRI_LYOT_SUFFIX)] if lyot else name
        row = truth[base]
        frames_of[name] = [n for n in truth if is_offfield(n) and n[2:13] in pairing[base]]
        frames = [truth[n] for n in frames_of[name]]
        off = np.mean([f["offset_mjysr"] + (f["lyot_offset_mjysr"] if lyot else 0.0) for f in frames])
        injected[name] = float(row["offset_mjysr"] + (row["lyot_offset_mjysr"] if lyot else 0.0) - off)
        visits[name] = str(row["visit_id"])
    t = time.perf_counter()
    offsky = offfield_sky_levels(report["images"], work / "split", root, frames_of)
    times["metrics"] += time.perf_counter() - t
    true_offsets = {n: injected[n] + offsky["offsets"][n] for n in injected}
    weak = set(report["weakly_tied"])
    recovered = {i["name"]: i["offset_mjysr"] for i in report["images"]}
    formal = {i["name"]: i["formal_error_mjysr"] for i in report["images"]}
    ours = offset_metrics(recovered, true_offsets, visits, weak, formal)
    ours["formal_error_median"] = float(np.median([e for n, e in formal.items() if not n.endswith(MIRI_LYOT_SUFFIX)]))
    ours["rejected_pairs"] = len(report["rejected_pairs"])
    ours["warnings"] = len(report["warnings"])
    result = {
        "level_match": ours,
        # the same, judged against the injected offsets alone (off-field galaxy light ignored)
        "level_match_vs_injected": offset_metrics(recovered, injected, visits, weak),
        "offfield_sky": {
            "offsets_rms": float(np.std([offsky["offsets"][n] for n in injected if not n.endswith(MIRI_LYOT_SUFFIX)])),
            "plane_mjysr_per_arcmin": offsky["plane_mjysr_per_arcmin"],
            "remainder_rms": offsky["remainder_rms"],
        },
    }
    if skymatch:
        t = time.perf_counter()
        levels = skymatch_levels(split)
        times["skymatch"] += time.perf_counter() - t
        result["skymatch"] = offset_metrics(levels, true_offsets, visits, weak)
    t = time.perf_counter()
    ratio = offfield_noise_ratio(bkg_report, root, cal, work / "bkg", cfg["detectors"]["MIRI"]["flat_error"], names)
    result["offfield_residual_over_noise"] = ratio
    times["metrics"] += time.perf_counter() - t
    return result, sorted((work / "matched").glob("*_cal.fits"))


def run_nircam_band(root, band, params, logs, times) -> tuple[dict, list]:
    truth = truth_rows(root, band)
    paths = [root / "cal" / f"{n}_cal.fits" for n in sorted(truth)]
    work = root / "work" / band
    t = time.perf_counter()
    level_match.main(
        [
            *map(str, paths),
            "--out-dir",
            str(work / "matched"),
            "--report",
            str(work / "levels.json"),
            "--params",
            json.dumps(params["level_match"]),
            "--log",
            logs,
        ]
    )
    times["level_match"] += time.perf_counter() - t
    report = json.loads((work / "levels.json").read_text())
    recovered = {i["name"]: i["offset_mjysr"] for i in report["images"]}
    true_offsets = {n: float(truth[n]["offset_mjysr"]) for n in recovered}
    visits = {n: str(truth[n]["visit_id"]) for n in recovered}
    metrics = offset_metrics(recovered, true_offsets, visits)
    metrics["warnings"] = len(report["warnings"])
    return {"level_match": metrics}, sorted((work / "matched").glob("*_cal.fits"))


def make_mosaics(root, matched: dict, logs, times) -> dict:
    """ResampleStep mosaics of every band on the target's common grid (mosaic_grid + resample_mosaic)."""
    from stdatamodels.jwst import datamodels  # noqa: F401  (import cost outside the timers)

    all_paths = [p for paths in matched.values() for p in paths]
    grid_path = root / "work" / "grid.json"  # also read by the anchoring truth
    mosaic_grid.main(
        [
            *map(str, all_paths),
            "--out",
            str(grid_path),
            "--ra",
            str(TARGET["ra"]),
            "--dec",
            str(TARGET["dec"]),
            "--log",
            logs,
        ]
    )
    mosaics = {}
    for band, paths in matched.items():
        out = root / "work" / "mosaics" / f"{TARGET['target']}_{band}_i2d.fits"
        t = time.perf_counter()
        resample_mosaic.main(
            [
                *map(str, paths),
                "--grid",
                str(grid_path),
                "--filter",
                band,
                "--out",
                str(out),
                "--params",
                json.dumps({"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}),
                "--log",
                logs,
            ]
        )
        times["resample"] += time.perf_counter() - t
        mosaics[band] = out
    return mosaics


def anchor(mosaic_paths, extra_args, out_dir: Path, anchoring: dict, logs: str, qa_png: bool = False):
    """``anchor_background.py`` with parameters ``anchoring`` on ``mosaic_paths``: anchored copies in
    ``out_dir/anchored``, fit table ``out_dir/anchor.ecsv`` (returned) and optionally ``out_dir/anchor.png``."""
    from astropy.table import Table

    qa = ["--qa-png", str(out_dir / "anchor.png")] if qa_png else []
    anchor_background.main(
        [
            *map(str, mosaic_paths),
            *extra_args,
            "--out-dir",
            str(out_dir / "anchored"),
            "--table",
            str(out_dir / "anchor.ecsv"),
            *qa,
            "--params",
            json.dumps(anchoring),
            "--log",
            logs,
        ]
    )
    return Table.read(out_dir / "anchor.ecsv", format="ascii.ecsv")


def noise_free_mosaics(mosaics: dict, root: Path) -> list[Path]:
    """Copies of the mosaics holding the noiseless truth sky (``pedestal_truth``'s files) where they
    have data: anchored like the real ones, their intercepts (true pedestal 0) are the part of the
    anchoring error that the shape of the band relations gives over the fitted range, not noise."""
    from astropy.io import fits

    out_dir = root / "work" / "noise_free"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for band, path in mosaics.items():
        with fits.open(path) as hdul:
            sci = hdul["SCI"].data
            truth = fits.getdata(root / "work" / "truth" / f"{band}_truth.fits", "SCI")
            hdul["SCI"].data = np.where(np.isfinite(sci), truth, np.nan).astype(sci.dtype)
            hdul.writeto(out_dir / Path(path).name, overwrite=True)
        paths.append(out_dir / Path(path).name)
    return paths


def lyot_exclusion_args(paths) -> list[str]:
    """``--exclude-footprint`` arguments for the MIRI Lyot parts among ``paths``, as the workflow's
    anchoring rule passes them (config ``anchoring.exclude_coronagraph``)."""
    lyot = [p for p in paths if Path(p).name.endswith(f"{MIRI_LYOT_SUFFIX}_cal.fits")]
    return [arg for p in lyot for arg in ("--exclude-footprint", str(p))]


def recommended_params(cfg) -> dict:
    """The method parameters the report recommends for config/config.yaml (see the report)."""
    return {
        "miri_background": {"pairing": "closest_in_time", "n_visits": 1, "clip_sigma": 1.5},
        "lyot_split": {"lyot_region": cfg["miri_regions"]["lyot"]},
        "level_match": {"weighting": "error"},
        "anchoring": {},
        "anchoring_exclude_coronagraph": True,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miri", default="F770W,F1000W,F1130W,F2100W")
    parser.add_argument("--nircam", default="F335M,F360M")
    parser.add_argument("--workdir", help="keep the data here (default: a temporary directory, removed)")
    parser.add_argument("--no-skymatch", action="store_true")
    parser.add_argument("--scale", type=float, default=None, help="simulation scale (default: config)")
    parser.add_argument("--skip-anchoring", action="store_true", help="level matching only (no mosaics)")
    parser.add_argument("--sim-seed", type=int, default=None, help="simulation seed (default: the config's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    miri = [b for b in args.miri.split(",") if b]
    nircam = [b for b in args.nircam.split(",") if b]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_levels_"))
    root.mkdir(parents=True, exist_ok=True)
    logs = str(root / "bench.log")
    cfg = bench_sim_config(args.scale, args.sim_seed)
    params = recommended_params(cfg)
    times = dict.fromkeys(
        ("simulate", "miri_background", "lyot_split", "level_match", "skymatch", "resample", "anchor", "metrics"), 0.0
    )
    start = time.perf_counter()
    try:
        t = time.perf_counter()
        simulate(root, cfg, miri + nircam, logs)
        times["simulate"] = time.perf_counter() - t
        out = {"bench": "levels", "scale": cfg["scale"], "miri": {}, "nircam": {}, "anchoring": {}}
        matched = {}
        for band in miri:
            out["miri"][band], matched[band] = run_miri_band(root, band, cfg, params, logs, times, not args.no_skymatch)
        for band in nircam:
            out["nircam"][band], matched[band] = run_nircam_band(root, band, params, logs, times)
        if args.skip_anchoring:
            times["total"] = time.perf_counter() - start
            print(json.dumps({**out, "times_s": {k: round(v, 1) for k, v in times.items()}}, default=float))
            return
        mosaics = make_mosaics(root, matched, logs, times)
        references = []
        if "F770W" in mosaics:
            references += ["--reference", f"F770W={root / 'refs' / (TARGET['target'] + '_irac4.fits')}"]
        if "F360M" in mosaics:
            references += ["--reference", f"F360M={root / 'refs' / (TARGET['target'] + '_irac1.fits')}"]
        grid = json.loads((root / "work" / "grid.json").read_text())
        params["anchoring"]["fwhm_arcsec"] = {b: effective_fwhm_arcsec(b, cfg, grid) for b in mosaics}
        excluded = []
        if params["anchoring_exclude_coronagraph"]:
            excluded = lyot_exclusion_args([p for paths in matched.values() for p in paths])
        t = time.perf_counter()
        table = anchor(
            mosaics.values(), [*references, *excluded], root / "work", params["anchoring"], logs, qa_png=True
        )
        times["anchor"] = time.perf_counter() - t
        for row in table:
            band = str(row["band"])
            truth = pedestal_truth(mosaics[band], band, root, cfg, root / "work" / "grid.json", logs)
            out["anchoring"][band] = {
                "role": str(row["role"]),
                "against": str(row["against"]),
                "intercept": float(row["intercept_mjysr"]),
                "true_pedestal": truth,
                "error": float(row["intercept_mjysr"]) - truth,
                "intercept_err": float(row["intercept_err_mjysr"]),
                "slope": float(row["slope"]),
            }
        t = time.perf_counter()
        free = noise_free_mosaics(mosaics, root)
        noise_free = anchor(free, [*references, *excluded], root / "work" / "noise_free", params["anchoring"], logs)
        times["anchor_noise_free"] = time.perf_counter() - t
        for row in noise_free:
            out["anchoring"][str(row["band"])]["error_noise_free"] = float(row["intercept_mjysr"])
        times["total"] = time.perf_counter() - start
        out["times_s"] = {k: round(v, 1) for k, v in times.items()}
        out["params"] = params
        print(json.dumps(out, default=float))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
