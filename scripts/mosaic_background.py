"""Tiered background subtraction of deep-field mosaics (CEERS, Bagley et al. 2023, Sect. 3.3.3, Fig. 7).

Residual large-scale background (scattered light, wisp residuals) is removed in three stages:

1. **First estimate** (per band): a rough background with photutils ``Background2D``
   (``rough_box_px`` boxes, 3x3 filter, biweight location, 3-sigma clip, boxes more than
   90% masked excluded); the robust RMS (biweight scale) of the image minus it; pixels more
   than ``bright_nsigma`` (5) x RMS above it masked; the ring median (inner radius
   ``ring_radius_px`` = 80 px = 2.4", width 4 px; masked pixels left out) of the masked image
   is the first estimate.  The ring median is evaluated
   on ``ring_binning`` x ``ring_binning`` block medians (auto: the ring holds about
   ``ring_max_pixels`` blocks) and interpolated back -- the paper's 2.4" ring on the full
   grid would cost ~2000 pixels per output pixel.
2. **Tiered source mask** (per band, then merged): the image minus the first estimate is
   smoothed with Gaussians of decreasing width (sigma 25, 15, 5, 2 px; normalised
   convolution that leaves out pixels masked so far); connected regions (8-connected,
   photutils ``detect_sources``) of at least 15, 10, 3, 1 px above ``nsigma`` (1.5) x the
   robust RMS of the unsmoothed residual (the photutils ``detect_threshold`` convention)
   are masked and dilated with circular top-hats of radius 33, 25, 21, 19 px.  Bit ``k`` of
   the mask is tier ``k + 1`` (1 = most extended).  The masks of all bands of the target
   (and of pixel-aligned HST-like images when given) are OR-ed on the finest grid into one
   mask used for every band; a coarser band uses a pixel as masked when any of its fine
   pixels is.
3. **Final background** (per band): ``Background2D`` on the original image with the merged
   mask (box ``box_px`` = 10 px, 5x5 filter, biweight location, 3-sigma clip, exclude 90%,
   scipy-zoom cubic-spline interpolation -- photutils 3's only interpolator, the former
   ``BkgZoomInterpolator``); subtracted.

Pixel parameters are given for 0.03"/px (``reference_pixel_scale_arcsec``) and scaled to
the band's pixel scale (lengths by 0.03/scale, minimum areas by its square; the 5x5 and 3x3
filters count boxes and are not scaled), so a 0.062"/px long-wavelength mosaic uses half the
pixel radii.

Command lines (one call per job)::

    python scripts/mosaic_background.py tiers MOSAIC_i2d.fits OUT_tiers.fits [--params JSON]
    python scripts/mosaic_background.py merge TIERS.fits ... --out MASK.fits
    python scripts/mosaic_background.py subtract MOSAIC_i2d.fits OUT_i2d.fits --mask MASK.fits
        [--hdrtab EXPOSURE.fits ...] [--qa-png QA.png] [--params JSON]

``subtract`` writes an ImageModel FITS with SCI_BKSUB (background-subtracted), SCI (as
input), ERR, DQ, CON, WHT, VAR_POISSON, VAR_RNOISE, VAR_FLAT, BKGD (the model), BKGMASK
(merged tier bits on this band's grid) and HDRTAB (jwst ``ModelBlender`` table of the input
exposures' metadata), the CEERS release layout (their Appendix A).  ``--log LOG`` everywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("mosaic_background")

DEFAULTS = {
    "reference_pixel_scale_arcsec": 0.03,  # pixel parameters below are for this scale
    # stage 1: rough background, bright-pixel mask, ring median
    "rough_box_px": 100,
    "rough_filter_size": 3,
    "clip_sigma": 3.0,
    "exclude_percentile": 90.0,
    "bright_nsigma": 5.0,
    "ring_radius_px": 80.0,  # 2.4" at 0.03"/px
    "ring_width_px": 4.0,
    "ring_binning": 0,  # 0: automatic (about ring_max_pixels blocks on the ring)
    "ring_max_pixels": 150,
    # stage 2: tiers (sigma of the Gaussian, minimum area, dilation radius; pixels)
    "tiers": [
        {"sigma": 25.0, "npixels": 15, "dilate_radius": 33.0},
        {"sigma": 15.0, "npixels": 10, "dilate_radius": 25.0},
        {"sigma": 5.0, "npixels": 3, "dilate_radius": 21.0},
        {"sigma": 2.0, "npixels": 1, "dilate_radius": 19.0},
    ],
    "nsigma": 1.5,
    # stage 3: final background
    "box_px": 10,
    "filter_size": 5,
    "min_box_px": 3,  # scaled boxes are never smaller than this
}
STAT_SAMPLES = 2_000_000  # robust statistics use a regular subsample of at most this many pixels


# --------------------------------------------------------------------------- parameters and grids
def scaled_params(params: dict, pixel_scale: float) -> dict:
    """Pixel parameters converted from ``reference_pixel_scale_arcsec`` to ``pixel_scale`` (arcsec)."""
    p = {**DEFAULTS, **params}
    f = float(p["reference_pixel_scale_arcsec"]) / float(pixel_scale)
    out = dict(p)
    out["scale_factor"] = f
    out["rough_box_px"] = max(int(p["min_box_px"]), int(round(p["rough_box_px"] * f)))
    out["box_px"] = max(int(p["min_box_px"]), int(round(p["box_px"] * f)))
    out["ring_radius_px"] = p["ring_radius_px"] * f
    out["ring_width_px"] = max(1.0, p["ring_width_px"] * f)
    out["tiers"] = [
        {
            "sigma": t["sigma"] * f,
            "npixels": max(1, int(round(t["npixels"] * f * f))),
            "dilate_radius": t["dilate_radius"] * f,
        }
        for t in p["tiers"]
    ]
    return out


def grid_multiple(fine_shape, coarse_shape) -> int:
    """Integer factor m with fine = m x coarse (the common grid of a target); error otherwise."""
    ratios = {fine_shape[0] / coarse_shape[0], fine_shape[1] / coarse_shape[1]}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        raise wfutils.InputError(f"grids {tuple(coarse_shape)} and {tuple(fine_shape)} are not integer multiples")
    return int(next(iter(ratios)))


def to_fine(bits: np.ndarray, m: int) -> np.ndarray:
    """A coarse mask on the m-times finer grid (each coarse pixel -> m x m fine pixels)."""
    return bits if m == 1 else np.repeat(np.repeat(bits, m, axis=0), m, axis=1)


def to_coarse(bits: np.ndarray, m: int) -> np.ndarray:
    """OR of the bits of each m x m block: a coarse pixel is masked when any of its fine pixels is."""
    if m == 1:
        return bits
    ny, nx = bits.shape[0] // m, bits.shape[1] // m
    return np.bitwise_or.reduce(np.bitwise_or.reduce(bits[: ny * m, : nx * m].reshape(ny, m, nx, m), axis=3), axis=1)


def merge_masks(masks_by_scale) -> np.ndarray:
    """OR of tier-bit masks given as (bits, pixel_scale) on one grid family, on the finest grid."""
    finest = min(masks_by_scale, key=lambda item: item[1])
    shape = finest[0].shape
    merged = np.zeros(shape, np.uint8)
    for bits, _ in masks_by_scale:
        merged |= to_fine(bits.astype(np.uint8), grid_multiple(shape, bits.shape))
    return merged


# --------------------------------------------------------------------------- robust statistics
def _sample(values: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    if values.size > STAT_SAMPLES:
        values = values[:: int(math.ceil(values.size / STAT_SAMPLES))]
    return values


def robust_center_scale(values: np.ndarray, clip_sigma: float = 3.0) -> tuple[float, float]:
    """(biweight location, biweight scale) of the finite values after a ``clip_sigma`` clip."""
    from astropy.stats import biweight_location, biweight_scale, sigma_clip

    v = _sample(np.asarray(values, np.float64))
    if v.size < 10:
        return math.nan, math.nan
    v = sigma_clip(v, sigma=clip_sigma, maxiters=5, masked=False)
    return float(biweight_location(v)), float(biweight_scale(v))


# --------------------------------------------------------------------------- stage 1
def background2d(data, valid, mask, box: int, filter_size: int, params: dict) -> np.ndarray:
    """photutils ``Background2D`` with biweight location, sigma clipping and box exclusion (Fig. 7)."""
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, BiweightLocationBackground

    ny, nx = data.shape
    box = int(min(box, ny, nx))
    filt = int(filter_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-masked boxes and NaN slices are expected
        bkg = Background2D(
            np.where(valid, data, 0.0).astype(np.float32),
            box,
            mask=None if mask is None else (mask & valid),
            coverage_mask=~valid,
            fill_value=np.nan,
            exclude_percentile=float(params["exclude_percentile"]),
            filter_size=(filt, filt),
            sigma_clip=SigmaClip(sigma=float(params["clip_sigma"]), maxiters=10),
            bkg_estimator=BiweightLocationBackground(),
        )
        background = bkg.background
    return np.asarray(background, np.float32)


def block_reduce_nanmedian(image: np.ndarray, b: int) -> np.ndarray:
    """NaN-ignoring median of each b x b block (edges padded with NaN)."""
    ny, nx = image.shape
    by, bx = math.ceil(ny / b), math.ceil(nx / b)
    padded = np.full((by * b, bx * b), np.nan, np.float32)
    padded[:ny, :nx] = image
    out = np.empty((by, bx), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for j0 in range(0, by, 256):
            blocks = padded[j0 * b : (j0 + 256) * b].reshape(-1, b, bx, b).transpose(0, 2, 1, 3)
            out[j0 : j0 + 256] = np.nanmedian(blocks.reshape(blocks.shape[0], bx, b * b), axis=2)
    return out


def ring_footprint(radius: float, width: float) -> np.ndarray:
    half = int(math.ceil(radius + width))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    rr = np.hypot(xx, yy)
    return (rr >= radius) & (rr <= radius + width)


def ring_nanmedian(image: np.ndarray, footprint: np.ndarray, chunk_rows: int = 64) -> np.ndarray:
    """NaN-ignoring median over a ring footprint at every pixel (NaN outside the image and where the ring is empty)."""
    half = footprint.shape[0] // 2
    ny, nx = image.shape
    padded = np.full((ny + 2 * half, nx + 2 * half), np.nan, np.float32)
    padded[half : half + ny, half : half + nx] = image
    offsets = np.argwhere(footprint)
    out = np.empty((ny, nx), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for y0 in range(0, ny, chunk_rows):
            y1 = min(ny, y0 + chunk_rows)
            stack = np.empty((len(offsets), y1 - y0, nx), np.float32)
            for k, (dy, dx) in enumerate(offsets):
                stack[k] = padded[y0 + dy : y1 + dy, dx : dx + nx]
            out[y0:y1] = np.nanmedian(stack, axis=0)
    return out


def upsample(coarse: np.ndarray, b: int, shape) -> np.ndarray:
    """Bilinear interpolation of block values (block centres) back to the full grid."""
    from scipy.ndimage import map_coordinates

    ny, nx = shape
    yc = (np.arange(ny) + 0.5) / b - 0.5
    xc = (np.arange(nx) + 0.5) / b - 0.5
    out = np.empty(shape, np.float32)
    for y0 in range(0, ny, 1024):
        yy, xx = np.meshgrid(yc[y0 : y0 + 1024], xc, indexing="ij")
        out[y0 : y0 + 1024] = map_coordinates(coarse, [yy, xx], order=1, mode="nearest")
    return out


def first_estimate(data: np.ndarray, valid: np.ndarray, p: dict) -> tuple[np.ndarray, dict]:
    """Stage 1 (Fig. 7, top): ring median of the image with pixels > bright_nsigma x RMS above a
    rough Background2D left out (NaN-ignoring), evaluated on block medians."""
    rough = background2d(data, valid, None, p["rough_box_px"], p["rough_filter_size"], p)
    residual = np.where(valid, data - rough, np.nan).astype(np.float32)
    centre, rms = robust_center_scale(residual, p["clip_sigma"])
    with np.errstate(invalid="ignore"):
        bright = residual > centre + p["bright_nsigma"] * rms
    del residual
    masked = np.where(valid & ~bright, data, np.nan).astype(np.float32)
    ring_pixels = math.pi * ((p["ring_radius_px"] + p["ring_width_px"]) ** 2 - p["ring_radius_px"] ** 2)
    b = int(p["ring_binning"]) or max(1, int(math.floor(math.sqrt(ring_pixels / p["ring_max_pixels"]))))
    coarse = block_reduce_nanmedian(masked, b) if b > 1 else masked
    ring = ring_nanmedian(coarse, ring_footprint(p["ring_radius_px"] / b, max(p["ring_width_px"] / b, 1.0)))
    # where the ring saw no valid pixel (far outside the footprint) the rough background stands in
    rough_coarse = block_reduce_nanmedian(np.where(valid, rough, np.nan), b) if b > 1 else rough
    ring = np.where(np.isfinite(ring), ring, rough_coarse)
    ring = np.where(np.isfinite(ring), ring, np.nanmedian(rough[valid])).astype(np.float32)
    estimate = upsample(ring, b, data.shape) if b > 1 else ring
    stats = {"rough_rms": rms, "bright_fraction": float(bright.sum() / max(valid.sum(), 1)), "ring_binning": b}
    return np.where(valid, estimate, np.nan).astype(np.float32), stats


# --------------------------------------------------------------------------- stage 2
def normalized_smooth(image: np.ndarray, usable: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that leaves out unusable pixels (normalised convolution); NaN where
    less than 10% of the kernel weight is usable.  Kernels wider than 10 px run on block sums
    (binning sigma // 5) and are interpolated back."""
    from scipy.ndimage import gaussian_filter

    w = usable.astype(np.float32)
    d = np.where(usable, image, 0.0).astype(np.float32)
    b = max(1, int(sigma // 5))
    ny, nx = image.shape
    if b > 1 and min(ny, nx) >= 8 * b:
        by, bx = math.ceil(ny / b), math.ceil(nx / b)

        def blocks(a):
            padded = np.zeros((by * b, bx * b), np.float32)
            padded[:ny, :nx] = a
            return padded.reshape(by, b, bx, b).sum(axis=(1, 3))

        num = gaussian_filter(blocks(d), sigma / b, mode="constant", truncate=3.0)
        den = gaussian_filter(blocks(w), sigma / b, mode="constant", truncate=3.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            small = np.where(den > 0.1 * b * b, num / den, np.nan).astype(np.float32)
        return upsample(small, b, (ny, nx))
    num = gaussian_filter(d, sigma, mode="constant", truncate=3.0)
    den = gaussian_filter(w, sigma, mode="constant", truncate=3.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0.1, num / den, np.nan).astype(np.float32)


def dilate_disk(mask: np.ndarray, radius: float, strip: int = 1024) -> np.ndarray:
    """Binary dilation with a disk of ``radius`` px (distance transform, in row strips)."""
    from scipy.ndimage import distance_transform_edt

    if radius <= 0 or not mask.any():
        return mask.copy()
    ny = mask.shape[0]
    margin = int(math.ceil(radius)) + 1
    out = np.zeros_like(mask, dtype=bool)
    for y0 in range(0, ny, strip):
        y1 = min(ny, y0 + strip)
        a0, a1 = max(0, y0 - margin), min(ny, y1 + margin)
        part = mask[a0:a1]
        if not part.any():
            continue
        dist = distance_transform_edt(~part)
        out[y0:y1] = dist[y0 - a0 : y1 - a0] <= radius
    return out


def tier_mask(diff: np.ndarray, valid: np.ndarray, p: dict) -> tuple[np.ndarray, list[dict]]:
    """Stage 2 on one band: uint8 tier bits (bit k = tier k + 1) and per-tier statistics."""
    from photutils.segmentation import detect_sources

    bits = np.zeros(diff.shape, np.uint8)
    masked = ~valid
    report = []
    for k, tier in enumerate(p["tiers"]):
        usable = ~masked
        centre, rms = robust_center_scale(diff[usable], p["clip_sigma"])
        threshold = centre + p["nsigma"] * rms
        smoothed = normalized_smooth(diff, usable, tier["sigma"])
        detect_mask = ~usable | ~np.isfinite(smoothed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            segm = detect_sources(np.where(detect_mask, 0.0, smoothed), threshold, tier["npixels"], mask=detect_mask)
        found = np.zeros(diff.shape, bool) if segm is None else segm.data > 0
        n_sources = 0 if segm is None else int(segm.n_labels)
        grown = dilate_disk(found, tier["dilate_radius"]) & valid
        bits[grown] |= np.uint8(1 << k)
        masked = masked | grown
        report.append(
            {
                "tier": k + 1,
                "sigma_px": tier["sigma"],
                "threshold": threshold,
                "sources": n_sources,
                "masked_fraction": float(grown.sum() / max(valid.sum(), 1)),
            }
        )
    return bits, report


def band_tiers(data: np.ndarray, valid: np.ndarray, params: dict, pixel_scale: float):
    """Stages 1 and 2 of one band: (tier bits, first estimate, statistics)."""
    p = scaled_params(params, pixel_scale)
    estimate, stats = first_estimate(data, valid, p)
    bits, tiers = tier_mask(np.where(valid, data - estimate, np.nan), valid, p)
    stats["tiers"] = tiers
    stats["masked_fraction"] = float(((bits > 0) & valid).sum() / max(valid.sum(), 1))
    stats["scale_factor"] = p["scale_factor"]
    return bits, estimate, stats


# --------------------------------------------------------------------------- stage 3
def final_background(data: np.ndarray, valid: np.ndarray, mask_bits: np.ndarray, params: dict, pixel_scale: float):
    """Stage 3: Background2D of the original image with the merged tier mask (box 10 px, 5x5 filter)."""
    p = scaled_params(params, pixel_scale)
    background = background2d(data, valid, mask_bits > 0, p["box_px"], p["filter_size"], p)
    return np.where(valid, background, np.nan).astype(np.float32)


def subtract_background(data, valid, mask_bits, params, pixel_scale):
    """(background-subtracted image, background model) of one band with the merged mask."""
    background = final_background(data, valid, mask_bits, params, pixel_scale)
    return np.where(valid, data - background, np.nan).astype(np.float32), background


# --------------------------------------------------------------------------- FITS I/O
def read_image(path):
    """(SCI as float32, valid pixels, pixel scale arcsec, SCI header) of a mosaic or HST-like image.

    Valid: finite SCI and, where a WHT extension exists, positive weight.
    """
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    if not Path(path).exists():
        raise wfutils.InputError(f"{path}: file does not exist")
    with fits.open(path) as hdul:
        names = {h.name for h in hdul}
        hdu = hdul["SCI"] if "SCI" in names else hdul[0]
        if hdu.data is None or hdu.data.ndim != 2:
            raise wfutils.InputError(f"{path}: no 2-D SCI (or primary) image")
        data = np.asarray(hdu.data, np.float32)
        header = hdu.header.copy()
        valid = np.isfinite(data)
        if "WHT" in names and hdul["WHT"].data is not None:
            valid &= np.asarray(hdul["WHT"].data) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header).celestial
    if not wcs.has_celestial:
        raise wfutils.InputError(f"{path}: SCI header has no celestial WCS")
    scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs))) * 3600.0)
    if not valid.any():
        raise wfutils.InputError(f"{path}: no valid pixel (SCI all NaN or WHT all zero)")
    return data, valid, scale, header


