"""Helpers shared by the catalog scripts (PHANGS-HST cluster and association pipeline, Lee et al. 2022 Sec. 4).

- HST-like drizzled images (DRC: SCI in e-/s with PHOTFLAM/PHOTPLAM, ERR, WHT) are read by
  ``read_drc``; ``zeropoints`` turns the header into AB and Vega zero points.
- ``ProfileLibrary`` renders pixel stamps of point sources (the PSF) and of PSF-convolved
  Moffat/EFF clusters at sub-pixel phases; the simulator (``simulate_hst.py``), the synthetic
  clusters (``inject_clusters.py``) and the fiducial cluster of the concentration indices
  (``concentration.py``) all use it, so the model grid is one piece of code.
- ``aperture_fluxes`` is the one aperture-photometry routine (circular apertures, sigma-clipped
  local background in an annulus, errors from the ERR map) behind ``aperture_photometry.py``,
  ``concentration.py`` and ``inject_clusters.py``: real and synthetic sources are measured alike.
- ``read_table`` / ``write_table`` / ``write_ds9`` are the small I/O pieces.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from wflib import wfutils

V_BAND = "F555W"
HST_BANDS = ("F275W", "F336W", "F438W", "F555W", "F814W")
OVERSAMPLE = 5  # sub-pixels per pixel of the model stamps (odd: the centre sub-pixel is the pixel centre)
FIDUCIAL_CLUSTER = {"fwhm_px": 2.0, "slope": 3.0}  # Thilker et al. 2022: Moffat FWHM 2 px, slope 3
DRC_EXTENSIONS = ("SCI", "ERR", "WHT")


# --------------------------------------------------------------------------- parameters and tables
def read_table(path, required=()):
    """An ECSV/FITS table; a clear error if it is missing or lacks a required column."""
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: table does not exist")
    try:
        table = Table.read(path)
    except Exception as exc:  # astropy raises many types for damaged files
        raise wfutils.InputError(f"{path}: not a readable table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise wfutils.InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def write_table(table, path, inputs=(), step="catalog") -> None:
    """Write ``table`` atomically (ECSV or FITS by suffix) with provenance in its metadata.

    The provenance of the table this one was derived from (its WF* keys) is replaced, not merged.
    FITS headers get nested metadata (dicts, lists) as JSON strings and long keys as HIERARCH cards.
    """
    import warnings

    from astropy.io.fits.verify import VerifyWarning

    for key in [k for k in table.meta if str(k).startswith("WF")]:
        del table.meta[key]
    table.meta.update({k: v for k, v, _ in wfutils.provenance_cards(inputs, None, step)})
    fits_out = str(path).endswith(".fits")
    out = table
    if fits_out:
        out = table.copy(copy_data=False)
        out.meta = {k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in table.meta.items()}
    with wfutils.atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        out.write(tmp, format="fits" if fits_out else "ascii.ecsv", overwrite=True)


def write_ds9(path, x, y, radius_px, color="green", labels=None, header="") -> None:
    """DS9 region file of circles in image coordinates (1-based, as DS9 counts pixels)."""
    lines = ["# Region file format: DS9 version 4.1", f"# {header}".rstrip(), f"global color={color}", "image"]
    labels = labels if labels is not None else [None] * len(x)
    radii = np.broadcast_to(np.asarray(radius_px, dtype=float), np.shape(x))
    for xi, yi, ri, label in zip(x, y, radii, labels, strict=True):
        text = f" # text={{{label}}}" if label is not None else ""
        lines.append(f"circle({xi + 1:.3f},{yi + 1:.3f},{ri:.2f}){text}")
    wfutils.write_text("\n".join(lines) + "\n", path)


# --------------------------------------------------------------------------- images and zero points
def zeropoints(header) -> dict:
    """AB zero point (mag of 1 e-/s) from PHOTFLAM [erg/s/cm2/A per e-/s] and PHOTPLAM [A] (STScI recipe)."""
    photflam, photplam = float(header["PHOTFLAM"]), float(header["PHOTPLAM"])
    return {
        "ab": -2.5 * math.log10(photflam) - 5.0 * math.log10(photplam) - 2.408,
        "photflam": photflam,
        "photplam": photplam,
    }


def read_drc(path, band=None):
    """(sci, err, header, wcs) of an HST-like drizzled image; SCI in e-/s or MJy/sr (converted to e-/s).

    MJy/sr images need PHOTFLAM/PHOTPLAM and PIXAR_SR (or a celestial WCS) to convert; a clear
    error names the file and what is missing.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    wfutils.check_image_file(path, extensions=("SCI", "ERR"), unit=None)
    with fits.open(path, memmap=False) as hdul:
        sci = hdul["SCI"].data.astype(np.float64)
        err = hdul["ERR"].data.astype(np.float64)
        header = hdul["SCI"].header.copy()
        primary = hdul[0].header
    for key in ("PHOTFLAM", "PHOTPLAM", "FILTER", "EXPTIME"):
        if key not in header and key in primary:
            header[key] = primary[key]
    for key in ("PHOTFLAM", "PHOTPLAM"):
        if key not in header:
            raise wfutils.InputError(f"{path}: SCI header lacks {key} (needed for magnitudes)")
    if band is not None and header.get("FILTER", band).upper() != band.upper():
        raise wfutils.InputError(f"{path}: FILTER is {header.get('FILTER')!r}, expected {band}")
    if sci.shape != err.shape:
        raise wfutils.InputError(f"{path}: SCI {sci.shape} and ERR {err.shape} differ in shape")
    unit = str(header.get("BUNIT", "ELECTRONS/S")).upper().replace(" ", "")
    wcs = WCS(header)
    if unit in ("MJY/SR",):
        pixar = header.get("PIXAR_SR") or (np.prod(np.abs(wcs.proj_plane_pixel_scales())) * (math.pi / 180) ** 2)
        # MJy/sr -> erg/s/cm2/Hz -> erg/s/cm2/A -> e-/s
        fnu = 1e-17 * pixar * 1.0  # erg/s/cm2/Hz per (MJy/sr)
        flam_per = fnu * 2.99792458e18 / float(header["PHOTPLAM"]) ** 2
        factor = flam_per / float(header["PHOTFLAM"])
        sci, err = sci * factor, err * factor
    elif unit not in ("ELECTRONS/S", "ELECTRON/S", "E/S", "E-/S", "COUNTS/S"):
        raise wfutils.InputError(f"{path}: SCI unit {header.get('BUNIT')!r} is neither e-/s nor MJy/sr")
    bad = ~np.isfinite(sci) | ~np.isfinite(err) | (err <= 0)
    sci[bad] = np.nan
    err[bad] = np.nan
    return sci, err, header, wcs


