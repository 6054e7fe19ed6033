"""Helpers shared by the background and level scripts (off-field background, Lyot split,
level matching, anchoring): DQ masks, sigma-clipped statistics, source masks, robust line
fits, and a small reader that turns a calibrated JWST image into arrays plus a celestial WCS.

Pure numpy/astropy; jwst/stdatamodels are imported inside the I/O functions only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wflib import wfutils

DEFAULT_BAD_FLAGS = ("DO_NOT_USE", "NON_SCIENCE")


# --------------------------------------------------------------------------- DQ and statistics
def dq_bitmask(flag_names) -> int:
    """Integer bit mask of the JWST DQ flag names (``stdatamodels`` pixel flags)."""
    from stdatamodels.jwst.datamodels import dqflags

    mask = 0
    for name in flag_names:
        try:
            mask |= int(dqflags.pixel[name])
        except KeyError:
            raise wfutils.InputError(f"unknown DQ flag name {name!r}") from None
    return mask


def usable_pixels(data: np.ndarray, dq: np.ndarray | None, bitmask: int) -> np.ndarray:
    """Finite pixels whose DQ carries none of the bits in ``bitmask``."""
    good = np.isfinite(data)
    if dq is not None and bitmask:
        good &= (dq & bitmask) == 0
    return good


def clip_mask(values, sigma: float = 3.0, maxiters: int = 10) -> np.ndarray:
    """Which of ``values`` (any shape) survive iterative sigma clipping about the median (astropy
    ``sigma_clip``, std as the scale); non-finite values never do."""
    from astropy.stats import sigma_clip

    values = np.asarray(values, float)
    finite = np.isfinite(values)
    if not finite.any():
        return finite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(values, sigma=sigma, maxiters=maxiters, cenfunc="median", stdfunc="std", masked=True)
    return ~np.ma.getmaskarray(clipped) & finite


def kept_stats(kept: np.ndarray, statistic: str = "median"):
    """(centre, rms, n) of the values a clipping kept; NaNs when there are none."""
    if kept.size == 0:
        return math.nan, math.nan, 0
    return centre_of(kept, statistic), float(np.std(kept)), int(kept.size)


def clipped_stats(values, sigma: float = 3.0, maxiters: int = 10, statistic: str = "median"):
    """Sigma-clipped (centre, rms, n_kept) of the finite ``values``.

    ``statistic`` "median" (the PHANGS-JWST choice), "mean", or "biweight" (Tukey biweight
    location: as robust as the median to the clipped tails, nearly as efficient as the mean
    for the Gaussian core) for the centre; rms is the standard deviation of the clipped
    values. Returns NaNs when nothing is left.
    """
    values = np.asarray(values, float).ravel()
    return kept_stats(values[clip_mask(values, sigma, maxiters)], statistic)


def centre_of(values: np.ndarray, statistic: str = "median") -> float:
    """Median, mean or Tukey biweight location of non-empty finite ``values``."""
    if statistic == "median":
        return float(np.median(values))
    if statistic == "mean":
        return float(np.mean(values))
    if statistic == "biweight":
        from astropy.stats import biweight_location

        return float(biweight_location(values)) if values.size > 1 else float(values[0])
    raise ValueError(f"unknown statistic {statistic!r}")


def robust_sigma(values) -> float:
    """Gaussian-equivalent standard deviation from the median absolute deviation."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def source_mask(
    image: np.ndarray,
    nsigma: float = 3.0,
    smooth_px: float = 1.0,
    dilate_px: int = 2,
    min_pixels: int = 3,
    regions: list | None = None,
) -> np.ndarray:
    """Pixels belonging to sources: smoothed image above ``nsigma`` x the robust noise.

    The sigma-clipped level of each region in ``regions`` (boolean masks; default the whole
    image) is removed first, so a detector part at a different level (the MIRI Lyot
    coronagraph) is not taken for a source. The image is smoothed by a Gaussian of
    ``smooth_px`` (catches faint extended wings), thresholded, connected groups smaller
    than ``min_pixels`` are dropped (noise spikes), the rest dilated by ``dilate_px``.
    NaN pixels are never part of the mask.
    """
    from scipy import ndimage

    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, bool)
    filled = np.where(finite, image, 0.0)
    for region in regions if regions else [np.ones(image.shape, bool)]:
        sel = region & finite
        if sel.any():
            filled[sel] -= clipped_stats(image[sel], sigma=3.0)[0]
    if smooth_px > 0:
        weight = ndimage.gaussian_filter(finite.astype(float), smooth_px)
        with np.errstate(invalid="ignore", divide="ignore"):
            filled = np.where(weight > 0.2, ndimage.gaussian_filter(filled, smooth_px) / weight, 0.0)
    noise = robust_sigma(filled[finite])
    if not np.isfinite(noise) or noise <= 0:
        return np.zeros(image.shape, bool)
    mask = (filled > nsigma * noise) & finite
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= min_pixels))
    if dilate_px > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(dilate_px))
    return mask & finite


