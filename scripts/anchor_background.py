"""Anchor mosaics to a true zero sky level with a wide-field reference image (PHANGS-JWST Sec. 3.9).

Method. Near- and mid-IR intensities of one region in two bands follow, on average, a
linear relation at low to moderate intensity; its intercept is the sky offset between
the two images and the slope (a band ratio) is a nuisance term. For each instrument one
band is anchored to a wide-field image with well-established sky (Spitzer IRAC1 or WISE1
for NIRCam F300M, IRAC4 or WISE3 for MIRI F770W; the synthetic survey writes IRAC-like
images with a true zero sky): both images are convolved to a common Gaussian resolution,
reprojected onto one comparison grid, the mosaic's pixels are binned by reference
intensity over a low-intensity range (configurable per band), the median of each bin is
taken (down-weights band-ratio variations), and a line is fitted to the binned medians
with iterative sigma clipping. The intercept is subtracted from the anchored band. Every
other band of the instrument is then fitted the same way against the *anchored* band (or
the band given in ``band_pairs``), which puts all bands on the reference's sky level.

Our addition (``mask_compact``, on): before a band-vs-band fit, compact sources of either
mosaic are masked at native resolution. The paper fits low intensities to avoid the band
ratios of HII regions; where compact sources hold much of the light even there (the
synthetic galaxy's PAH clumps: ~90% of the MIRI flux), their ratio bends the binned
medians. On the noiseless synthetic scene the F1130W-vs-F770W intercept is -0.10 MJy/sr
unmasked and -0.01 masked. With noise, a per-pixel threshold misses the clumps fainter
than the noise, which bias the fit again; the sources are therefore detected with a
matched filter (the difference from the running median smoothed by the band's PSF). The
wide-field reference fit is not masked (the reference cannot be masked at its coarse
resolution).

Our addition (``--exclude-footprint``): the fits leave out the sky footprints of the given
images -- in the workflow the MIRI coronagraph (Lyot) parts, whose level is tied to the imager
only through a thin overlap strip and so is the least certain in the mosaic. Those footprints
lie at the mosaic's edges, among the faint pixels the fit relies on: on the full-size synthetic
galaxy (tests/bench/levels.py, seed 2), where one Lyot stack is 0.009 MJy/sr off, leaving them
out takes the F2100W intercept error from +0.0137 to +0.0035 MJy/sr.

Command line (all mosaics of a target; one call per target)::

    python scripts/anchor_background.py MOSAIC_i2d.fits ... --reference F770W=irac4.fits
        [--reference F360M=irac1.fits] [--band-pairs F1000W=F770W,F2100W=F1130W]
        [--exclude-footprint EXPOSURE_cal.fits ...]
        --out-dir DIR --table fit.ecsv [--qa-png fit.png] [--params JSON] [--log LOG]

``--reference BAND=PATH`` names the band anchored to that reference (``PATH`` alone uses
the reference's ``PROXY`` header card); bands without a reference are fitted against the
anchored band of their instrument unless ``band_pairs`` says otherwise.
``--exclude-footprint`` takes calibrated exposures (any band among the mosaics, told by their
FILTER); the bounding box of each one's usable pixels is left out of its band's fits. Writes
``DIR/<mosaic file name>`` (SCI minus the fitted offset), an ECSV table of the fits
(slope, intercept and its error, range, bins) and a QA PNG like the paper's Fig. 8 (pixels,
binned medians, fitted line and parameters). ``--params`` keys: see ``DEFAULTS``.
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

log = logging.getLogger("anchor_background")

DEFAULTS = {
    # {band: [lo, hi]}: range of the x image (reference, or the anchored band) used for the fit,
    # MJy/sr. Bands without an entry use default_percentiles of the x pixels in the overlap.
    "intensity_range": {},
    "default_percentiles": [2.0, 60.0],
    "n_bins": 15,
    "min_pixels_per_bin": 10,
    "clip_sigma": 3.0,
    "clip_maxiters": 5,
    # {band: y band}: which band each band is fitted against (default: the anchored band of its instrument).
    "band_pairs": {},
    # Common resolution (Gaussian FWHM, arcsec) per band pair; null = the coarser of the two images.
    "resolution_arcsec": {},
    # PSF FWHM (arcsec) of the JWST bands; missing bands use 1.03 lambda / 6.5 m (floor 0.03").
    "fwhm_arcsec": {},
    # FWHM of reference images when their header has no FWHM card, {reference band name: arcsec}.
    "reference_fwhm_arcsec": {},
    # Convolved pixels whose kernel footprint is less covered than this are dropped (mosaic edges
    # and holes: a partly covered kernel biases the pixel towards its covered side).
    "min_coverage": 0.99,
    "bad_flags": list(lc.DEFAULT_BAD_FLAGS),
    # Band-vs-band fits (not the wide-field reference): mask compact sources in both mosaics at
    # their own resolution first -- pixels above a running median (box ``compact_box_arcsec``)
    # by ``compact_nsigma`` x the noise, grown by ``compact_grow_arcsec`` -- so the fit follows
    # the diffuse emission, not HII regions whose band ratios differ. ``compact_matched_filter``:
    # detect on that difference smoothed by the band's PSF, so that clumps fainter than the
    # pixel noise are masked too (tests/bench/levels.py, full size: F1130W -0.0098 -> -0.0021,
    # F2100W -0.0109 -> -0.0072 MJy/sr with 0.6" growth).
    "mask_compact": True,
    "compact_box_arcsec": 3.0,
    "compact_nsigma": 3.0,
    "compact_grow_arcsec": 0.6,
    "compact_matched_filter": True,
}
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------- pure functions
def diffraction_fwhm_arcsec(filter_name: str) -> float:
    """Approximate JWST PSF FWHM: 1.03 lambda / D with D = 6.5 m, lambda from the filter name, floor 0.03"."""
    wavelength_m = int(filter_name[1:-1]) / 100.0 * 1e-6
    return max(1.03 * wavelength_m / 6.5 * 206264.806, 0.03)


