"""Convolve a mosaic with a PSF-matching kernel: an image at a common resolution (PHANGS-JWST Sect. 3.10).

The kernel (``make_kernel.py``, made on the PSF's oversampled grid) is first put on the
image's pixel grid: band-limited to the image's Nyquist frequency (a cosine taper from
``taper_start`` x Nyquist to Nyquist, so nothing the pixels cannot carry is aliased), sampled
by cubic-spline interpolation at the image pixel centres and normalised to sum 1. The image
is then convolved by FFT (overlap-add), NaN-aware: with m the mask of finite pixels,

    SCI' = conv(SCI m, K) / conv(m, K),   ERR' = sqrt(conv(ERR^2 m, K^2)) / conv(m, K)

(standard error propagation for uncorrelated pixel noise, as the paper does; ERR' is the
error of each output pixel, neighbouring output pixels are now correlated). Away from
missing pixels conv(m, K) = 1 and this is the plain convolution, which conserves flux; next to
them the renormalisation fills the kernel's missing weight. NaN input pixels stay NaN, and
output pixels whose kernel weight on finite pixels, conv(m, K), is below ``min_coverage``
become NaN (mosaic edges and holes). SCI and ERR are written (MJy/sr, the input's WCS); the
other extensions (CON, WHT, VAR_*) are dropped because a convolution makes them invalid. The
resolution goes to the SCI and primary headers: BMAJ, BMIN (deg), BPA, RESOLUTN (arcsec),
PSFMATCH (the kernel's target), with the kernel's quality metrics (KERN_D, KERN_WM, KSAFETY).

Command line::

    python scripts/convolve_image.py --kernel KERNEL.fits MOSAIC_i2d.fits MATCHED.fits [--params JSON]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("convolve_image")

DEFAULTS = {
    "min_coverage": 0.5,  # output NaN where the kernel's weight on finite input pixels is below this
    "taper_start": 0.8,  # kernel band limit: cosine taper from this x the image Nyquist frequency to Nyquist
}


# --------------------------------------------------------------------------- pure functions
def band_limit(kernel: np.ndarray, pixscale: float, f_max: float, taper_start: float) -> np.ndarray:
    """``kernel`` with its Fourier transform tapered to 0 at ``f_max`` (cycles/arcsec), from taper_start f_max."""
    n = kernel.shape[0]
    f = np.fft.fftfreq(n, d=pixscale)
    k = np.hypot(f[:, None], f[None, :])
    f0 = taper_start * f_max
    w = np.clip((k - f0) / max(f_max - f0, 1e-12), 0.0, 1.0)
    filt = np.where(k <= f0, 1.0, 0.5 * (1.0 + np.cos(np.pi * w)))
    filt[k >= f_max] = 0.0
    ft = np.fft.fft2(np.fft.ifftshift(kernel))
    return np.fft.fftshift(np.real(np.fft.ifft2(ft * filt)))


def kernel_on_grid(kernel: np.ndarray, kernel_scale: float, image_scale: float, taper_start: float = 0.8) -> np.ndarray:
    """The kernel sampled on the image's pixel grid (odd size, centred, sum 1).

    A coarser image grid gets the kernel band-limited to its Nyquist frequency first
    (``band_limit``); the samples are cubic-spline interpolations at the image pixel centres,
    the right discretisation of a convolution of images that sample a smooth sky.
    """
    from scipy.ndimage import map_coordinates

    if math.isclose(kernel_scale, image_scale, rel_tol=1e-6):
        return kernel / kernel.sum()
    if image_scale > kernel_scale:
        kernel = band_limit(kernel, kernel_scale, 0.5 / image_scale, taper_start)
    n_in = kernel.shape[0]
    half = int((n_in - 1) / 2 * kernel_scale / image_scale)
    size = 2 * max(half, 1) + 1
    c_in = (n_in - 1) / 2
    r = (np.arange(size) - (size - 1) / 2) * (image_scale / kernel_scale) + c_in
    yy, xx = np.meshgrid(r, r, indexing="ij")
    out = map_coordinates(kernel, [yy, xx], order=3, mode="constant", cval=0.0)
    return out / out.sum()


def convolve_masked(image: np.ndarray, kernel: np.ndarray, min_coverage: float = 0.5, err: np.ndarray | None = None):
    """NaN-aware FFT convolution of ``image`` (and error propagation of ``err``) with a kernel of sum 1.

    Returns (convolved image, convolved error or None, coverage conv(m, K)); NaN where the input
    is NaN or the coverage is below ``min_coverage``.
    """
    from scipy.signal import oaconvolve

    finite = np.isfinite(image)
    if err is not None:
        finite &= np.isfinite(err)
    mask = finite.astype(np.float64)
    coverage = oaconvolve(mask, kernel, mode="same")
    out = oaconvolve(np.where(finite, image, 0.0).astype(np.float64), kernel, mode="same")
    bad = ~finite | (coverage < max(min_coverage, 1e-6))
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= coverage
    out[bad] = np.nan
    err_out = None
    if err is not None:
        var = oaconvolve(np.where(finite, err.astype(np.float64) ** 2, 0.0), kernel**2, mode="same")
        with np.errstate(invalid="ignore", divide="ignore"):
            err_out = np.sqrt(np.clip(var, 0.0, None)) / coverage
        err_out[bad] = np.nan
    return out, err_out, coverage


def gaussian_kernel_px(fwhm_px: float) -> np.ndarray:
    """Normalised circular Gaussian of ``fwhm_px`` pixels on an odd grid of +-4 sigma (at least 3 x 3)."""
    sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = max(1, int(math.ceil(4 * sigma)))
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


# --------------------------------------------------------------------------- FITS I/O
def pixel_scale_arcsec(header) -> float:
    """Mean pixel scale (arcsec) of an image from its celestial WCS."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)) * 3600.0)


