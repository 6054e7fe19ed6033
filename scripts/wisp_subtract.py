"""Subtract a scaled wisp template from a NIRCam exposure (CEERS, Bagley et al. 2023, Sect. 3.1.2).

Wisps are stray light reflected off the secondary-mirror supports onto detectors A3, A4, B3
and B4, strongest in F150W and F200W; their brightness varies between exposures while their
shape does not, so each exposure gets its own scale of a published per-detector, per-filter
template:

1. a "cold" source detection (a high threshold, ``mask_nsigma`` = 5.5 sigma above a local
   background whose box is large enough to follow the wisp, so the wisp itself is not masked)
   masks bright sources; DQ-flagged and non-finite pixels are masked too;
2. the template is smoothed with a Gaussian of ``smooth_sigma_px`` (2 px) for the fit;
3. the scale ``a`` minimising sigma_MAD^2(image - a * smoothed template) over the unmasked
   pixels (after removing the per-amplifier row and the column medians of each trial residual:
   the 1/f stripes are still there, the wisp step runs before destriping; ``row_medians``)
   is found on a grid over ``scale_range`` and refined by a parabola through the grid
   minimum and its neighbours;
4. ``a`` times the UNSMOOTHED template is subtracted from the unmasked, original image.

Without a template (``--template`` not given or ``none``) the exposure passes through
unchanged with a log line: detectors and filters without published templates are left alone.
The scale goes to the primary header (WISPSCL, WISPTMPL) and to the log.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

import masks
import wfutils

log = logging.getLogger("wisp_subtract")

DEFAULTS = {
    "mask_nsigma": 5.5,  # cold detection threshold (sigma above the local background)
    "mask_npixels": 10,  # minimum connected pixels of a masked source
    "mask_dilate_px": 3,  # square dilation of the source mask
    "background_box_px": 16,  # local background box of the detection (small enough to follow the wisp)
    "smooth_sigma_px": 2.0,  # Gaussian smoothing of the template for the fit
    "scale_range": [0.0, 2.0],  # scan range of the template scale
    "scale_steps": 81,  # grid points of the scan
    "min_template_fraction": 0.02,  # fit only pixels where the template exceeds this x its peak ...
    "context_fraction": 1.0,  # ... plus this fraction of that many wisp-free pixels (anchors the level)
    "max_fit_pixels": 400_000,  # regular subsample above this
    "row_medians": True,  # remove 1/f row stripes measured on the wisp-free pixels of each row first
    "n_amplifiers": 4,  # amplifier segments along x (NIRCam full frame: 4 x 512 columns)
}
PASS_THROUGH = ("", "none", "None")


# --------------------------------------------------------------------------- pure functions
def cold_source_mask(image: np.ndarray, bad: np.ndarray, params: dict) -> np.ndarray:
    """Bright sources only: photutils segmentation ``mask_nsigma`` above a local Background2D.

    The background box (``background_box_px``) is small enough to follow the wisp, so the wisp
    is part of the background and is not detected; only compact, bright sources are masked.
    """
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources
    from scipy import ndimage

    ny, nx = image.shape
    box = int(min(params["background_box_px"], ny // 2, nx // 2))
    filled = np.where(bad, np.nanmedian(image[~bad]), image)
    bkg = Background2D(filled, box, mask=bad, filter_size=(3, 3), bkg_estimator=MedianBackground())
    threshold = bkg.background + params["mask_nsigma"] * bkg.background_rms
    segments = detect_sources(np.where(bad, bkg.background, filled), threshold, params["mask_npixels"])
    mask = np.zeros(image.shape, bool) if segments is None else segments.data > 0
    size = int(params["mask_dilate_px"])
    if size > 0:
        mask = ndimage.binary_dilation(mask, np.ones((size, size), bool))
    return mask


def mad_variance(values: np.ndarray) -> float:
    """sigma_MAD^2: (1.4826 x median absolute deviation)^2."""
    med = np.median(values)
    return float((1.4826 * np.median(np.abs(values - med))) ** 2)


def fit_scale(image: np.ndarray, template: np.ndarray, params: dict, usable=None, pixels=None):
    """Scale minimising sigma_MAD^2(image - a template): grid scan, then a parabola at the minimum.

    1-D arrays of the fit pixels; or 2-D images with ``usable`` and ``pixels`` (flat indices of the
    fit pixels), in which case the row medians of each trial residual are removed first (1/f
    stripes, constant along a row of an amplifier). Returns (a, grid, variances).
    """
    lo, hi = params["scale_range"]
    grid = np.linspace(lo, hi, int(params["scale_steps"]))
    if usable is None:
        variances = np.array([mad_variance(image - a * template) for a in grid])
    else:
        n_amp = int(params["n_amplifiers"])
        variances = []
        for a in grid:
            residual = image - a * template
            residual = residual - masks.row_segment_medians(residual, ~usable, n_amp)
            residual = residual - masks.row_segment_medians(residual.T, ~usable.T, 1).T
            variances.append(mad_variance(residual.ravel()[pixels]))
        variances = np.array(variances)
    k = int(np.argmin(variances))
    if 0 < k < len(grid) - 1:
        # parabola through the minimum and its two neighbours
        y0, y1, y2 = variances[k - 1 : k + 2]
        denom = y0 - 2 * y1 + y2
        step = grid[1] - grid[0]
        shift = 0.5 * (y0 - y2) / denom if denom > 0 else 0.0
        best = float(grid[k] + np.clip(shift, -1, 1) * step)
    else:
        log.warning("wisp scale at the edge of the scan range %s: %.3f", params["scale_range"], grid[k])
        best = float(grid[k])
    return best, grid, variances


def fit_pixels(template_smooth: np.ndarray, usable: np.ndarray, params: dict, rng_seed: int = 0) -> np.ndarray:
    """Indices (flat) of the pixels the fit uses: the wisp footprint plus as many wisp-free pixels.

    The wisp covers a fraction of the detector; restricting the MAD to its footprint (and a
    comparable number of pixels outside, which pin the sky level) keeps the scatter of the
    residual wisp from being diluted by the rest of the detector.
    """
    peak = np.nanmax(template_smooth[usable]) if usable.any() else 0.0
    inside = usable & (template_smooth > params["min_template_fraction"] * peak)
    outside = np.flatnonzero(usable & ~inside)
    n_out = int(params["context_fraction"] * inside.sum())
    if n_out < outside.size:
        outside = outside[np.linspace(0, outside.size - 1, n_out).astype(int)] if n_out > 0 else outside[:0]
    chosen = np.concatenate([np.flatnonzero(inside), outside])
    if chosen.size > params["max_fit_pixels"]:
        chosen = chosen[np.linspace(0, chosen.size - 1, int(params["max_fit_pixels"])).astype(int)]
    return np.sort(chosen)


def wisp_scale(image: np.ndarray, bad: np.ndarray, template: np.ndarray, params: dict) -> dict:
    """Fitted scale of ``template`` in ``image`` (same shape, MJy/sr) with the fit's diagnostics."""
    from scipy import ndimage

    params = {**DEFAULTS, **params}
    bad = bad | ~np.isfinite(image) | ~np.isfinite(template)
    sources = cold_source_mask(image, bad, params)
    usable = ~bad & ~sources
    template_clean = np.where(np.isfinite(template), template, 0.0)
    smooth = ndimage.gaussian_filter(template_clean, params["smooth_sigma_px"], mode="nearest")
    pixels = fit_pixels(smooth, usable, params)
    if pixels.size < 100:
        raise wfutils.InputError(f"only {pixels.size} usable pixels for the wisp fit (too much of the image masked)")
    if params["row_medians"]:
        scale, grid, variances = fit_scale(image, smooth, params, usable=usable, pixels=pixels)
    else:
        scale, grid, variances = fit_scale(image.ravel()[pixels], smooth.ravel()[pixels], params)
    return {
        "scale": scale,
        "fit_pixels": int(pixels.size),
        "masked_source_fraction": float(sources.mean()),
        "mad_variance_before": float(variances[np.argmin(np.abs(grid))]),
        "mad_variance_after": float(variances.min()),
    }