def band_fwhm_arcsec(band: str, params: dict) -> float:
    """PSF FWHM of a JWST band: ``params["fwhm_arcsec"]`` or the diffraction estimate."""
    return params["fwhm_arcsec"].get(band) or diffraction_fwhm_arcsec(band)


def convolve_to(image: np.ndarray, own_fwhm: float, target_fwhm: float, pixel_arcsec: float, min_coverage=0.99):
    """Gaussian convolution of ``image`` (NaN-aware) from ``own_fwhm`` to ``target_fwhm`` (arcsec).

    Normalised convolution: NaNs are left out and pixels whose kernel footprint is covered
    less than ``min_coverage`` become NaN (no edge bias). No convolution if the image is
    already at least as coarse.
    """
    from scipy import ndimage

    finite = np.isfinite(image)
    if target_fwhm <= own_fwhm:
        return np.where(finite, image, np.nan)
    sigma_px = math.sqrt(target_fwhm**2 - own_fwhm**2) / FWHM_PER_SIGMA / pixel_arcsec
    num = ndimage.gaussian_filter(np.where(finite, image, 0.0), sigma_px, mode="constant", truncate=4.0)
    den = ndimage.gaussian_filter(finite.astype(float), sigma_px, mode="constant", truncate=4.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[(den < min_coverage) | ~finite] = np.nan
    return out


def compact_source_mask(image: np.ndarray, pixel_arcsec: float, params: dict, fwhm_arcsec: float = 0.0) -> np.ndarray:
    """Pixels of compact sources: ``image`` minus its running median over ``compact_box_arcsec``
    boxes (photutils Background2D) above ``compact_nsigma`` x the sigma-clipped noise of that
    difference, grown by ``compact_grow_arcsec``. With ``compact_matched_filter`` the difference
    is first smoothed by a Gaussian of ``fwhm_arcsec`` (the band's PSF)."""
    from astropy.stats import sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground
    from scipy import ndimage

    finite = np.isfinite(image)
    box = max(5, int(round(params["compact_box_arcsec"] / pixel_arcsec)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if min(image.shape) < 2 * box or finite.mean() < 0.05:
            log.warning("image of %s px too small or empty for compact-source masking; not masked", image.shape)
            return np.zeros(image.shape, bool)
        background = Background2D(
            np.where(finite, image, 0.0),
            box,
            coverage_mask=~finite,
            filter_size=3,
            sigma_clip=None,  # a plain median: in crowded boxes clipping would leave too few pixels
            exclude_percentile=50.0,
            bkg_estimator=MedianBackground(),
        ).background
        residual = np.where(finite, image - background, np.nan)
        if params["compact_matched_filter"] and fwhm_arcsec > 0:
            residual = convolve_to(residual, 0.0, fwhm_arcsec, pixel_arcsec, min_coverage=0.5)
            finite = np.isfinite(residual)
        _, centre, noise = sigma_clipped_stats(residual[finite], sigma=3.0, maxiters=10)
    mask = finite & (residual - centre > params["compact_nsigma"] * noise)
    grow = int(round(params["compact_grow_arcsec"] / pixel_arcsec))
    return ndimage.binary_dilation(mask, iterations=grow) if grow > 0 else mask


def transfer_mask(mask: np.ndarray, wcs_in, wcs_out, shape_out) -> np.ndarray:
    """A boolean mask resampled (nearest neighbour) onto another grid; False outside it."""
    from reproject import reproject_interp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = reproject_interp(
            (mask.astype(np.float32), wcs_in),
            wcs_out,
            shape_out=shape_out,
            order="nearest-neighbor",
            return_footprint=False,
        )
    return np.nan_to_num(out) > 0.5


def binned_medians(x, y, lo: float, hi: float, n_bins: int, min_count: int):
    """Median x, median y and pixel count in ``n_bins`` equal bins of x over [lo, hi]."""
    edges = np.linspace(lo, hi, n_bins + 1)
    xc, yc, counts = [], [], []
    which = np.digitize(x, edges) - 1
    for b in range(n_bins):
        sel = which == b
        if sel.sum() >= min_count:
            xc.append(float(np.median(x[sel])))
            yc.append(float(np.median(y[sel])))
            counts.append(int(sel.sum()))
    return np.array(xc), np.array(yc), np.array(counts)


def fit_relation(x, y, intensity_range, params: dict) -> dict:
    """Line y = intercept + slope x through the binned medians of y in bins of x (Sec. 3.9, Fig. 8).

    ``intensity_range`` [lo, hi] in x units, or None for the default percentiles of x.
    Returns slope, intercept (the sky offset of y where x is zero), its 1-sigma error, the
    bins and which were kept by the sigma clipping.
    """
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    if x.size < params["min_pixels_per_bin"] * 3:
        raise wfutils.InputError(f"only {x.size} overlapping pixels: too few to fit a band relation")
    if intensity_range:
        lo, hi = (float(v) for v in intensity_range)
    else:
        lo, hi = (float(v) for v in np.percentile(x, params["default_percentiles"]))
    if not hi > lo:
        raise wfutils.InputError(f"empty intensity range [{lo}, {hi}]")
    xb, yb, counts = binned_medians(x, y, lo, hi, int(params["n_bins"]), int(params["min_pixels_per_bin"]))
    if xb.size < 3:
        raise wfutils.InputError(
            f"only {xb.size} bins with >= {params['min_pixels_per_bin']} pixels in [{lo:.4g}, {hi:.4g}] MJy/sr"
        )
    slope, intercept, kept, rms, cov = lc.fit_line_clipped(
        xb, yb, None, params["clip_sigma"], int(params["clip_maxiters"])
    )
    return {
        "slope": slope,
        "intercept": intercept,
        "intercept_err": float(math.sqrt(max(cov[1, 1], 0.0))) if np.isfinite(cov[1, 1]) else math.nan,
        "fit_rms": rms,
        "range": [lo, hi],
        "bin_x": xb,
        "bin_y": yb,
        "bin_n": counts,
        "bin_kept": kept,
        "n_pixels": int(((x >= lo) & (x <= hi)).sum()),
    }


def fit_order(bands, anchored: dict, band_pairs: dict, instrument_of) -> list[tuple[str, str]]:
    """(band, against) in an order where ``against`` is always solved first.

    ``against`` is "reference" for anchored bands, else ``band_pairs[band]`` or the
    anchored band of the band's instrument. Fails on cycles and missing partners.
    """
    partner = {}
    for band in bands:
        if band in anchored:
            partner[band] = "reference"
            continue
        if band in band_pairs:
            partner[band] = band_pairs[band]
        else:
            same = [b for b in anchored if instrument_of(b) == instrument_of(band)]
            if not same:
                raise wfutils.InputError(
                    f"band {band}: no anchored band of instrument {instrument_of(band)} and no band_pairs entry"
                )
            partner[band] = same[0]
        if partner[band] not in bands:
            raise wfutils.InputError(f"band {band} is to be fitted against {partner[band]}, which has no mosaic")
    order, done = [], set()
    while len(order) < len(bands):
        ready = [b for b in bands if b not in done and (partner[b] == "reference" or partner[b] in done)]
        if not ready:
            raise wfutils.InputError(f"band_pairs form a cycle: {band_pairs}")
        for b in ready:
            order.append((b, partner[b]))
            done.add(b)
    return order


# --------------------------------------------------------------------------- I/O layer
def is_datamodel_file(path) -> bool:
    """Whether ``path`` is a jwst datamodel FITS file (it carries the ASDF extension)."""
    from astropy.io import fits

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    with fits.open(path) as hdul:
        return "ASDF" in {h.name for h in hdul}


def read_mosaic(path, bitmask):
    """A mosaic as an ImageRecord: jwst i2d (WHT = 0 pixels dropped) or plain FITS with SCI and FILTER."""
    from astropy.io import fits

    record = lc.read_jwst_image(path, bitmask) if is_datamodel_file(path) else lc.read_simple_image(path)
    with fits.open(path) as hdul:
        names = {h.name for h in hdul}
        if "WHT" in names and hdul["WHT"].data is not None and hdul["WHT"].data.shape == record.shape:
            record.data[~(np.asarray(hdul["WHT"].data) > 0)] = np.nan
        if not record.filter:
            record.filter = str(hdul[0].header.get("FILTER", "") or hdul["SCI"].header.get("FILTER", ""))
    if not record.filter:
        raise wfutils.InputError(f"{path}: no FILTER in the header; cannot tell its band")
    if not np.isfinite(record.data).any():
        raise wfutils.InputError(f"{path}: mosaic has no usable pixel (all NaN)")
    return record


def usable_box(valid: np.ndarray):
    """(y0, y1, x0, x1) bounding box of the True pixels of ``valid``, or None if there are none."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def box_outline(box, n_per_side: int = 64, pad: float = 0.5):
    """(x, y) pixel coordinates around ``box``, counter-clockwise: along its outer pixel edges
    (``pad`` 0.5) or through its outer pixel centres (``pad`` 0)."""
    y0, y1, x0, x1 = box
    t = np.linspace(0.0, 1.0, n_per_side, endpoint=False)
    xa, xb, ya, yb = x0 - pad, x1 - 1 + pad, y0 - pad, y1 - 1 + pad
    x = np.concatenate([xa + t * (xb - xa), np.full(n_per_side, xb), xb - t * (xb - xa), np.full(n_per_side, xa)])
    y = np.concatenate([np.full(n_per_side, ya), ya + t * (yb - ya), np.full(n_per_side, yb), yb - t * (yb - ya)])
    return x, y


def polygon_mask(shape, x, y) -> np.ndarray:
    """Pixels of an image of ``shape`` whose centres lie inside the polygon (x, y) (pixel coordinates)."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    rr, cc = polygon(np.asarray(y), np.asarray(x), shape)
    mask[rr, cc] = True
    return mask


def footprint_on(record, mosaic) -> np.ndarray:
    """Mask on ``mosaic``'s grid of the bounding box of ``record``'s usable pixels (through both WCSs)."""
    box = usable_box(np.isfinite(record.data))
    if box is None:
        return np.zeros(mosaic.shape, bool)
    x, y = box_outline(box)
    gx, gy = mosaic.wcs.world_to_pixel_values(*record.wcs.pixel_to_world_values(x, y))
    return polygon_mask(mosaic.shape, gx, gy)


def exclude_footprints(mosaics: dict, paths, bitmask) -> None:
    """Set each exposure's footprint to NaN in its band's mosaic data (the data the fits use)."""
    excluded = {}
    for path in paths:
        record = lc.read_jwst_image(path, bitmask)
        band = record.filter.upper()
        if band not in mosaics:
            raise wfutils.InputError(f"{path}: --exclude-footprint of band {band or '?'}, which has no mosaic here")
        mosaic = mosaics[band]
        usable = np.isfinite(mosaic.data)
        excluded.setdefault(band, [0, int(usable.sum())])
        mask = footprint_on(record, mosaic) & usable
        mosaic.data[mask] = np.nan
        excluded[band][0] += int(mask.sum())
    for band, (n_out, n_all) in excluded.items():
        log.info(
            "%s: excluded footprints leave %.1f%% of the mosaic's pixels out of the fits", band, 100 * n_out / n_all
        )
        if n_out == n_all:
            raise wfutils.InputError(f"{mosaics[band].path}: no pixel is left once the excluded footprints are removed")


def pixel_scale_arcsec(wcs) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs))) * 3600.0)


