"""Subtract a scaled wisp template from a NIRCam exposure (CEERS, Bagley et al. 2023, Sect. 3.1.2).

Wisps are stray light reflected off the secondary-mirror supports onto detectors A3, A4, B3
and B4, strongest in F150W and F200W; their brightness varies between exposures while their
shape does not, so each exposure gets its own scale of a published per-detector, per-filter
template:

1. a "cold" source detection (a high threshold, ``mask_nsigma`` = 5.5 sigma above a local
   background whose box is large enough to follow the wisp, so the wisp itself is not masked)
   masks bright sources; DQ-flagged and non-finite pixels are masked too;
2. the template is smoothed with a Gaussian of ``smooth_sigma_px`` (2 px) for the fit;
3. the 1/f stripes are still in the image (the wisp step runs before destriping) and would
   dominate the fit, so the stripes are projected out of the image AND the template with the
   same linear operator (``stripes = "project"``): weighted means of each amplifier row and of
   each column are removed alternately until they vanish (the two-way fixed-effects projection;
   by the Frisch-Waugh theorem the scale of the projected template in the projected image is
   the scale in a joint fit of wisp and stripes). Galaxy fields (``cross_terms_order`` > 0)
   also project out smooth non-separable terms x^i y^j (a separable disk is absorbed by the
   row and column terms already);
4. the scale ``a`` minimising sigma_MAD^2(image' - a * template') over the fit pixels (the
   wisp footprint plus as many wisp-free pixels) is found on a grid over ``scale_range`` and
   refined by a parabola through the grid minimum and its neighbours; pixels beyond
   ``clip_sigma`` of the residual are dropped and the projection and scan repeated
   (``clip_rounds``: cosmic-ray residuals and snowball wings would bias the row means);
5. ``a`` times the UNSMOOTHED template is subtracted from the unmasked, original image.

Without a template (``--template`` not given or ``none``) the exposure passes through
unchanged with a log line: detectors and filters without published templates are left alone.
The scale goes to the primary header (WISPSCL, WISPTMPL) and to the log.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from wflib import masks, wfutils

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
    "stripes": "project",  # project (joint fit of stripes and wisp), row_medians (per-trial medians), none
    "n_amplifiers": 4,  # amplifier segments along x (NIRCam full frame: 4 x 512 columns)
    "projection_iterations": 60,  # alternating row/column mean removal (stops earlier when converged)
    "cross_terms_order": 0,  # also project out x^i y^j, 1 <= i, j <= order (smooth galaxy light)
    "clip_sigma": 4.0,  # drop pixels beyond this many sigma of the fit residual ...
    "clip_rounds": 2,  # ... and refit, this many times
    "refine": "parabola",  # after the MAD scan: parabola (its minimum) or least_squares (the joint fit)
    "deep_mask_nsigma": 2.0,  # faint-source mask after a first fit (None: the cold mask only)
    "deep_mask_smooth_px": 1.0,
    "deep_mask_dilate_px": 2,
    "snowball_min_jump_px": 20,  # JUMP_DET clusters this large are snowballs (0: do not mask) ...
    "snowball_wing_factor": 3.0,  # ... whose wings, to this x their radius, are left out of the fit
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


def deep_source_mask(image, template, scale, usable, bad, params) -> np.ndarray:
    """Faint sources: ``deep_mask_nsigma`` detection on the image minus a first wisp and stripe model.

    With the wisp (``scale`` x ``template``) and the 1/f stripes (per-amplifier row and column
    medians of what is left) removed, nothing smooth remains to be mistaken for a source, so the
    threshold can be far below the cold mask's; the detection image is smoothed by a Gaussian
    of ``deep_mask_smooth_px`` first, and detections are grown by ``deep_mask_dilate_px``.
    """
    from scipy import ndimage

    n_amp = int(params["n_amplifiers"])
    residual = image - scale * template
    residual = residual - masks.row_segment_medians(residual, ~usable, n_amp)
    residual = residual - masks.row_segment_medians(residual.T, ~usable.T, 1).T
    filled = np.where(bad, 0.0, residual)
    smoothed = ndimage.gaussian_filter(filled, params["deep_mask_smooth_px"])
    norm = ndimage.gaussian_filter((~bad).astype(float), params["deep_mask_smooth_px"])
    smoothed = np.where(norm > 0.5, smoothed / np.maximum(norm, 1e-3), 0.0)
    values = smoothed[usable]
    level = np.median(values)
    sigma = 1.4826 * np.median(np.abs(values - level))
    detected = (smoothed - level > params["deep_mask_nsigma"] * sigma) & ~bad
    labels, n = ndimage.label(detected)
    if n:
        sizes = np.bincount(labels.ravel())
        detected = (sizes >= int(params["mask_npixels"]))[labels] & (labels > 0)
    return ndimage.binary_dilation(detected, iterations=int(params["deep_mask_dilate_px"])) & ~bad


def mad_variance(values: np.ndarray) -> float:
    """sigma_MAD^2: (1.4826 x median absolute deviation)^2."""
    med = np.median(values)
    return float((1.4826 * np.median(np.abs(values - med))) ** 2)


def fit_scale(image: np.ndarray, template: np.ndarray, params: dict, usable=None, pixels=None):
    """Scale minimising sigma_MAD^2(image - a template): grid scan, then a parabola at the minimum.

    1-D arrays of the fit pixels; or 2-D images with ``usable`` and ``pixels`` (flat indices of the
    fit pixels), in which case the row medians of each trial residual are removed first
    (``stripes = "row_medians"``, the simple alternative to the projection). Returns (a, grid, variances).
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
    best = parabola_minimum(grid, variances, params["scale_range"])
    return best, grid, variances