# --------------------------------------------------------------------------- FITS I/O
def read_template(path, shape) -> np.ndarray:
    """Template image (SCI, or the primary HDU) of the exposure's shape; a clear error otherwise."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: wisp template does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            hdu = hdul["SCI"] if "SCI" in names else hdul[0]
            data = None if hdu.data is None else np.asarray(hdu.data, dtype=float)
            bunit = hdu.header.get("BUNIT")
    except Exception as exc:  # astropy raises many types for damaged files
        raise wfutils.InputError(f"{path}: not a readable FITS wisp template ({type(exc).__name__}: {exc})") from exc
    if data is None or data.ndim != 2:
        raise wfutils.InputError(f"{path}: wisp template must be a 2-D image in SCI or the primary HDU")
    if data.shape != tuple(shape):
        raise wfutils.InputError(f"{path}: wisp template shape {data.shape} differs from the exposure's {tuple(shape)}")
    if bunit not in (None, "MJy/sr"):
        raise wfutils.InputError(f"{path}: wisp template unit is {bunit!r}, expected 'MJy/sr'")
    return data


def subtract_wisp(model, template: np.ndarray, params: dict) -> dict:
    """Fit and subtract the wisp in place on a jwst ImageModel; returns the fit report."""
    from stdatamodels.jwst.datamodels import dqflags

    data = np.asarray(model.data, dtype=float)
    bad = (np.asarray(model.dq) & dqflags.pixel["DO_NOT_USE"]) > 0
    report = wisp_scale(data, bad, template, params)
    correction = report["scale"] * np.where(np.isfinite(template), template, 0.0)
    model.data = (data - correction).astype(np.float32)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="calibrated NIRCam exposure (ImageModel FITS, MJy/sr)")
    parser.add_argument("output", help="wisp-subtracted exposure")
    parser.add_argument("--template", default=None, help="wisp template FITS (MJy/sr); absent/none: pass through")
    parser.add_argument("--params", default="{}", help="JSON overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--config-hash", default=None)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input)
    from stdatamodels.jwst import datamodels

    params = json.loads(args.params)
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown wisp_subtract parameter(s): {', '.join(sorted(unknown))}")
    params = {**DEFAULTS, **params}
    with datamodels.open(args.input) as model:
        if not isinstance(model, datamodels.ImageModel):
            raise wfutils.InputError(f"{args.input}: expected a 2-D ImageModel (cal/rate), got {type(model).__name__}")
        name = Path(args.input).name
        inputs = [args.input]
        cards = []
        if args.template in PASS_THROUGH or args.template is None:
            log.info("%s: no wisp template for %s %s: passed through unchanged", name,
                     model.meta.instrument.detector, model.meta.instrument.filter)  # fmt: skip
            cards.append(("WISPSCL", 0.0, "wisp template scale (no template)"))
        else:
            template = read_template(args.template, model.data.shape)
            report = subtract_wisp(model, template, params)
            inputs.append(args.template)
            log.info(
                "%s: wisp scale %.4f from %d pixels (%.1f%% masked as sources); MAD variance %.4g -> %.4g",
                name, report["scale"], report["fit_pixels"], 100 * report["masked_source_fraction"],
                report["mad_variance_before"], report["mad_variance_after"],
            )  # fmt: skip
            cards += [
                ("WISPSCL", round(report["scale"], 6), "wisp template scale subtracted"),
                ("WISPTMPL", Path(args.template).name[:68], "wisp template"),
            ]
        wfutils.save_model(model, args.output, inputs, args.config_hash, "wisp_subtract", cards)


if __name__ == "__main__":
    wfutils.run_cli(main)
