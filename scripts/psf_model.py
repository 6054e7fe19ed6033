"""PSF model of a JWST imaging band, oversampled, for kernels and PSF matching (PHANGS-JWST Sect. 3.10).

Two models, recorded in the header card PSFMODEL:

* ``stpsf`` (WebbPSF's successor; the paper used WebbPSF 1.2.1 "taking the detector effects
  into account"): the band's PSF at the detector's pixel scale, oversampled, with distortion,
  charge diffusion and IPC (``OVERDIST`` extension). Used when ``STPSF_PATH`` names a directory
  holding stpsf's data (``version.txt``); stpsf is never imported otherwise, because without
  its data it tries to download them (see /work/shared/FACTS.md).
* ``poppy`` (the offline fallback): Fraunhofer diffraction of a JWST-like pupil -- 18 hexagonal
  segments of 1.32 m flat to flat with 7 mm gaps, the 0.74 m secondary obscuration and three
  0.1 m struts (one vertical) -- computed with ``poppy``'s matrix Fourier transform, averaged
  over ``n_wavelengths`` evenly spaced wavelengths across a top hat of the filter's published
  width (``BANDPASS_UM``, equal weights), then blurred by a Gaussian for the detector: charge
  diffusion of stpsf's defaults (NIRCam SW 0.0062", LW 0.018") and, for MIRI, the variance of
  stpsf's IPC kernel (alpha 0.033, beta 0.024, c 0.013 -> sigma 0.33 px = 0.036"). No
  wavefront error, no MIRI cruciform: the core and first rings are right, the far wings are
  those of a perfect telescope.

With ``pixel_response`` (default) the PSF is finally convolved with the native detector pixel
(a box of ``oversample`` fine pixels): what a pixel of a JWST image samples is the optical PSF
integrated over that pixel (an "effective PSF"), which is the PSF a kernel has to undo. The
header keeps both widths: FWHM (of the array in the file) and FWHMOPT (before the pixel box,
comparable to stpsf's oversampled PSFs).

Output: one FITS file per band, the PSF (sum 1, odd size, centred on the central pixel) in
the primary HDU with PSFMODEL, FILTER, INSTRUME, CHANNEL, PIXSCALE (arcsec per array pixel),
DETSCALE (native detector pixel), OVERSAMP, FOV, WAVE0/WAVE1/NWAVE (the wavelengths), DETSIG,
PIXRESP, FWHM, FWHMOPT, GFWHM (2D Gaussian fit) and provenance cards. ``--fwhm-table`` gathers
the FWHMs of PSF files into an ECSV table.

Command line::

    python scripts/psf_model.py --filter F770W --out results/psf/F770W_psf.fits [--params JSON]
    python scripts/psf_model.py --fwhm-table results/psf/psf_fwhm.ecsv results/psf/*_psf.fits
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from wflib import survey_plan, wfutils

log = logging.getLogger("psf_model")

DEFAULTS = {
    "model": "auto",  # auto (stpsf when STPSF_PATH is valid, else poppy) | stpsf | poppy
    "oversample": 4,  # array pixels per native detector pixel
    "fov_arcsec": {"NRC_SW": 8.0, "NRC_LW": 8.0, "MIRI": 16.0},
    "n_wavelengths": 9,  # across the filter's top hat (fewer for narrow filters, see wavelength_grid)
    "pupil_npix": 512,  # pupil samples across 6.6 m (poppy)
    "detector_sigma_arcsec": {"NRC_SW": 0.0062, "NRC_LW": 0.018, "MIRI": 0.036},
    "pixel_response": True,
}

# Pivot wavelength and bandwidth (micron) of the JWST imaging filters (JWST User Documentation,
# NIRCam and MIRI filter tables). The poppy model averages over [pivot - width/2, pivot + width/2].
BANDPASS_UM = {
    "F070W": (0.704, 0.128), "F090W": (0.901, 0.194), "F115W": (1.154, 0.225), "F140M": (1.404, 0.142),
    "F150W": (1.501, 0.318), "F162M": (1.626, 0.168), "F164N": (1.644, 0.020), "F150W2": (1.671, 1.227),
    "F182M": (1.845, 0.238), "F187N": (1.874, 0.024), "F200W": (1.990, 0.461), "F210M": (2.093, 0.205),
    "F212N": (2.120, 0.027), "F250M": (2.503, 0.181), "F277W": (2.786, 0.672), "F300M": (2.996, 0.318),
    "F322W2": (3.247, 1.339), "F323N": (3.237, 0.038), "F335M": (3.365, 0.347), "F356W": (3.563, 0.787),
    "F360M": (3.621, 0.372), "F405N": (4.055, 0.046), "F410M": (4.092, 0.436), "F430M": (4.280, 0.228),
    "F444W": (4.421, 1.024), "F460M": (4.624, 0.228), "F466N": (4.654, 0.054), "F470N": (4.707, 0.051),
    "F480M": (4.834, 0.303), "F560W": (5.6, 1.2), "F770W": (7.7, 2.2), "F1000W": (10.0, 2.0),
    "F1130W": (11.3, 0.7), "F1280W": (12.8, 2.4), "F1500W": (15.0, 3.0), "F1800W": (18.0, 3.0),
    "F2100W": (21.0, 5.0), "F2550W": (25.5, 4.0),
}  # fmt: skip

# JWST-like pupil (poppy): segment flat-to-flat size and gap, secondary mirror and struts.
SEGMENT_FLAT_TO_FLAT_M = 1.32
SEGMENT_GAP_M = 0.007
PUPIL_DIAMETER_M = 6.603464  # circumscribed, outer corners of the B segments
SECONDARY_RADIUS_M = 0.37
STRUT_WIDTH_M = 0.1
ARCSEC_PER_RAD = 206264.806
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------- pure functions
def wavelength_grid(filter_name: str, n_wavelengths: int) -> np.ndarray:
    """Wavelengths (m) sampling the filter's top hat at bin centres; 3 at least, fewer for narrow bands.

    A band narrower than 5% of its pivot needs no more than 3 samples (its PSF barely changes
    across it), so the count is ``max(3, min(n, ceil(n x 20 width/pivot)))``.
    """
    if filter_name not in BANDPASS_UM:
        raise wfutils.InputError(f"no bandpass for filter {filter_name!r}; known: {', '.join(sorted(BANDPASS_UM))}")
    pivot, width = BANDPASS_UM[filter_name]
    n = max(3, min(int(n_wavelengths), math.ceil(n_wavelengths * 20 * width / pivot)))
    edges = np.linspace(pivot - width / 2, pivot + width / 2, n + 1)
    return 0.5 * (edges[1:] + edges[:-1]) * 1e-6


def pixel_box(psf: np.ndarray, width_px: int) -> np.ndarray:
    """``psf`` convolved with a square box ``width_px`` array pixels wide, centred on a pixel.

    An even width has half-weight end pixels (trapezoid integration of the box), so the
    result stays centred on the same pixel. Separable, edges zero-padded.
    """
    from scipy.ndimage import convolve1d

    if width_px <= 1:
        return psf
    if width_px % 2:
        w = np.ones(width_px)
    else:
        w = np.ones(width_px + 1)
        w[0] = w[-1] = 0.5
    w /= w.sum()
    out = convolve1d(psf, w, axis=0, mode="constant")
    return convolve1d(out, w, axis=1, mode="constant")


def detector_blur(psf: np.ndarray, sigma_arcsec: float, pixscale: float) -> np.ndarray:
    """Gaussian detector blur (charge diffusion / IPC approximation) of ``sigma_arcsec``."""
    from scipy.ndimage import gaussian_filter

    if sigma_arcsec <= 0:
        return psf
    return gaussian_filter(psf, sigma_arcsec / pixscale, mode="constant", truncate=5.0)


def radial_profile(image: np.ndarray, center=None, bin_px: float = 0.5):
    """Azimuthal mean of ``image`` in annuli ``bin_px`` wide: (mean radius, mean value) of each non-empty annulus.

    ``center`` (y, x) defaults to the array centre. The first annulus [0, bin_px) holds the
    central pixel alone when the centre is a pixel centre.
    """
    ny, nx = image.shape
    cy, cx = ((ny - 1) / 2, (nx - 1) / 2) if center is None else center
    y, x = np.indices(image.shape)
    r = np.hypot(y - cy, x - cx).ravel()
    which = (r / bin_px).astype(np.int64)
    counts = np.bincount(which)
    keep = counts > 0
    rmean = np.bincount(which, weights=r)[keep] / counts[keep]
    vmean = np.bincount(which, weights=image.ravel().astype(np.float64))[keep] / counts[keep]
    return rmean, vmean


def circularise(image: np.ndarray, bin_px: float = 0.5) -> np.ndarray:
    """Rotationally symmetric version of ``image`` about the array centre (Aniano et al. 2011, Sect. 2.3).

    Aniano et al. average the PSF over many rotations; the limit of that average is the
    azimuthal mean, which this computes directly: the mean profile in ``bin_px`` annuli,
    interpolated linearly at each pixel's radius. Zero beyond the largest circle inside the array.
    """
    rmean, vmean = radial_profile(image, bin_px=bin_px)
    ny, nx = image.shape
    y, x = np.indices(image.shape)
    r = np.hypot(y - (ny - 1) / 2, x - (nx - 1) / 2)
    out = np.interp(r, rmean, vmean)
    out[r > (min(ny, nx) - 1) / 2] = 0.0
    return out


def half_max_fwhm(image: np.ndarray, pixscale: float, center=None, bin_px: float = 0.25) -> float:
    """FWHM (arcsec) of the azimuthally averaged profile: twice the radius where it falls to half its peak."""
    rmean, vmean = radial_profile(image, center=center, bin_px=bin_px)
    peak = vmean[0]
    below = np.nonzero(vmean < 0.5 * peak)[0]
    if peak <= 0 or below.size == 0:
        return math.nan
    i = below[0]
    r = np.interp(0.5 * peak, [vmean[i], vmean[i - 1]], [rmean[i], rmean[i - 1]])
    return float(2.0 * r * pixscale)


def gaussian_fit_fwhm(image: np.ndarray, pixscale: float, half_size_px: int | None = None) -> float:
    """FWHM (arcsec) of a 2D Gaussian fitted to the core of ``image``: mean of the two axes.

    The fit is restricted to a square of ``half_size_px`` (default 3 x the half-maximum width)
    around the peak, so the rings and wings of a diffraction PSF do not pull it.
    """
    from astropy.modeling import fitting, models

    ny, nx = image.shape
    jy, jx = np.unravel_index(np.nanargmax(image), image.shape)
    if half_size_px is None:
        guess = half_max_fwhm(image, 1.0, center=(jy, jx)) if np.isfinite(image).all() else 3.0
        half_size_px = int(max(3, math.ceil(1.5 * (guess if np.isfinite(guess) else 3.0))))
    y0, y1 = max(0, jy - half_size_px), min(ny, jy + half_size_px + 1)
    x0, x1 = max(0, jx - half_size_px), min(nx, jx + half_size_px + 1)
    cut = image[y0:y1, x0:x1]
    y, x = np.mgrid[y0:y1, x0:x1]
    good = np.isfinite(cut)
    sigma0 = max(1.0, half_size_px / 3.0)
    model = models.Gaussian2D(amplitude=float(image[jy, jx]), x_mean=jx, y_mean=jy, x_stddev=sigma0, y_stddev=sigma0)
    fit = fitting.LevMarLSQFitter()(model, x[good], y[good], cut[good])
    return float(FWHM_PER_SIGMA * 0.5 * (abs(fit.x_stddev.value) + abs(fit.y_stddev.value)) * pixscale)


def jwst_pupil():
    """poppy optic of a JWST-like pupil: 18 hexagonal segments, secondary obscuration, 3 struts."""
    import astropy.units as u
    import poppy

    segments = poppy.MultiHexagonAperture(
        rings=2, flattoflat=SEGMENT_FLAT_TO_FLAT_M * u.m, gap=SEGMENT_GAP_M * u.m, center=False
    )
    secondary = poppy.SecondaryObscuration(
        secondary_radius=SECONDARY_RADIUS_M * u.m, n_supports=3, support_width=STRUT_WIDTH_M * u.m,
        support_angle_offset=90.0,
    )  # fmt: skip
    return poppy.CompoundAnalyticOptic([segments, secondary], name="JWST-like pupil")


def poppy_psf(wavelengths_m, pixscale: float, fov_px: int, pupil_npix: int) -> np.ndarray:
    """Polychromatic Fraunhofer PSF (sum 1 over the array) of the JWST-like pupil, equal weights per wavelength."""
    import astropy.units as u
    import poppy

    logging.getLogger("poppy").setLevel(logging.WARNING)
    osys = poppy.OpticalSystem(
        name="JWST-like", npix=int(pupil_npix), oversample=1, pupil_diameter=PUPIL_DIAMETER_M * u.m
    )
    osys.add_pupil(jwst_pupil())
    osys.add_detector(pixelscale=pixscale * u.arcsec / u.pixel, fov_pixels=int(fov_px), oversample=1)
    wavelengths = np.asarray(wavelengths_m, dtype=float)
    source = {"wavelengths": wavelengths, "weights": np.full(wavelengths.size, 1.0 / wavelengths.size)}
    hdul = osys.calc_psf(source=source, normalize="first")
    psf = np.asarray(hdul[0].data, dtype=np.float64)
    return psf


def stpsf_data_path() -> Path | None:
    """stpsf's data directory if ``STPSF_PATH`` names one holding its ``version.txt``, else None."""
    value = os.environ.get("STPSF_PATH")
    if not value:
        return None
    path = Path(value)
    return path if (path / "version.txt").is_file() else None