def project_stripes(arrays: np.ndarray, weight: np.ndarray, n_amp: int, iterations: int) -> np.ndarray:
    """``arrays`` (k, ny, nx) minus weighted per-amplifier row means and column means, jointly.

    Alternating projections onto the complement of {row offsets of each amplifier + column
    offsets}: each pass removes the weighted mean of every amplifier row, then of every column,
    until the largest removed mean is below 1e-6 of the arrays' spread. The same operator on
    the image and the template (and any other regressor), so that a least-squares or robust
    fit on the projected arrays is the joint fit with the stripes (Frisch-Waugh). Zero-weight
    pixels are carried along (their projected values follow the offsets of their row and column).
    """
    k, ny, nx = arrays.shape
    n_amp = n_amp if n_amp > 0 and nx % n_amp == 0 else 1
    out = np.array(arrays, dtype=float)
    w = weight.astype(float)
    seg_w = w.reshape(ny, n_amp, nx // n_amp).sum(axis=2)
    col_w = w.sum(axis=0)
    scale = max(float(np.std(out[:, weight])), 1e-30) if weight.any() else 1.0
    for _ in range(int(iterations)):
        seg = (out * w).reshape(k, ny, n_amp, nx // n_amp).sum(axis=3)
        row_means = np.divide(seg, seg_w, out=np.zeros_like(seg), where=seg_w > 0)
        out -= np.repeat(row_means, nx // n_amp, axis=2)
        col = (out * w).sum(axis=1)
        col_means = np.divide(col, col_w, out=np.zeros_like(col), where=col_w > 0)
        out -= col_means[:, None, :]
        if max(np.abs(row_means).max(), np.abs(col_means).max()) < 1e-6 * scale:
            break
    return out


def cross_terms(shape, order: int) -> list[np.ndarray]:
    """Smooth non-separable terms x^i y^j (1 <= i, j <= order) on [-1, 1]^2 coordinates."""
    ny, nx = shape
    y = np.linspace(-1, 1, ny)[:, None]
    x = np.linspace(-1, 1, nx)[None, :]
    return [(x**i) * (y**j) for i in range(1, order + 1) for j in range(1, order + 1)]


def projected_scale(image, template, usable, pixels, params):
    """Scale of ``template`` in ``image`` after projecting stripes (and cross terms) out of both.

    Rounds of: projection with the current weights; MAD scan with a parabola at its minimum
    (cross terms, if any, fitted by least squares at each trial scale); with ``refine =
    least_squares`` the joint least-squares solution on the same pixels (the MAD of a residual
    that is mostly noise responds weakly to a smooth template error: on the simulated deep field
    it scattered by ~10%); clipping of compact outliers (faint sources below the cold mask,
    cosmic-ray residuals, snowball wings): pixels beyond ``clip_sigma`` of the residual minus its
    own smoothed version, so that a smooth residual wisp is never clipped. Returns (a, grid,
    MAD variances, fraction of fit pixels clipped).
    """
    from scipy import ndimage

    n_amp, iters = int(params["n_amplifiers"]), int(params["projection_iterations"])
    extra = cross_terms(image.shape, int(params["cross_terms_order"]))
    weight = usable.copy()
    filled = np.where(usable, image, 0.0)
    clipped = 0.0
    lo, hi = params["scale_range"]
    grid = np.linspace(lo, hi, int(params["scale_steps"]))
    for round_ in range(int(params["clip_rounds"]) + 1):
        proj = project_stripes(np.stack([filled, template, *extra]), weight, n_amp, iters)
        keep = pixels[weight.ravel()[pixels]]
        img = proj[0].ravel()[keep]
        design = np.stack([p.ravel()[keep] for p in proj[1:]], axis=1)

        def residual(a, img=img, design=design):
            r = img - a * design[:, 0]
            if design.shape[1] > 1:
                coef, *_ = np.linalg.lstsq(design[:, 1:], r, rcond=None)
                r = r - design[:, 1:] @ coef
            return r

        variances = np.array([mad_variance(residual(a)) for a in grid])
        scale = parabola_minimum(grid, variances, params["scale_range"])
        coef = np.zeros(len(extra))
        if params["refine"] == "least_squares":
            solution, *_ = np.linalg.lstsq(design, img, rcond=None)
            scale, coef = float(solution[0]), solution[1:]
        elif extra:
            coef, *_ = np.linalg.lstsq(design[:, 1:], img - scale * design[:, 0], rcond=None)
        if round_ == int(params["clip_rounds"]):
            break
        full = proj[0] - scale * proj[1] - (np.tensordot(coef, proj[2:], axes=1) if extra else 0.0)
        w = weight.astype(float)
        smooth = ndimage.gaussian_filter(full * w, 4.0) / np.maximum(ndimage.gaussian_filter(w, 4.0), 1e-3)
        compact = full - smooth
        sigma = 1.4826 * np.median(np.abs(compact[weight] - np.median(compact[weight])))
        new_weight = usable & (np.abs(compact) <= params["clip_sigma"] * sigma)
        clipped = 1.0 - new_weight.ravel()[pixels].sum() / max(usable.ravel()[pixels].sum(), 1)
        if np.array_equal(new_weight, weight):
            break
        weight = new_weight
    return scale, grid, variances, float(clipped)


def parabola_minimum(grid: np.ndarray, variances: np.ndarray, scan_range) -> float:
    """Abscissa of the minimum: the parabola through the grid minimum and its two neighbours."""
    k = int(np.argmin(variances))
    if 0 < k < len(grid) - 1:
        y0, y1, y2 = variances[k - 1 : k + 2]
        denom = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / denom if denom > 0 else 0.0
        return float(grid[k] + np.clip(shift, -1, 1) * (grid[1] - grid[0]))
    log.warning("wisp scale at the edge of the scan range %s: %.3f", list(scan_range), grid[k])
    return float(grid[k])


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


def wisp_scale(image: np.ndarray, bad: np.ndarray, template: np.ndarray, params: dict, jumps=None) -> dict:
    """Fitted scale of ``template`` in ``image`` (same shape, MJy/sr) with the fit's diagnostics.

    ``jumps``: JUMP_DET pixels (DQ); the wings of their large clusters (snowballs, whose diffuse
    halo the jump step leaves unflagged) are left out of the fit.
    """
    from scipy import ndimage

    params = {**DEFAULTS, **params}
    bad = bad | ~np.isfinite(image) | ~np.isfinite(template)
    if jumps is not None and params["snowball_min_jump_px"]:
        bad = bad | masks.cluster_wings(jumps, params["snowball_min_jump_px"], params["snowball_wing_factor"])
    sources = cold_source_mask(image, bad, params)
    usable = ~bad & ~sources
    template_clean = np.where(np.isfinite(template), template, 0.0)
    smooth = ndimage.gaussian_filter(template_clean, params["smooth_sigma_px"], mode="nearest")
    pixels = fit_pixels(smooth, usable, params)
    if pixels.size < 100:
        raise wfutils.InputError(f"only {pixels.size} usable pixels for the wisp fit (too much of the image masked)")
    clipped = 0.0
    stripes = params["stripes"]
    if stripes not in ("project", "row_medians", "none"):
        raise wfutils.InputError(f"wisp_subtract: stripes must be project, row_medians or none, not {stripes!r}")
    deep = np.zeros(image.shape, bool)
    if params["deep_mask_nsigma"] is not None and stripes != "none":
        # first pass with the cold mask, then a deep mask of the faint sources on the image
        # without the fitted wisp and stripes, and the fit again
        scale0 = fit_scale(image, smooth, params, usable=usable, pixels=pixels)[0]
        deep = deep_source_mask(image, smooth, scale0, usable, bad, params)
        usable = usable & ~deep
        pixels = pixels[usable.ravel()[pixels]]
    if stripes == "project":
        scale, grid, variances, clipped = projected_scale(image, smooth, usable, pixels, params)
    elif stripes == "row_medians":
        scale, grid, variances = fit_scale(image, smooth, params, usable=usable, pixels=pixels)
    else:
        scale, grid, variances = fit_scale(image.ravel()[pixels], smooth.ravel()[pixels], params)
    return {
        "scale": scale,
        "fit_pixels": int(pixels.size),
        "clipped_fraction": clipped,
        "masked_source_fraction": float(sources.mean()),
        "deep_masked_fraction": float(deep.mean()),
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
    jumps = (np.asarray(model.dq) & dqflags.pixel["JUMP_DET"]) > 0
    report = wisp_scale(data, bad, template, params, jumps=jumps)
    correction = report["scale"] * np.where(np.isfinite(template), template, 0.0)
    model.data = (data - correction).astype(np.float32)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="calibrated NIRCam exposure (ImageModel FITS, MJy/sr)")
    parser.add_argument("output", help="wisp-subtracted exposure")
    parser.add_argument("--template", default=None, help="wisp template FITS (MJy/sr); absent/none: pass through")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input)
    from stdatamodels.jwst import datamodels

    params = wfutils.parse_params(args.params, DEFAULTS)
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
