"""MIRI off-field background: combine the background exposures of a band and visit into one
image and subtract it from the paired science exposures (PHANGS-JWST Sec. 3.2).

Method. The off-field exposures of one band and one visit (in PHANGS-JWST and in the
synthetic survey, MIRI parallels taken during the NIRCam observations ~7' away) are
stacked pixel by pixel: unusable pixels (DQ) and sources (a smoothed-threshold source mask)
are set aside, each frame's overall level is first brought to the frames' mean in every
detector region (imager, Lyot coronagraph: the per-dither background offsets of ~0.1 MJy/sr
would otherwise widen the per-pixel distribution), then the sigma-clipped median over the
dithers is taken with a strict 1.5 sigma clip (the paper's choice: it keeps residual stars
and galaxies out). Pixels no frame covers are filled from their neighbours. The background
image is subtracted from each science exposure of the band paired with that visit: by
default the off-field visit closest in time (the paper shows time proximity matters more
than position; a gap above ``max_time_gap_hours`` is logged as a warning), or an explicit
map from science to off-field visits, or all off-field visits of the band.

The background's own noise (the mean VAR_POISSON+VAR_RNOISE of the combined frames divided
by their number, times pi/2 for the median) is added to VAR_RNOISE and ERR is recomputed;
``meta.cal_step.bkg_subtract`` is set to COMPLETE. Constant offsets between exposures
are left for ``level_match.py``.

Command line (one band; science exposures positional, off-field exposures after --offfield)::

    python scripts/miri_background.py SCI_cal.fits ... --offfield OFF_cal.fits ... --out-dir DIR
        [--background-dir BKGDIR] [--report pairs.json] [--params JSON] [--log LOG]

(science files first, or end the off-field list with ``--``), writes
``DIR/<science file name>`` (background-subtracted copies), optionally one
``BKGDIR/<visit>_<filter>_bkg.fits`` per off-field group (SCI, VAR, NFRAMES) and a JSON report
of the pairing. ``--params`` keys: see ``DEFAULTS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from wflib import levels_common as lc
from wflib import wfutils

log = logging.getLogger("miri_background")

DEFAULTS = {
    # "closest_in_time": the n_visits off-field visits closest in time to each science exposure;
    # "explicit": the map in "pairs"; "all": every off-field exposure of the band.
    "pairing": "closest_in_time",
    "n_visits": 1,
    # Explicit pairing: {"<science visit_id>": ["<off-field visit_id>", ...]}.
    "pairs": {},
    "clip_sigma": 1.5,
    # One clipping pass: iterating a 1.5-sigma clip on a handful of dithers keeps shrinking the
    # sample (the stack's noise grows to 1.7x the ideal mean for 8 frames, 1.4x with one pass).
    "clip_maxiters": 1,
    # Bring every off-field frame to the frames' mean level per detector region before stacking.
    "normalize_frames": True,
    # Regions for that normalisation, {name: [x0, x1, y0, y1] fractions}; null: the connected
    # science regions of the DQ array (pixels without NON_SCIENCE).
    "regions": None,
    "mask_sources": True,
    "mask_nsigma": 3.0,
    "mask_smooth_px": 1.0,
    "mask_dilate_px": 2,
    "bad_flags": list(lc.DEFAULT_BAD_FLAGS),
    # Fill pixels no frame covers from their neighbours (else they become DO_NOT_USE in the science).
    "fill_holes": True,
    "max_time_gap_hours": 12.0,
}
MEDIAN_VARIANCE_FACTOR = math.pi / 2  # variance of a median relative to a mean (Gaussian, large N)


# --------------------------------------------------------------------------- pure functions
def science_regions(dq: np.ndarray, regions=None, min_pixels: int = 20) -> list[np.ndarray]:
    """Masks of the detector regions whose levels are normalised separately.

    From ``regions`` ({name: fractions}) if given, else the connected groups of pixels not
    flagged NON_SCIENCE (MIRI: the imager and the Lyot coronagraph).
    """
    from scipy import ndimage

    if regions:
        return [lc.region_mask(dq.shape, fractions) for fractions in regions.values()]
    science = (dq & lc.dq_bitmask(["NON_SCIENCE"])) == 0
    labels, n = ndimage.label(science)
    masks = [labels == k for k in range(1, n + 1)]
    return [m for m in masks if m.sum() >= min_pixels] or [np.ones(dq.shape, bool)]


def normalize_frames(cube: np.ndarray, regions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Remove each frame's level difference from the frames' mean, region by region.

    Returns the shifted cube (new array) and the subtracted shifts (n_frames, n_regions).
    """
    out = cube.copy()
    shifts = np.zeros((cube.shape[0], len(regions)))
    for r, region in enumerate(regions):
        levels = np.array([lc.clipped_stats(frame[region], 3.0)[0] for frame in cube])
        if not np.isfinite(levels).any():
            continue
        shifts[:, r] = np.where(np.isfinite(levels), levels - np.nanmean(levels), 0.0)
        for k in range(cube.shape[0]):
            out[k][region] -= shifts[k, r]
    return out, shifts