def image_hdu(array, header, name, pixel_scale=None):
    from astropy.io import fits
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cards = WCS(header).celestial.to_header()
    hdu = fits.ImageHDU(array, cards, name=name)
    if pixel_scale:
        hdu.header["PIXSCALE"] = (pixel_scale, "[arcsec] pixel scale")
    return hdu


def write_tiers(path, bits, header, pixel_scale, stats, inputs, cfg_hash):
    from astropy.io import fits

    hdu = image_hdu(bits, header, "BKGMASK", pixel_scale)
    hdu.header["TIERBITS"] = ("bit k = tier k+1", "1 = most extended sources")
    hdu.header["MASKFRAC"] = (stats["masked_fraction"], "masked fraction of valid pixels")
    hdu.header["SCALEFAC"] = (stats["scale_factor"], "pixel parameters x this (0.03/scale)")
    wfutils.write_hdulist(fits.HDUList([fits.PrimaryHDU(), hdu]), path, inputs, cfg_hash, "mosaic_background_tiers")


def read_mask(path):
    """(BKGMASK tier bits, its header) of a ``tiers`` or ``merge`` output."""
    from astropy.io import fits

    if not Path(path).exists():
        raise wfutils.InputError(f"{path}: mask file does not exist")
    with fits.open(path) as hdul:
        if "BKGMASK" not in {h.name for h in hdul}:
            raise wfutils.InputError(f"{path}: no BKGMASK extension")
        return np.asarray(hdul["BKGMASK"].data, np.uint8), hdul["BKGMASK"].header.copy()