def odd_centred(psf: np.ndarray) -> np.ndarray:
    """An even-sized PSF (centred between pixels, as stpsf's with an even oversampling) interpolated by half a
    pixel onto an odd grid centred on its central pixel (cubic spline), sum 1; odd sizes are returned as they are."""
    from scipy.ndimage import map_coordinates

    ny, nx = psf.shape
    if ny % 2 and nx % 2 and ny == nx:
        return psf
    n = min(ny, nx) - 1 if min(ny, nx) % 2 == 0 else min(ny, nx)
    r = np.arange(n) - (n - 1) / 2
    yy, xx = np.meshgrid(r + (ny - 1) / 2, r + (nx - 1) / 2, indexing="ij")
    out = map_coordinates(psf, [yy, xx], order=3, mode="constant", cval=0.0)
    return out / out.sum()


def stpsf_psf(filter_name: str, oversample: int, fov_arcsec: float, n_wavelengths: int):
    """(psf, pixscale) from stpsf: the OVERDIST extension (distortion and detector effects), odd size, sum 1."""
    import stpsf

    instrument = stpsf.MIRI() if survey_plan.instrument_of(filter_name) == "MIRI" else stpsf.NIRCam()
    instrument.filter = filter_name
    fov_px = int(round(fov_arcsec / instrument.pixelscale)) | 1
    hdul = instrument.calc_psf(oversample=int(oversample), fov_pixels=fov_px, nlambda=int(n_wavelengths))
    ext = "OVERDIST" if "OVERDIST" in hdul else 0
    psf = odd_centred(np.asarray(hdul[ext].data, dtype=np.float64))
    return psf / psf.sum(), float(hdul[ext].header["PIXELSCL"])