def fit_line_clipped(x, y, weights=None, sigma: float = 3.0, maxiters: int = 10):
    """Weighted straight line y = intercept + slope x with iterative sigma clipping.

    Returns (slope, intercept, kept mask, rms of kept residuals, covariance 2x2 of
    (slope, intercept)). Needs at least two points.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    slope = intercept = math.nan
    cov = np.full((2, 2), math.nan)
    rms = math.nan
    for _ in range(maxiters + 1):
        if keep.sum() < 2:
            break
        design = np.column_stack([x[keep], np.ones(keep.sum())]) * np.sqrt(w[keep])[:, None]
        coef, *_ = np.linalg.lstsq(design, y[keep] * np.sqrt(w[keep]), rcond=None)
        slope, intercept = float(coef[0]), float(coef[1])
        resid = y - (intercept + slope * x)
        rms = float(np.sqrt(np.average(resid[keep] ** 2, weights=w[keep])))
        dof = max(int(keep.sum()) - 2, 1)
        chi2 = float(np.sum(w[keep] * resid[keep] ** 2)) / dof
        cov = np.linalg.pinv(design.T @ design) * chi2
        new_keep = keep & (np.abs(resid) <= sigma * max(rms, 1e-30))
        if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return slope, intercept, keep, rms, cov


def region_mask(shape, fractions) -> np.ndarray:
    """Boolean mask of a detector region given as [x0, x1, y0, y1] fractions of the detector.

    Same convention as the simulator's ``simulation.miri_regions`` (rounded pixel edges).
    """
    ny, nx = shape
    x0, x1, y0, y1 = (float(f) for f in fractions)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise wfutils.InputError(f"detector region {list(fractions)} is not [x0, x1, y0, y1] fractions in [0, 1]")
    mask = np.zeros(shape, bool)
    mask[int(round(y0 * ny)) : int(round(y1 * ny)), int(round(x0 * nx)) : int(round(x1 * nx))] = True
    return mask


# --------------------------------------------------------------------------- image I/O
@dataclass
class ImageRecord:
    """Arrays and metadata of one calibrated image (an exposure, a part of one, or a mosaic)."""

    path: str
    name: str
    data: np.ndarray  # float64 MJy/sr, NaN where unusable
    dq: np.ndarray | None
    wcs: object  # astropy.wcs.WCS (celestial, 2-D)
    filter: str = ""
    instrument: str = ""
    detector: str = ""
    visit_id: str = ""
    mid_time: float = math.nan
    meta: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.data.shape


def image_name(path) -> str:
    """File stem without the usual JWST suffix (``_cal``, ``_crf``, ``_i2d``)."""
    name = Path(path).name
    for suffix in ("_cal.fits", "_crf.fits", "_i2d.fits", ".fits"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def celestial_wcs(path, header, model=None):
    """Celestial astropy WCS of the SCI extension; SIP approximation of the gwcs as fallback."""
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if wcs.has_celestial and wcs.naxis == 2:
        return wcs.celestial
    if model is not None and getattr(model.meta, "wcs", None) is not None:
        ny, nx = model.data.shape
        sip = model.meta.wcs.to_fits_sip(bounding_box=((-0.5, nx - 0.5), (-0.5, ny - 0.5)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(sip)
    raise wfutils.InputError(f"{path}: SCI extension has no celestial WCS")


def read_jwst_image(path, bad_bitmask: int, require_instrument: str | None = None) -> ImageRecord:
    """Read one calibrated ImageModel (cal/crf/i2d): SCI with unusable pixels as NaN, DQ, WCS, metadata."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    header = fits.getheader(path, "SCI")
    try:
        model = datamodels.open(str(path))
    except Exception as exc:  # stdatamodels raises several types for foreign files
        raise wfutils.InputError(f"{path}: not a JWST datamodel ({type(exc).__name__}: {exc})") from exc
    with model:
        if model.data is None or model.data.ndim != 2:
            raise wfutils.InputError(f"{path}: SCI is not a 2-D image")
        instrument = (model.meta.instrument.name or "").upper()
        if require_instrument and instrument != require_instrument:
            raise wfutils.InputError(f"{path}: instrument is {instrument or 'unknown'}, expected {require_instrument}")
        bunit = model.meta.bunit_data
        if bunit and bunit != wfutils.SURFACE_BRIGHTNESS_UNIT:
            raise wfutils.InputError(f"{path}: SCI unit is {bunit!r}, expected {wfutils.SURFACE_BRIGHTNESS_UNIT!r}")
        data = np.array(model.data, dtype=float)
        dq = np.array(model.dq) if getattr(model, "dq", None) is not None and model.dq.shape == data.shape else None
        good = usable_pixels(data, dq, bad_bitmask)
        data[~good] = np.nan
        wcs = celestial_wcs(path, header, model)
        obs = model.meta.observation
        visit_id = obs.visit_id or ""
        if not visit_id and obs.program_number and obs.observation_number and obs.visit_number:
            visit_id = f"{obs.program_number}{obs.observation_number}{obs.visit_number}"
        start, end = model.meta.exposure.start_time, model.meta.exposure.end_time
        mid = model.meta.exposure.mid_time or (0.5 * (start + end) if start and end else math.nan)
        return ImageRecord(
            path=str(path),
            name=image_name(path),
            data=data,
            dq=dq,
            wcs=wcs,
            filter=model.meta.instrument.filter or "",
            instrument=instrument,
            detector=model.meta.instrument.detector or "",
            visit_id=str(visit_id),
            mid_time=float(mid) if mid else math.nan,
        )


def read_simple_image(path) -> ImageRecord:
    """Read a plain FITS image with an ``SCI`` extension (wide-field references, truth mosaics)."""
    from astropy.io import fits

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    with fits.open(path) as hdul:
        header = hdul["SCI"].header
        data = np.array(hdul["SCI"].data, dtype=float)
        primary = hdul[0].header
    if data.ndim != 2:
        raise wfutils.InputError(f"{path}: SCI is not a 2-D image")
    return ImageRecord(
        path=str(path),
        name=image_name(path),
        data=data,
        dq=None,
        wcs=celestial_wcs(path, header),
        filter=str(header.get("FILTER", primary.get("FILTER", ""))),
        meta={k: header[k] for k in ("BUNIT", "FWHM", "PROXY", "BAND", "TELESCOP") if k in header},
    )