def read_kernel(path):
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: kernel file does not exist")
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float64)
        header = hdul[0].header.copy()
    if data.ndim != 2 or data.shape[0] != data.shape[1] or data.shape[0] % 2 == 0:
        raise wfutils.InputError(f"{path}: a kernel must be a square 2D array of odd size, got {data.shape}")
    if "PIXSCALE" not in header or not np.isfinite(data).all() or abs(data.sum()) == 0:
        raise wfutils.InputError(f"{path}: not a kernel (PIXSCALE card, finite values and a non-zero sum needed)")
    return data / data.sum(), header


def matched_cards(kheader, kernel_path, image_scale: float, kernel_px: int) -> list[tuple[str, object, str]]:
    fwhm = float(kheader.get("TFWHM", math.nan))
    return [
        ("BMAJ", fwhm / 3600.0, "[deg] beam major axis FWHM"),
        ("BMIN", fwhm / 3600.0, "[deg] beam minor axis FWHM"),
        ("BPA", 0.0, "[deg] beam position angle"),
        ("RESOLUTN", fwhm, "[arcsec] resolution (FWHM) after convolution"),
        ("PSFMATCH", str(kheader.get("KTARGET", "")), "target PSF of the kernel"),
        ("KSOURCE", str(kheader.get("KSOURCE", "")), "source PSF of the kernel"),
        ("KERNFILE", Path(kernel_path).name[:68], "kernel file"),
        ("KERN_D", float(kheader.get("KERN_D", math.nan)), "kernel D (Aniano eq. 20)"),
        ("KERN_WM", float(kheader.get("KERN_WM", math.nan)), "kernel W- (Aniano eq. 21)"),
        ("KSAFETY", str(kheader.get("KSAFETY", "")), "W- class of the kernel"),
        ("KERNPIX", kernel_px, "kernel side on the image grid (pixels)"),
        ("IMSCALE", image_scale, "[arcsec] image pixel scale"),
        ("CONVEXT", "SCI,ERR", "extensions convolved; CON/WHT/VAR_* dropped"),
    ]


def convolve_file(image_path, kernel_path, out_path, params: dict, cfg_hash=None) -> dict:
    from astropy.io import fits

    t0 = time.time()
    kernel, kheader = read_kernel(kernel_path)
    with fits.open(image_path, memmap=True) as hdul:
        primary = hdul[0].header.copy()
        sci_header = hdul["SCI"].header.copy()
        err_header = hdul["ERR"].header.copy()
        sci = np.asarray(hdul["SCI"].data, dtype=np.float64)
        err = np.asarray(hdul["ERR"].data, dtype=np.float64)
    image_scale = pixel_scale_arcsec(sci_header)
    k = kernel_on_grid(kernel, float(kheader["PIXSCALE"]), image_scale, params["taper_start"])
    out, err_out, coverage = convolve_masked(sci, k, params["min_coverage"], err)
    n_in, n_out = int(np.isfinite(sci).sum()), int(np.isfinite(out).sum())
    del coverage, sci, err
    cards = matched_cards(kheader, kernel_path, image_scale, k.shape[0])
    for key, value, comment in cards:
        primary[key] = (value, comment)
        sci_header[key] = (value, comment)
    primary["FILENAME"] = Path(out_path).name
    hdus = [
        fits.PrimaryHDU(header=primary),
        fits.ImageHDU(out.astype(np.float32), header=sci_header, name="SCI"),
        fits.ImageHDU(err_out.astype(np.float32), header=err_header, name="ERR"),
    ]
    wfutils.write_hdulist(fits.HDUList(hdus), out_path, [image_path, kernel_path], cfg_hash, "convolve_image")
    return {
        "image_scale": image_scale,
        "kernel_px": k.shape[0],
        "finite_in": n_in,
        "finite_out": n_out,
        "resolution": float(kheader.get("TFWHM", math.nan)),
        "target": kheader.get("KTARGET", ""),
        "seconds": time.time() - t0,
        "shape": out.shape,
    }


# --------------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="mosaic (i2d FITS with SCI and ERR in MJy/sr)")
    parser.add_argument("output", help="PSF-matched image (SCI, ERR)")
    parser.add_argument("--kernel", required=True, help="kernel FITS from make_kernel.py")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input, extensions=("SCI", "ERR"))
    params = json.loads(args.params)
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown convolve_image parameter(s): {', '.join(sorted(unknown))}")
    info = convolve_file(args.input, args.kernel, args.output, {**DEFAULTS, **params}, args.config_hash)
    log.info(
        "%s (%d x %d px of %.4f\") convolved to %s (FWHM %.3f\") with a %d px kernel; %d of %d finite pixels kept "
        "(coverage >= %.2f); %.1f s",
        Path(args.input).name, info["shape"][1], info["shape"][0], info["image_scale"], info["target"],
        info["resolution"], info["kernel_px"], info["finite_out"], info["finite_in"], params.get("min_coverage",
        DEFAULTS["min_coverage"]), info["seconds"],
    )  # fmt: skip


if __name__ == "__main__":
    wfutils.run_cli(main)