def choose_model(requested: str) -> str:
    """The model to run: ``poppy``/``stpsf`` as asked, ``auto`` -> stpsf if its data are configured."""
    if requested == "poppy":
        return "poppy"
    path = stpsf_data_path()
    if requested == "stpsf":
        if path is None:
            raise wfutils.InputError(
                f"psf model 'stpsf' asked for, but STPSF_PATH ({os.environ.get('STPSF_PATH')!r}) does not name a "
                "directory with stpsf's data (version.txt); set it, or use model 'auto' or 'poppy'"
            )
        return "stpsf"
    if requested != "auto":
        raise wfutils.InputError(f"unknown psf model {requested!r} (auto, stpsf or poppy)")
    if path is None:
        log.info(
            "stpsf not used: STPSF_PATH (%r) does not name stpsf's data; offline poppy model",
            os.environ.get("STPSF_PATH"),
        )
        return "poppy"
    return "stpsf"


def build_psf(filter_name: str, params: dict) -> tuple[np.ndarray, dict]:
    """The band's PSF (sum 1) and its header values, with the model ``params['model']`` chooses."""
    params = {**DEFAULTS, **params}
    channel = survey_plan.channel_of(filter_name)
    detscale = survey_plan.CHANNELS[channel]["pixscale"]
    oversample = int(params["oversample"])
    fov = float(params["fov_arcsec"][channel])
    model = choose_model(params["model"])
    wavelengths = wavelength_grid(filter_name, params["n_wavelengths"])
    t0 = time.time()
    psf = None
    if model == "stpsf":
        try:
            psf, pixscale = stpsf_psf(filter_name, oversample, fov, len(wavelengths))
            detsig = 0.0  # stpsf's OVERDIST already holds its detector effects
        except Exception as exc:  # noqa: BLE001 -- stpsf raises many types; auto falls back
            if params["model"] == "stpsf":
                raise
            log.warning("stpsf failed for %s (%s: %s); using the poppy model", filter_name, type(exc).__name__, exc)
            model = "poppy"
    if psf is None:
        pixscale = detscale / oversample
        fov_px = int(round(fov / pixscale)) | 1
        psf = poppy_psf(wavelengths, pixscale, fov_px, params["pupil_npix"])
        detsig = float(params["detector_sigma_arcsec"][channel])
        psf = detector_blur(psf, detsig, pixscale)
    psf = psf / psf.sum()
    optical = psf
    if params["pixel_response"]:
        psf = pixel_box(psf, int(round(detscale / pixscale)))
        psf = psf / psf.sum()
    info = {
        "model": model,
        "filter": filter_name,
        "instrument": survey_plan.instrument_of(filter_name),
        "channel": channel,
        "pixscale": pixscale,
        "detscale": detscale,
        "oversample": int(round(detscale / pixscale)),
        "fov": psf.shape[0] * pixscale,
        "wave0_um": float(wavelengths[0] * 1e6),
        "wave1_um": float(wavelengths[-1] * 1e6),
        "nwave": int(len(wavelengths)),
        "detsig": detsig,
        "pixresp": bool(params["pixel_response"]),
        "fwhm": half_max_fwhm(psf, pixscale),
        "fwhm_optical": half_max_fwhm(optical, pixscale),
        "gauss_fwhm": gaussian_fit_fwhm(psf, pixscale),
        "seconds": time.time() - t0,
    }
    return psf, info