def combine_background(cube: np.ndarray, clip_sigma: float = 1.5, maxiters: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sigma-clipped median over the frames (axis 0); NaN are ignored.

    Returns (background, number of frames kept per pixel).
    """
    from astropy.stats import sigma_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(
            cube, sigma=clip_sigma, maxiters=maxiters, axis=0, cenfunc="median", stdfunc="std", masked=True
        )
        data = clipped.filled(np.nan)
        background = np.nanmedian(data, axis=0)
    n_used = np.sum(np.isfinite(data), axis=0)
    return background, n_used


def fill_holes(image: np.ndarray, where: np.ndarray, size: int = 5, max_rounds: int = 20) -> np.ndarray:
    """Fill NaN pixels inside ``where`` with the median of their finite neighbours (growing inwards)."""
    from scipy import ndimage

    out = image.copy()
    for _ in range(max_rounds):
        holes = ~np.isfinite(out) & where
        if not holes.any():
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            local = ndimage.generic_filter(out, np.nanmedian, size=size, mode="constant", cval=np.nan)
        out[holes] = local[holes]
    return out


def background_image(frames: list[np.ndarray], variances: list[np.ndarray], dq: np.ndarray, params: dict):
    """Combined off-field background (MJy/sr), its variance, frames used per pixel, masked-pixel fraction.

    ``frames`` have unusable pixels as NaN already; sources are masked here (if enabled),
    levels normalised per region, then the clipped median is taken (Sec. 3.2).
    """
    cube = np.array(frames, dtype=float)
    masked_fraction = 0.0
    regions = science_regions(dq, params["regions"])
    if params["mask_sources"]:
        for k in range(cube.shape[0]):
            mask = lc.source_mask(
                cube[k], params["mask_nsigma"], params["mask_smooth_px"], params["mask_dilate_px"], regions=regions
            )
            masked_fraction += mask.sum() / max(np.isfinite(cube[k]).sum(), 1) / cube.shape[0]
            cube[k][mask] = np.nan
    if params["normalize_frames"] and cube.shape[0] > 1:
        cube, _ = normalize_frames(cube, regions)
    background, n_used = combine_background(cube, params["clip_sigma"], params["clip_maxiters"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NON_SCIENCE pixels are NaN in every frame
        var = np.nanmean(np.array(variances, dtype=float), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_bkg = np.where(n_used > 0, MEDIAN_VARIANCE_FACTOR * var / np.maximum(n_used, 1), np.nan)
    if params["fill_holes"]:
        science = np.zeros(dq.shape, bool)
        for region in regions:
            science |= region
        background = fill_holes(background, science)
        var_bkg = np.where(np.isfinite(var_bkg) | ~np.isfinite(background), var_bkg, np.nanmax(var_bkg))
    return background, var_bkg, n_used, masked_fraction


def pair_visits(science_times: dict, offfield_times: dict, params: dict) -> dict:
    """Map each science exposure (name -> mid time, MJD) to a tuple of off-field visit ids.

    ``offfield_times`` maps off-field visit id -> mid time (MJD) of its exposures.
    """
    visits = sorted(offfield_times)
    if not visits:
        raise wfutils.InputError("no off-field exposures given")
    pairing = params["pairing"]
    out = {}
    for name, (visit, mid) in science_times.items():
        if pairing == "all":
            out[name] = tuple(visits)
        elif pairing == "explicit":
            chosen = params["pairs"].get(visit)
            if not chosen:
                raise wfutils.InputError(f"{name}: science visit {visit} has no entry in the explicit off-field pairs")
            missing = [v for v in chosen if v not in offfield_times]
            if missing:
                raise wfutils.InputError(f"{name}: paired off-field visit(s) {missing} are not among the inputs")
            out[name] = tuple(sorted(chosen))
        elif pairing == "closest_in_time":
            order = sorted(visits, key=lambda v: abs(offfield_times[v] - mid))
            out[name] = tuple(sorted(order[: max(int(params["n_visits"]), 1)]))
        else:
            raise wfutils.InputError(f"pairing must be closest_in_time, explicit or all, got {pairing!r}")
    return out


# --------------------------------------------------------------------------- I/O layer
def read_group(paths, bitmask, role):
    records = [lc.read_jwst_image(p, bitmask, require_instrument="MIRI") for p in paths]
    for rec in records:
        if not np.isfinite(rec.data).any():
            raise wfutils.InputError(f"{rec.path}: {role} exposure has no usable pixel (all NaN or flagged)")
    return records


def variance_of(path) -> np.ndarray:
    """VAR_POISSON + VAR_RNOISE of an exposure (the noise that does not repeat between exposures)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return np.asarray(hdul["VAR_POISSON"].data, float) + np.asarray(hdul["VAR_RNOISE"].data, float)


def subtract_background(path, out_path, background, var_bkg, cfg_hash):
    """Copy of ``path`` minus ``background``; background variance into VAR_RNOISE and ERR."""
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    with datamodels.open(str(path)) as model:
        data = np.asarray(model.data, float)
        lost = np.isfinite(data) & ~np.isfinite(background)
        model.data = (data - background).astype(np.float32)
        var_rn = np.asarray(model.var_rnoise, float) + np.where(np.isfinite(var_bkg), var_bkg, 0.0)
        model.var_rnoise = var_rn.astype(np.float32)
        total = var_rn + np.asarray(model.var_poisson, float) + np.asarray(model.var_flat, float)
        model.err = np.sqrt(total).astype(np.float32)
        if lost.any():
            dq = np.array(model.dq, copy=True)
            dq[lost] |= np.uint32(dqflags.pixel["DO_NOT_USE"])
            model.dq = dq
        model.meta.cal_step.bkg_subtract = "COMPLETE"
        wfutils.save_model(model, out_path, [path], cfg_hash, "miri_background")
    return int(lost.sum())


def write_background(path, background, var_bkg, n_used, inputs, filter_name, cfg_hash):
    from astropy.io import fits

    header = fits.Header({"BUNIT": "MJy/sr", "FILTER": filter_name, "NFRAMES": len(inputs)})
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(background.astype(np.float32), header, name="SCI"),
            fits.ImageHDU(var_bkg.astype(np.float32), name="VAR"),
            fits.ImageHDU(n_used.astype(np.int16), name="NFRAMES"),
        ]
    )
    wfutils.write_hdulist(hdul, path, inputs, cfg_hash, "miri_background")