def pixel_average(image: np.ndarray, width_px: float, min_coverage: float = 0.99) -> np.ndarray:
    """NaN-aware running mean over ``width_px`` pixels: the value a pixel that much larger would hold."""
    from scipy import ndimage

    if width_px <= 1.0:
        return image
    # centred box of exactly width_px pixels: ones inside, fractional weights at both ends
    half = width_px / 2.0
    n = int(np.ceil(half - 0.5))
    offsets = np.arange(-n, n + 1)
    kernel = np.clip(half + 0.5 - np.abs(offsets), 0.0, 1.0)
    kernel /= kernel.sum()
    finite = np.isfinite(image)

    def smooth(a):
        a = ndimage.convolve1d(a, kernel, axis=0, mode="constant")
        return ndimage.convolve1d(a, kernel, axis=1, mode="constant")

    num = smooth(np.where(finite, image, 0.0))
    den = smooth(finite.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < min_coverage] = np.nan
    return out


def crop_to(coarse, fine, margin: int = 2):
    """Cut of the coarse record's (array, WCS) to the bounding box of the fine record's footprint."""
    ny, nx = fine.shape
    ex, ey = box_outline((0, ny, 0, nx), n_per_side=50, pad=0.0)  # the outer pixel centres
    gx, gy = coarse.wcs.world_to_pixel_values(*fine.wcs.pixel_to_world_values(ex, ey))
    cy, cx = coarse.shape
    x0, x1 = max(int(np.floor(np.nanmin(gx))) - margin, 0), min(int(np.ceil(np.nanmax(gx))) + margin + 1, cx)
    y0, y1 = max(int(np.floor(np.nanmin(gy))) - margin, 0), min(int(np.ceil(np.nanmax(gy))) + margin + 1, cy)
    return y0, y1, x0, x1