# --------------------------------------------------------------------------- FITS I/O
HEADER_CARDS = (
    ("PSFMODEL", "model", "PSF model: stpsf or poppy (JWST-like pupil)"),
    ("FILTER", "filter", "JWST filter"),
    ("INSTRUME", "instrument", "instrument"),
    ("CHANNEL", "channel", "detector channel"),
    ("PIXSCALE", "pixscale", "[arcsec] size of an array pixel"),
    ("DETSCALE", "detscale", "[arcsec] native detector pixel"),
    ("OVERSAMP", "oversample", "array pixels per detector pixel"),
    ("FOV", "fov", "[arcsec] side of the array"),
    ("WAVE0", "wave0_um", "[micron] first wavelength sampled"),
    ("WAVE1", "wave1_um", "[micron] last wavelength sampled"),
    ("NWAVE", "nwave", "wavelengths averaged (top hat)"),
    ("DETSIG", "detsig", "[arcsec] Gaussian detector blur sigma"),
    ("PIXRESP", "pixresp", "convolved with the detector pixel"),
    ("FWHM", "fwhm", "[arcsec] half-maximum width, azimuthal mean"),
    ("FWHMOPT", "fwhm_optical", "[arcsec] FWHM before the pixel response"),
    ("GFWHM", "gauss_fwhm", "[arcsec] FWHM of a 2D Gaussian fit to the core"),
)