def run(science_paths, offfield_paths, out_dir, params, background_dir=None, report_path=None, cfg_hash=None):
    bitmask = lc.dq_bitmask(params["bad_flags"])
    science = read_group(science_paths, bitmask, "science")
    offfield = read_group(offfield_paths, bitmask, "off-field")
    filters = {r.filter for r in science} | {r.filter for r in offfield}
    if len(filters) != 1:
        raise wfutils.InputError(f"science and off-field exposures must share one filter, got {sorted(filters)}")
    filter_name = filters.pop()
    shapes = {r.shape for r in science} | {r.shape for r in offfield}
    if len(shapes) != 1:
        raise wfutils.InputError(f"exposures differ in shape {sorted(shapes)}: pair exposures of one subarray")
    for rec in science:
        if (Path(out_dir) / Path(rec.path).name).resolve() == Path(rec.path).resolve():
            raise wfutils.InputError(f"{rec.path}: output would overwrite the input; choose another --out-dir")
    by_visit: dict[str, list] = {}
    for rec in offfield:
        by_visit.setdefault(rec.visit_id or rec.name, []).append(rec)
    off_times = {v: float(np.nanmean([r.mid_time for r in recs])) for v, recs in by_visit.items()}
    sci_times = {r.name: (r.visit_id, r.mid_time) for r in science}
    pairing = pair_visits(sci_times, off_times, params)
    cache = {}
    report = {"filter": filter_name, "method": "off-field clipped median (PHANGS-JWST Sec. 3.2)", "science": []}
    for k, rec in enumerate(science, start=1):
        key = pairing[rec.name]
        if key not in cache:
            frames = [r for v in key for r in by_visit[v]]
            background, var_bkg, n_used, masked = background_image(
                [f.data for f in frames], [variance_of(f.path) for f in frames], frames[0].dq, params
            )
            cache[key] = (background, var_bkg, n_used)
            log.info(
                "off-field visit(s) %s: %d frames, %.1f%% of pixels masked as sources, background median %.4f MJy/sr",
                ",".join(key),
                len(frames),
                100 * masked,
                float(np.nanmedian(background)),
            )
            if background_dir:
                label = "_".join(key) if len(key) <= 3 else f"{key[0]}_plus{len(key) - 1}"
                write_background(
                    Path(background_dir) / f"{label}_{filter_name.lower()}_bkg.fits",
                    background,
                    var_bkg,
                    n_used,
                    [f.path for f in frames],
                    filter_name,
                    cfg_hash,
                )
        background, var_bkg, _ = cache[key]
        gap_h = min(abs(off_times[v] - rec.mid_time) for v in key) * 24.0
        if params["max_time_gap_hours"] is not None and gap_h > params["max_time_gap_hours"]:
            log.warning(
                "%s: closest paired off-field visit is %.1f h away (> %.1f h): MIRI backgrounds vary in time",
                rec.name,
                gap_h,
                params["max_time_gap_hours"],
            )
        lost = subtract_background(rec.path, Path(out_dir) / Path(rec.path).name, background, var_bkg, cfg_hash)
        log.info(
            "%d/%d %s: subtracted the background of visit(s) %s (gap %.2f h)",
            k, len(science), rec.name, ",".join(key), gap_h,
        )  # fmt: skip
        if lost:
            log.warning("%s: %d pixels without background became DO_NOT_USE", rec.name, lost)
        report["science"].append(
            {"exposure": rec.name, "offfield_visits": list(key), "time_gap_hours": gap_h, "pixels_lost": lost}
        )
    if report_path:
        report["parameters"] = params
        wfutils.write_text(json.dumps(report, indent=1) + "\n", report_path)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("science", nargs="+", help="MIRI science cal files of one band")
    parser.add_argument(
        "--offfield", nargs="+", action="extend", required=True, help="MIRI off-field cal files of the same band"
    )
    parser.add_argument("--out-dir", required=True, help="directory for the background-subtracted science copies")
    parser.add_argument("--background-dir", help="write the combined background images here")
    parser.add_argument("--report", help="JSON report of the pairing")
    wfutils.add_run_options(parser, params_help="JSON object of method parameters (keys of DEFAULTS)")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    run(args.science, args.offfield, args.out_dir, params, args.background_dir, args.report, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