def mask_for_band(mask_bits: np.ndarray, band_shape, path) -> np.ndarray:
    """The merged (finest-grid) mask on a band's grid."""
    try:
        return to_coarse(mask_bits, grid_multiple(mask_bits.shape, band_shape))
    except wfutils.InputError as exc:
        raise wfutils.InputError(f"{path}: mask grid {mask_bits.shape} does not fit the band's {band_shape}") from exc


def header_table_model(model, exposures):
    """Add HDRTAB (jwst ModelBlender: one row of metadata per input exposure) to ``model``."""
    from jwst.model_blender import ModelBlender
    from stdatamodels.jwst import datamodels

    blender = ModelBlender()
    for path in exposures:
        with datamodels.open(str(path)) as exposure:
            blender.accumulate(exposure)
    # blended into a scratch model: the mosaic keeps its own metadata, only the table is taken
    scratch = datamodels.ImageModel()
    blender.finalize_model(scratch)
    model.add_schema_entry("hdrtab", scratch.schema["properties"]["hdrtab"])
    model.hdrtab = scratch.hdrtab


def add_extension(model, name, array, dtype, title):
    model.add_schema_entry(name.lower(), {"title": title, "fits_hdu": name, "datatype": dtype, "ndim": 2})
    setattr(model, name.lower(), array)