def mag_from_flux(flux, zeropoint):
    """Magnitude of a flux in e-/s (NaN where the flux is not positive)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, zeropoint - 2.5 * np.log10(flux), np.nan)


def mag_error(flux, flux_err):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(flux) > 0, 2.5 / math.log(10) * np.asarray(flux_err) / np.asarray(flux), np.nan)


def distance_modulus(distance_mpc: float) -> float:
    return 5.0 * math.log10(distance_mpc * 1e6) - 5.0


def pc_per_pixel(distance_mpc: float, pixscale_arcsec: float) -> float:
    return distance_mpc * 1e6 * math.radians(pixscale_arcsec / 3600.0)


# --------------------------------------------------------------------------- PSF and cluster models
def psf_profile(r2, fwhm_px: float, wing_fraction: float, wing_width: float):
    """Analytic HST-like PSF at squared radius ``r2`` (px^2): Gaussian core plus broad Gaussian wing, unit sum."""
    out = np.zeros_like(r2, dtype=float)
    for weight, width in ((1.0 - wing_fraction, 1.0), (wing_fraction, wing_width)):
        sigma = fwhm_px * width / 2.3548
        out += weight * np.exp(-0.5 * r2 / sigma**2) / (2 * math.pi * sigma**2)
    return out


def moffat_alpha(fwhm_px: float, slope: float) -> float:
    """Moffat core radius alpha of Sigma(r) = (1 + (r/alpha)^2)^-slope with the given FWHM."""
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / slope) - 1.0))


def cluster_half_size(fwhm_px: float, slope: float, max_half: int = 40) -> int:
    """Half side (px) of a cluster stamp, also the truncation radius of its Moffat profile."""
    extent = 6.0 * fwhm_px + 12.0 + (8.0 if slope < 1.5 else 0.0)
    return int(min(max(math.ceil(extent), 12), max_half))


class ProfileLibrary:
    """Pixel stamps of sources at sub-pixel phases (multiples of 1/OVERSAMPLE px), unit total flux.

    A stamp is built once per (band, model) on a grid ``OVERSAMPLE`` times finer than the pixels:
    the PSF (``psf``: {band: {fwhm_px, wing_fraction, wing_width}} analytic, or {band: image}
    sampled ``oversample`` times finer than the pixels, odd-sized), or a Moffat/EFF profile of
    the given FWHM and slope (truncated at the stamp edge) convolved with it. Binning the fine
    grid from a shifted start gives the stamp at any phase, so injected positions are exact.
    """

    def __init__(self, psf: dict, oversample: int = OVERSAMPLE):
        if oversample % 2 != 1:
            raise ValueError("oversample must be odd")
        self.psf = psf
        self.os = oversample
        self._cache = {}

    def psf_half_size(self, band: str) -> int:
        p = self.psf[band]
        if isinstance(p, np.ndarray):
            return int(math.ceil((p.shape[0] / self.os - 1) / 2.0))
        return int(math.ceil(4.0 * p["fwhm_px"] * p["wing_width"] / 2.3548)) + 2

    def _fine_grid(self, half: int):
        n = (2 * half + 1) * self.os + 2 * (self.os // 2)  # padded: phases up to +-os//2 sub-pixels
        c = (n - 1) / 2.0
        u = (np.arange(n) - c) / self.os
        return u, n

    def fine_psf(self, band: str, half: int | None = None) -> np.ndarray:
        """The PSF on the fine grid (unit sum): the analytic model, or the given image."""
        p = self.psf[band]
        if isinstance(p, np.ndarray):
            return p / p.sum()
        half = self.psf_half_size(band) if half is None else half
        u = (np.arange((2 * half + 1) * self.os) - ((2 * half + 1) * self.os - 1) / 2.0) / self.os
        r2 = u[None, :] ** 2 + u[:, None] ** 2
        kernel = psf_profile(r2, p["fwhm_px"], p["wing_fraction"], p["wing_width"])
        return kernel / kernel.sum()

    def fine_model(self, band: str, fwhm_px: float | None = None, slope: float | None = None):
        """Fine-grid model (unit sum) and its half size in pixels; ``fwhm_px`` None is a point source."""
        key = (
            band,
            None if fwhm_px is None else round(float(fwhm_px), 5),
            None if slope is None else round(float(slope), 5),
        )
        if key in self._cache:
            return self._cache[key]
        from scipy.signal import fftconvolve

        if fwhm_px is None:
            half = self.psf_half_size(band)
            u, n = self._fine_grid(half)
            p = self.psf[band]
            if isinstance(p, np.ndarray):
                fine = np.zeros((n, n))
                k, c = p.shape[0], (n - p.shape[0]) // 2
                fine[c : c + k, c : c + k] = p
            else:
                fine = psf_profile(u[None, :] ** 2 + u[:, None] ** 2, p["fwhm_px"], p["wing_fraction"], p["wing_width"])
        else:
            half = cluster_half_size(fwhm_px, slope)
            u, n = self._fine_grid(half)
            r2 = u[None, :] ** 2 + u[:, None] ** 2
            alpha = moffat_alpha(fwhm_px, slope)
            moffat = (1.0 + r2 / alpha**2) ** (-slope)
            moffat[r2 > half**2] = 0.0  # truncated at the stamp edge: slopes <= 1 have infinite flux otherwise
            moffat /= moffat.sum()
            fine = fftconvolve(moffat, self.fine_psf(band), mode="same")
        fine = np.clip(fine, 0, None)
        fine /= fine.sum()
        self._cache[key] = (fine, half)
        return fine, half

    def stamp(self, band: str, phase_x: int, phase_y: int, fwhm_px=None, slope=None):
        """Pixel stamp (2 half + 1 square, unit total over the fine model) at sub-pixel phases in [-os//2, os//2]."""
        fine, half = self.fine_model(band, fwhm_px, slope)
        pad = self.os // 2
        if abs(phase_x) > pad or abs(phase_y) > pad:
            raise ValueError(f"phase ({phase_x}, {phase_y}) outside +-{pad} sub-pixels")
        m = (2 * half + 1) * self.os
        y0, x0 = pad - phase_y, pad - phase_x  # fine index j is at u = j - (m - 1) / 2 - pad
        cut = fine[y0 : y0 + m, x0 : x0 + m]
        return cut.reshape(2 * half + 1, self.os, 2 * half + 1, self.os).sum(axis=(1, 3)), half


def quantize_position(x, y, oversample: int = OVERSAMPLE):
    """Positions snapped to the model phases: (x, y, ix, iy, phase_x, phase_y), x = ix + phase_x / oversample."""
    qx = np.round(np.asarray(x, dtype=float) * oversample).astype(int)
    qy = np.round(np.asarray(y, dtype=float) * oversample).astype(int)
    ix = np.floor((qx + oversample // 2) / oversample).astype(int)
    iy = np.floor((qy + oversample // 2) / oversample).astype(int)
    px, py = qx - ix * oversample, qy - iy * oversample
    return qx / oversample, qy / oversample, ix, iy, px, py


def add_stamp(image: np.ndarray, stamp: np.ndarray, ix: int, iy: int, flux: float) -> None:
    """Add ``flux`` x ``stamp`` centred on pixel (ix, iy), clipped at the image edges (in place)."""
    half = stamp.shape[0] // 2
    ny, nx = image.shape
    x0, x1, y0, y1 = ix - half, ix + half + 1, iy - half, iy + half + 1
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = stamp.shape[1] - max(0, x1 - nx), stamp.shape[0] - max(0, y1 - ny)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    image[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] += flux * stamp[sy0:sy1, sx0:sx1]


@lru_cache(maxsize=64)
def _circle_fraction(radius: float, half: int, os: int = 15):
    """Fraction of each stamp pixel inside a centred circle (sub-pixel sampling)."""
    u = (np.arange((2 * half + 1) * os) - ((2 * half + 1) * os - 1) / 2.0) / os
    inside = (u[None, :] ** 2 + u[:, None] ** 2) <= radius**2
    return inside.reshape(2 * half + 1, os, 2 * half + 1, os).mean(axis=(1, 3))


def encircled_fraction(stamp: np.ndarray, radius: float) -> float:
    """Fraction of a centred stamp's flux inside ``radius`` px (flux-normalised stamps: the aperture flux)."""
    half = stamp.shape[0] // 2
    return float((stamp * _circle_fraction(float(radius), half)).sum())


# --------------------------------------------------------------------------- aperture photometry
def aperture_fluxes(sci, err, x, y, radii, annulus=(7.0, 8.0), sigma_clip=3.0, mask=None):
    """Background-subtracted fluxes in circular apertures with a sigma-clipped annulus background.

    Returns a dict: ``flux`` and ``flux_err`` (n_sources x n_radii), ``bkg`` (per-pixel
    background, sigma-clipped median of the annulus), ``bkg_std`` and ``n_bkg``. The error
    combines the ERR map inside the aperture and the error of the background level (the
    annulus standard deviation x sqrt(pi / 2 / n_bkg), the error of a median, times the
    aperture area).
    """
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    positions = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    n = len(positions)
    radii = [float(r) for r in np.atleast_1d(radii)]
    out = {"flux": np.full((n, len(radii)), np.nan), "flux_err": np.full((n, len(radii)), np.nan)}
    if n == 0:
        out.update(bkg=np.zeros(0), bkg_std=np.zeros(0), n_bkg=np.zeros(0, int))
        return out
    bad = ~np.isfinite(sci) | ~np.isfinite(err)
    if mask is not None:
        bad |= mask
    data = np.where(bad, 0.0, sci)
    error = np.where(bad, 0.0, err)
    annulus_ap = CircularAnnulus(positions, r_in=float(annulus[0]), r_out=float(annulus[1]))
    stats = ApertureStats(data, annulus_ap, mask=bad, sigma_clip=SigmaClip(sigma=sigma_clip, maxiters=10))
    bkg = np.nan_to_num(np.asarray(stats.median, dtype=float))
    bkg_std = np.nan_to_num(np.asarray(stats.std, dtype=float))
    n_bkg = np.maximum(np.asarray(stats.sum_aper_area.value, dtype=float), 1.0)
    apertures = [CircularAperture(positions, r=r) for r in radii]
    phot = aperture_photometry(data, apertures, error=error, mask=bad)
    for j, ap in enumerate(apertures):
        area = ap.area_overlap(data, mask=bad)
        raw = np.asarray(phot[f"aperture_sum_{j}"], dtype=float)
        raw_err = np.asarray(phot[f"aperture_sum_err_{j}"], dtype=float)
        out["flux"][:, j] = raw - bkg * area
        # the background is a median: its variance is pi/2 that of a mean of n_bkg pixels
        out["flux_err"][:, j] = np.sqrt(raw_err**2 + (math.pi / 2) * (area * bkg_std) ** 2 / n_bkg)
        empty = np.asarray(area) < 0.5 * math.pi * radii[j] ** 2
        out["flux"][empty, j] = np.nan
        out["flux_err"][empty, j] = np.nan
    out.update(bkg=bkg, bkg_std=bkg_std, n_bkg=n_bkg)
    return out


def read_psf_image(path, oversample: int = OVERSAMPLE) -> np.ndarray:
    """PSF model image resampled to ``oversample`` samples per pixel (odd side, unit sum); OVERSAMP card read."""
    from astropy.io import fits
    from scipy.ndimage import zoom

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: PSF file does not exist")
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[0].data, dtype=float)
        given = int(hdul[0].header.get("OVERSAMP", 1))
    if data.ndim != 2 or data.shape[0] != data.shape[1] or not np.all(np.isfinite(data)) or data.sum() <= 0:
        raise wfutils.InputError(f"{path}: PSF must be a finite, positive, square 2-D image")
    if given != oversample:
        data = np.clip(zoom(data, oversample / given, order=3), 0, None)
    if data.shape[0] % 2 == 0:
        data = np.pad(data, ((0, 1), (0, 1)))
    return data / data.sum()


def measured_stamp_fluxes(stamp: np.ndarray, radii, annulus=(7.0, 8.0)) -> np.ndarray:
    """Fluxes of a noiseless, centred, unit-flux stamp measured like a real source (annulus subtracted)."""
    half = stamp.shape[0] // 2
    size = max(2 * half + 1, 2 * int(annulus[1]) + 7)
    image = np.zeros((size, size))
    c = size // 2
    add_stamp(image, stamp, c, c, 1.0)
    res = aperture_fluxes(image, np.ones_like(image), [c], [c], radii, annulus)
    return res["flux"][0]