def masked_compact(y_rec, y_mask, x_rec, x_mask):
    """(y data, x data) with the union of both images' compact-source masks set to NaN."""
    y_all = y_mask | transfer_mask(x_mask, x_rec.wcs, y_rec.wcs, y_rec.data.shape)
    x_all = x_mask | transfer_mask(y_mask, y_rec.wcs, x_rec.wcs, x_rec.data.shape)
    log.info(
        "compact sources masked: %.0f%% of %s, %.0f%% of %s",
        100 * y_all[np.isfinite(y_rec.data)].mean(),
        y_rec.filter,
        100 * x_all[np.isfinite(x_rec.data)].mean(),
        x_rec.filter,
    )
    return np.where(y_all, np.nan, y_rec.data), np.where(x_all, np.nan, x_rec.data)


def comparison_pair(y_rec, y_fwhm, x_rec, x_fwhm, resolution, params, masks=None):
    """Both images at ``resolution`` (arcsec FWHM) on the pixel grid of the coarser one: (x, y) pixel arrays.

    ``masks`` (y mask, x mask), each on its own image's grid: compact sources left out of both.

    The coarser image (usually the wide-field reference) is never interpolated: the finer
    one, after the Gaussian convolution, is averaged over the coarse pixel size and sampled
    at the coarse pixel centres (interpolating a reference sampled at FWHM/3 would scatter
    source peaks by several percent).
    """
    from reproject import reproject_interp

    y_pix, x_pix = pixel_scale_arcsec(y_rec.wcs), pixel_scale_arcsec(x_rec.wcs)
    y_data, x_data = masked_compact(y_rec, masks[0], x_rec, masks[1]) if masks else (y_rec.data, x_rec.data)
    y_conv = convolve_to(y_data, y_fwhm, resolution, y_pix, params["min_coverage"])
    x_conv = convolve_to(x_data, x_fwhm, resolution, x_pix, params["min_coverage"])
    if x_pix >= y_pix:
        coarse, coarse_data, fine, fine_data = x_rec, x_conv, y_rec, pixel_average(y_conv, x_pix / y_pix)
    else:
        coarse, coarse_data, fine, fine_data = y_rec, y_conv, x_rec, pixel_average(x_conv, y_pix / x_pix)
    y0, y1, x0, x1 = crop_to(coarse, fine)
    if y0 >= y1 or x0 >= x1:
        raise wfutils.InputError(f"{y_rec.path} and {x_rec.path} do not overlap")
    grid = coarse.wcs[y0:y1, x0:x1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = reproject_interp((fine_data, fine.wcs), grid, shape_out=(y1 - y0, x1 - x0), return_footprint=False)
    kept = coarse_data[y0:y1, x0:x1]
    x_grid, y_grid = (kept, sampled) if coarse is x_rec else (sampled, kept)
    good = np.isfinite(x_grid) & np.isfinite(y_grid)
    if not good.any():
        raise wfutils.InputError(f"{y_rec.path} and {x_rec.path} do not overlap")
    return x_grid[good], y_grid[good]


def write_anchored(path, out_path, offset, cfg_hash):
    """Copy of the mosaic with SCI minus ``offset`` (datamodel when possible, else plain FITS)."""
    from astropy.io import fits

    if is_datamodel_file(path):
        from stdatamodels.jwst import datamodels

        with datamodels.open(str(path)) as model:
            model.data = (np.asarray(model.data, float) - offset).astype(np.float32)
            wfutils.save_model(model, out_path, [path], cfg_hash, "anchor_background")
        return
    with fits.open(path) as hdul:
        hdul["SCI"].data = (np.asarray(hdul["SCI"].data, float) - offset).astype(np.float32)
        wfutils.write_hdulist(hdul, out_path, [path], cfg_hash, "anchor_background")


def plot_fits(results, path) -> None:
    """QA PNG, one panel per band: pixels (grey), binned medians (red; open = clipped), fitted line, parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, res in zip(axes.ravel(), results, strict=False):
        x, y, fit = res["x"], res["y"], res["fit"]
        lo, hi = fit["range"]
        span = hi - lo
        show = (x >= min(0.0, lo) - 0.5 * span) & (x <= hi + 1.0 * span)
        idx = np.flatnonzero(show)
        if idx.size > 20000:
            idx = rng.choice(idx, 20000, replace=False)
        ax.scatter(x[idx], y[idx], s=2, color="0.6", alpha=0.4, rasterized=True, label="pixels")
        kept = fit["bin_kept"]
        ax.scatter(fit["bin_x"][kept], fit["bin_y"][kept], color="red", s=22, zorder=3, label="binned medians")
        ax.scatter(fit["bin_x"][~kept], fit["bin_y"][~kept], facecolor="none", edgecolor="red", s=22, zorder=3)
        xx = np.linspace(min(0.0, lo), hi + 0.5 * span, 50)
        ax.plot(xx, fit["intercept"] + fit["slope"] * xx, ls="--", color="0.25", label="fit")
        ax.axvspan(lo, hi, color="C0", alpha=0.07)
        ax.set_xlabel(f"{res['against_label']} (MJy/sr)")
        ax.set_ylabel(f"{res['band']} (MJy/sr)")
        ax.set_title(f'{res["band"]} vs {res["against_label"]} at {res["resolution"]:.2f}"', fontsize=10)
        ax.text(
            0.03,
            0.97,
            f"slope = {fit['slope']:.4f}\nintercept = {fit['intercept']:+.4f} ± {fit['intercept_err']:.4f}\n"
            f"range [{lo:.3g}, {hi:.3g}]\n{int(kept.sum())}/{kept.size} bins",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            family="monospace",
        )
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def fit_table(results, params):
    from astropy.table import Table

    rows = []
    for res in results:
        fit = res["fit"]
        rows.append(
            {
                "band": res["band"],
                "instrument": res["instrument"],
                "against": res["against_label"],
                "role": "anchor" if res["against"] == "reference" else "relative",
                "resolution_arcsec": res["resolution"],
                "range_lo_mjysr": fit["range"][0],
                "range_hi_mjysr": fit["range"][1],
                "n_bins": int(fit["bin_kept"].size),
                "n_bins_kept": int(fit["bin_kept"].sum()),
                "n_pixels": fit["n_pixels"],
                "slope": fit["slope"],
                "intercept_mjysr": fit["intercept"],
                "intercept_err_mjysr": fit["intercept_err"],
                "fit_rms_mjysr": fit["fit_rms"],
                "offset_subtracted_mjysr": fit["intercept"],
                "mosaic": Path(res["path"]).name,
            }
        )
    table = Table(rows=rows)
    table.meta["method"] = "binned-median linear fit against a wide-field reference (PHANGS-JWST Sec. 3.9)"
    table.meta["parameters"] = json.loads(json.dumps(params))
    return table


def parse_references(items, bitmask=None) -> dict:
    """{anchored band: reference ImageRecord} from ``BAND=PATH`` (or ``PATH`` with a PROXY header)."""
    refs = {}
    for item in items:
        band, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        record = lc.read_simple_image(path)
        band = band or str(record.meta.get("PROXY", ""))
        if not band:
            raise wfutils.InputError(f"{path}: give the anchored band as BAND=PATH (no PROXY card in the header)")
        if not np.isfinite(record.data).any():
            raise wfutils.InputError(f"{path}: reference image has no finite pixel")
        refs[band.upper()] = record
    return refs


def run(mosaic_paths, reference_items, out_dir, table_path, qa_png, params, cfg_hash=None, exclude=()):
    from wflib import survey_plan

    bitmask = lc.dq_bitmask(params["bad_flags"])
    mosaics = {}
    for path in mosaic_paths:
        rec = read_mosaic(path, bitmask)
        if rec.filter in mosaics:
            raise wfutils.InputError(f"{path}: a second mosaic of band {rec.filter}")
        if (Path(out_dir) / Path(path).name).resolve() == Path(path).resolve():
            raise wfutils.InputError(f"{path}: output would overwrite the input; choose another --out-dir")
        mosaics[rec.filter] = rec
    exclude_footprints(mosaics, exclude, bitmask)
    references = parse_references(reference_items)
    missing = [b for b in references if b not in mosaics]
    if missing:
        raise wfutils.InputError(f"reference band(s) {missing} have no mosaic among the inputs")

    def instrument_of(band):
        try:
            return survey_plan.instrument_of(band)
        except ValueError:
            raise wfutils.InputError(f"unknown JWST band {band}") from None

    order = fit_order(list(mosaics), references, params["band_pairs"], instrument_of)
    offsets, results, compact = {}, [], {}

    def compact_mask(band):  # once per band: the anchored band is the partner of several fits
        if band not in compact:
            rec = mosaics[band]
            compact[band] = compact_source_mask(
                rec.data, pixel_scale_arcsec(rec.wcs), params, band_fwhm_arcsec(band, params)
            )
        return compact[band]

    for band, against in order:
        y_rec = mosaics[band]
        y_fwhm = band_fwhm_arcsec(band, params)
        if against == "reference":
            x_rec = references[band]
            label = str(x_rec.meta.get("BAND") or x_rec.name)
            x_fwhm = x_rec.meta.get("FWHM") or params["reference_fwhm_arcsec"].get(label)
            if not x_fwhm:
                raise wfutils.InputError(f"{x_rec.path}: no FWHM header card; set reference_fwhm_arcsec.{label}")
            x_offset = 0.0
        else:
            x_rec = mosaics[against]
            label = against
            x_fwhm = band_fwhm_arcsec(against, params)
            x_offset = offsets[against]
        resolution = params["resolution_arcsec"].get(band) or max(float(x_fwhm), float(y_fwhm))
        masks = None
        if params["mask_compact"] and against != "reference":
            masks = (compact_mask(band), compact_mask(against))
        x_pix, y_pix = comparison_pair(y_rec, y_fwhm, x_rec, float(x_fwhm), resolution, params, masks)
        x_pix = x_pix - x_offset  # the partner band as already anchored
        try:
            fit = fit_relation(x_pix, y_pix, params["intensity_range"].get(band), params)
        except wfutils.InputError as exc:
            raise wfutils.InputError(f"{y_rec.path} vs {x_rec.path}: {exc}") from None
        offsets[band] = fit["intercept"]
        log.info(
            '%s vs %s at %.2f": slope %.4f, intercept %+.4f +- %.4f MJy/sr from %d/%d bins in [%.3g, %.3g]',
            band,
            label,
            resolution,
            fit["slope"],
            fit["intercept"],
            fit["intercept_err"],
            int(fit["bin_kept"].sum()),
            fit["bin_kept"].size,
            *fit["range"],
        )
        results.append(
            {
                "band": band,
                "instrument": instrument_of(band),
                "against": against,
                "against_label": label,
                "resolution": resolution,
                "fit": fit,
                "x": x_pix,
                "y": y_pix,
                "path": y_rec.path,
            }
        )
    for band, rec in mosaics.items():
        write_anchored(rec.path, Path(out_dir) / Path(rec.path).name, offsets[band], cfg_hash)
        log.info("%s: subtracted %+.4f MJy/sr", Path(rec.path).name, offsets[band])
    table = fit_table(results, params)
    wfutils.write_text("\n".join(lc_table_lines(table)) + "\n", table_path)
    if qa_png:
        plot_fits(results, qa_png)
    return table


def lc_table_lines(table):
    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return buf.getvalue().splitlines()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mosaics", nargs="+", help="mosaics (i2d) of the bands of one target")
    parser.add_argument(
        "--reference", action="append", required=True, help="BAND=PATH: wide-field image the band is anchored to"
    )
    parser.add_argument("--band-pairs", default="", help="BAND=AGAINST,...: which band each band is fitted against")
    parser.add_argument("--out-dir", required=True, help="directory for the anchored mosaics")
    parser.add_argument("--table", required=True, help="ECSV table of the fits")
    parser.add_argument("--qa-png", help="QA figure of the fits")
    parser.add_argument(
        "--exclude-footprint",
        action="append",
        default=[],
        metavar="PATH",
        help="calibrated exposure whose footprint is left out of its band's fits (e.g. a MIRI Lyot part)",
    )
    wfutils.add_run_options(parser, params_help="JSON object of method parameters (keys of DEFAULTS)")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    for item in filter(None, args.band_pairs.split(",")):
        band, sep, against = item.partition("=")
        if not sep:
            raise wfutils.InputError(f"--band-pairs item {item!r} is not BAND=AGAINST")
        params["band_pairs"] = {**params["band_pairs"], band.strip().upper(): against.strip().upper()}
    run(
        args.mosaics,
        args.reference,
        args.out_dir,
        args.table,
        args.qa_png,
        params,
        args.config_hash,
        args.exclude_footprint,
    )


if __name__ == "__main__":
    wfutils.run_cli(main)