def write_psf(path, psf: np.ndarray, info: dict, cfg_hash=None) -> None:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(psf.astype(np.float64))
    for key, name, comment in HEADER_CARDS:
        value = info[name]
        hdu.header[key] = (round(value, 6) if isinstance(value, float) else value, comment)
    hdu.header["PSFSUM"] = (float(psf.sum()), "sum of the array")
    hdu.header["CRPIX1"] = (psf.shape[1] + 1) / 2
    hdu.header["CRPIX2"] = (psf.shape[0] + 1) / 2
    hdu.header["CDELT1"] = -info["pixscale"] / 3600.0
    hdu.header["CDELT2"] = info["pixscale"] / 3600.0
    wfutils.write_hdulist(fits.HDUList([hdu]), path, [], cfg_hash, "psf_model")


def read_psf(path) -> tuple[np.ndarray, dict]:
    """PSF array (sum 1) and header of a PSF FITS file; a clear error for a file that is not one."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: PSF file does not exist")
    try:
        with fits.open(path) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
            header = hdul[0].header.copy()
    except Exception as exc:  # astropy raises many types for damaged files
        raise wfutils.InputError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[0] % 2 == 0 or data.shape[1] % 2 == 0:
        raise wfutils.InputError(f"{path}: a PSF must be a 2D array of odd size, got shape {data.shape}")
    if "PIXSCALE" not in header:
        raise wfutils.InputError(f"{path}: no PIXSCALE card (arcsec per pixel) in the primary header")
    if not np.isfinite(data).all() or data.sum() <= 0:
        raise wfutils.InputError(f"{path}: PSF has non-finite values or a non-positive sum")
    return data / data.sum(), header


def fwhm_table(paths):
    """Astropy table of the FWHMs of PSF files (one row per band, by wavelength)."""
    from astropy.table import Table

    rows = []
    for p in paths:
        _, h = read_psf(p)
        rows.append(
            {
                "filter": h.get("FILTER", Path(p).stem), "instrument": h.get("INSTRUME", ""),
                "model": h.get("PSFMODEL", ""), "pixscale_arcsec": h["PIXSCALE"], "oversample": h.get("OVERSAMP", 1),
                "fwhm_arcsec": h.get("FWHM"), "fwhm_optical_arcsec": h.get("FWHMOPT"),
                "gauss_fwhm_arcsec": h.get("GFWHM"), "wave0_um": h.get("WAVE0"), "wave1_um": h.get("WAVE1"),
                "nwave": h.get("NWAVE"),
            }
        )  # fmt: skip
    rows.sort(key=lambda r: (r["instrument"] == "MIRI", int(r["filter"][1:-1]) if r["filter"][1:-1].isdigit() else 0))
    table = Table(rows=rows) if rows else Table()
    table.meta["description"] = "PSF FWHM per band (scripts/psf_model.py): half-maximum of the azimuthal mean"
    return table


# --------------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", help="JWST filter, e.g. F770W")
    parser.add_argument("--out", help="output PSF FITS file")
    parser.add_argument("--params", default="{}", help="JSON overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--fwhm-table", help="instead: write the FWHM table (ECSV) of the PSF files given")
    parser.add_argument("psfs", nargs="*", help="PSF files (with --fwhm-table)")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    if args.fwhm_table:
        table = fwhm_table(args.psfs)
        with wfutils.atomic_output(args.fwhm_table) as tmp:
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        log.info("FWHM table of %d bands -> %s", len(table), args.fwhm_table)
        return
    if not args.filter or not args.out:
        parser.error("--filter and --out are required (or --fwhm-table)")
    params = json.loads(args.params)
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown psf_model parameter(s): {', '.join(sorted(unknown))}")
    try:
        survey_plan.channel_of(args.filter)
    except ValueError as exc:
        raise wfutils.InputError(str(exc)) from exc
    psf, info = build_psf(args.filter, params)
    log.info(
        "%s: %s model, %d x %d px of %.5f\" (oversample %d), %d wavelengths %.3f-%.3f um; FWHM %.4f\" "
        "(before pixel response %.4f\", Gaussian fit %.4f\") in %.1f s",
        args.filter, info["model"], psf.shape[1], psf.shape[0], info["pixscale"], info["oversample"], info["nwave"],
        info["wave0_um"], info["wave1_um"], info["fwhm"], info["fwhm_optical"], info["gauss_fwhm"], info["seconds"],
    )  # fmt: skip
    write_psf(args.out, psf, info, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