def write_bksub(src, dst, background, bits, exposures, stats, cfg_hash, inputs):
    """The CEERS release layout (Appendix A) as an ImageModel with extra extensions."""
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    with datamodels.open(str(src)) as model:
        out = model.copy()
    sci = np.asarray(out.data, np.float32)
    valid = np.isfinite(background)
    add_extension(
        out,
        "SCI_BKSUB",
        np.where(valid, sci - background, np.nan).astype(np.float32),
        "float32",
        "background-subtracted science image (MJy/sr)",
    )
    add_extension(out, "BKGD", background.astype(np.float32), "float32", "subtracted background model (MJy/sr)")
    add_extension(out, "BKGMASK", bits.astype(np.uint8), "uint8", "tiered source mask, bit k = tier k+1")
    if out.dq is None or not np.any(out.dq):
        no_data = dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["NON_SCIENCE"]
        out.dq = np.where(valid, 0, no_data).astype(np.uint32)
    if exposures:
        header_table_model(out, exposures)
    cards = [
        ("BKGSUB", True, "tiered background subtracted (SCI_BKSUB)"),
        ("BKGMETH", "CEERS-tiered", "CEERS Bagley+2023 Sect. 3.3.3"),
        ("BKGMASKF", stats["masked_fraction"], "merged mask fraction of valid pixels"),
        ("BKGMED", stats["background_median"], "[MJy/sr] median of BKGD"),
        ("BKGRMS", stats["background_rms"], "[MJy/sr] robust RMS of BKGD"),
        ("BKGBOX", stats["box_px"], "[px] final Background2D box"),
        ("BKGSCALE", stats["scale_factor"], "pixel parameters x this (0.03/scale)"),
    ]
    wfutils.save_model(out, dst, inputs, cfg_hash, "mosaic_background", cards)
    add_wcs_to_extensions(dst)
    out.close()


def add_wcs_to_extensions(path):
    """Copy the SCI celestial WCS into the headers of the extra image extensions (DS9 shows them on the sky).

    Header edits only (data untouched); the ASDF tree's FITS hash is refreshed like correlated_noise does.
    """
    import re

    from astropy.io import fits
    from astropy.wcs import WCS
    from stdatamodels.fits_support import fits_hash

    with fits.open(path, mode="update") as hdul:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cards = WCS(hdul["SCI"].header).celestial.to_header()
        for name in ("SCI_BKSUB", "BKGD", "BKGMASK", "DQ", "ERR", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"):
            if name in {h.name for h in hdul}:
                hdul[name].header.update(cards)
                if name != "BKGMASK" and name != "DQ" and name != "WHT":
                    hdul[name].header["BUNIT"] = "MJy/sr" if not name.startswith("VAR") else "(MJy/sr)**2"
        hdul.flush()
        column = hdul["ASDF"].columns[0].name
        text = bytes(hdul["ASDF"].data[column][0])
        new = re.sub(rb"_fits_hash: [0-9a-f]{64}", b"_fits_hash: " + fits_hash(hdul).encode(), text)
        hdul["ASDF"].data[column][0][:] = np.frombuffer(new, dtype=np.uint8)


def plot_qa(path, sci, background, bksub, bits, valid, title):
    """QA PNG: SCI, BKGD, SCI_BKSUB at the same stretch and the tier mask (CEERS Fig. 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, int(math.ceil(max(sci.shape) / 1200)))
    show = np.s_[::step, ::step]
    _, rms = robust_center_scale(bksub[valid], 3.0)
    med = float(np.nanmedian(background[valid]))
    fig, axes = plt.subplots(1, 4, figsize=(18, 5))
    panels = [
        (sci[show], "SCI", med - 3 * rms, med + 6 * rms),
        (background[show], "BKGD", None, None),
        (bksub[show], "SCI_BKSUB", -3 * rms, 6 * rms),
    ]
    for ax, (image, name, lo, hi) in zip(axes, panels, strict=False):
        im = ax.imshow(image, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[3].imshow(np.where(valid, bits, np.nan)[show], origin="lower", cmap="viridis", interpolation="nearest")
    axes[3].set_title("BKGMASK (tier bits)")
    fig.suptitle(title)
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- commands
def command_tiers(args, params):
    data, valid, scale, header = read_image(args.input)
    bits, _, stats = band_tiers(data, valid, params, scale)
    tiers = "; ".join(
        f"tier {t['tier']}: {t['sources']} sources, {100 * t['masked_fraction']:.1f}%" for t in stats["tiers"]
    )
    log.info(
        '%s: %.3f"/px (parameters x %.3f), ring binning %d, %.1f%% of valid pixels masked (%s)',
        args.input,
        scale,
        stats["scale_factor"],
        stats["ring_binning"],
        100 * stats["masked_fraction"],
        tiers,
    )
    write_tiers(args.output, bits, header, scale, stats, [args.input], args.config_hash)


def command_merge(args, params):
    items, header = [], None
    for path in args.tiers:
        bits, hdr = read_mask(path)
        scale = float(hdr.get("PIXSCALE", 0.0))
        if scale <= 0:
            raise wfutils.InputError(f"{path}: BKGMASK header lacks PIXSCALE")
        items.append((bits, scale))
        if header is None or scale < header.get("PIXSCALE", np.inf):
            header = hdr
    try:
        merged = merge_masks(items)
    except wfutils.InputError as exc:
        raise wfutils.InputError(f"{', '.join(args.tiers)}: {exc}") from exc
    stats = {"masked_fraction": float((merged > 0).mean()), "scale_factor": float(header.get("SCALEFAC", 1.0))}
    log.info("merged %d masks on a %s grid: %.1f%% masked", len(items), merged.shape, 100 * stats["masked_fraction"])
    write_tiers(args.out, merged, header, float(header["PIXSCALE"]), stats, args.tiers, args.config_hash)


def command_subtract(args, params):
    wfutils.check_image_file(args.input, extensions=("SCI", "ERR", "WHT"))
    data, valid, scale, _ = read_image(args.input)
    merged, _ = read_mask(args.mask)
    bits = mask_for_band(merged, data.shape, args.mask)
    if not (bits == 0)[valid].any():
        raise wfutils.InputError(f"{args.input}: the source mask {args.mask} leaves no source-free pixel")
    bksub, background = subtract_background(data, valid, bits, params, scale)
    _, bkg_rms = robust_center_scale(background[valid])
    p = scaled_params(params, scale)
    stats = {
        "masked_fraction": float((bits > 0)[valid].sum() / valid.sum()),
        "background_median": float(np.nanmedian(background[valid])),
        "background_rms": bkg_rms,
        "box_px": p["box_px"],
        "scale_factor": p["scale_factor"],
    }
    log.info(
        "%s: background median %.5f MJy/sr, RMS %.5f, box %d px, %.1f%% masked",
        args.input,
        stats["background_median"],
        bkg_rms,
        p["box_px"],
        100 * stats["masked_fraction"],
    )
    inputs = [args.input, args.mask, *args.hdrtab]
    write_bksub(args.input, args.output, background, bits, args.hdrtab, stats, args.config_hash, inputs)
    if args.qa_png:
        plot_qa(args.qa_png, data, background, bksub, bits, valid, Path(args.output).name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log")
    parser.add_argument("--params", default="{}", help="JSON overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--config-hash", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tiers", help="stages 1-2 on one band: tier bits")
    p.add_argument("input")
    p.add_argument("output")
    p = sub.add_parser("merge", help="OR the tier masks of all bands on the finest grid")
    p.add_argument("tiers", nargs="+")
    p.add_argument("--out", required=True)
    p = sub.add_parser("subtract", help="stage 3 on one band with the merged mask")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--mask", required=True)
    p.add_argument("--hdrtab", nargs="*", default=[], help="input exposures whose metadata form HDRTAB")
    p.add_argument("--qa-png")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = {**DEFAULTS, **json.loads(args.params)}
    {"tiers": command_tiers, "merge": command_merge, "subtract": command_subtract}[args.command](args, params)


if __name__ == "__main__":
    wfutils.run_cli(main)
