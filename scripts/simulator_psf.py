"""The synthetic survey's PSF of one band as an oversampled PSF FITS file (the PSF-model file format).

The simulator renders every source with a two-Gaussian PSF (``simulate_survey.psf_components``:
a diffraction core of FWHM 1.03 lambda/D and broad wings) integrated over the detector pixels.
This script writes that model, as a mosaic sees it, in the format of the workflow's PSF models
(``results/psf/<band>_psf.fits``: a normalised, oversampled image in the primary HDU with
``PIXSCALE`` = arcsec per array pixel and ``OVERSAMP`` = detector pixel / array pixel), so that
the depth step can use either. The optical PSF is integrated over the oversampled pixels
(error functions) and then convolved with top-hat boxes given by ``--pixel-boxes`` (arcsec):
the detector pixel the simulator integrates over and, for a drizzled mosaic, the drizzle
footprint (input pixel x pixfrac).

Command line::

    python scripts/simulator_psf.py --filter F200W --sim config/config.yaml --pixel-scale 0.031
        [--oversample 4] [--size-arcsec 6] [--pixel-boxes 0.031,0.031] --out F200W_psf.fits [--log LOG]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import simulate_survey
from wflib import wfutils


def render_psf(components, pixel_scale: float, oversample: int, size_arcsec: float, boxes_arcsec=()) -> np.ndarray:
    """Normalised PSF on an odd grid of ``pixel_scale / oversample`` pixels, centred on the middle pixel.

    ``components``: (weight, sigma_arcsec) Gaussians; each array pixel holds the Gaussians
    integrated over its area; then one separable top-hat convolution per entry of ``boxes_arcsec``.
    """
    from scipy.ndimage import convolve1d
    from scipy.special import erf

    fine = pixel_scale / oversample
    half = int(math.ceil(size_arcsec / 2 / fine))
    edges = (np.arange(-half, half + 2) - 0.5) * fine
    image = np.zeros((2 * half + 1, 2 * half + 1))
    for weight, sigma in components:
        profile = np.diff(erf(edges / (math.sqrt(2.0) * sigma))) / 2
        image += weight * np.outer(profile, profile)
    for box in boxes_arcsec:
        width = box / fine
        n = int(math.floor(width / 2 + 0.5))
        offsets = np.arange(-n, n + 1)
        kernel = np.clip(width / 2 + 0.5 - np.abs(offsets), 0.0, 1.0)
        kernel /= kernel.sum()
        image = convolve1d(convolve1d(image, kernel, axis=0, mode="constant"), kernel, axis=1, mode="constant")
    return image / image.sum()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", required=True)
    parser.add_argument("--sim", required=True, help="simulation config: JSON string or workflow config YAML")
    parser.add_argument("--pixel-scale", type=float, required=True, help="detector (mosaic) pixel scale, arcsec")
    parser.add_argument("--oversample", type=int, default=4)
    parser.add_argument("--size-arcsec", type=float, default=6.0)
    parser.add_argument("--pixel-boxes", default="", help="comma-separated top-hat widths (arcsec) to convolve with")
    parser.add_argument("--out", required=True)
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    from astropy.io import fits

    wfutils.setup_logging(args.log)
    sim = simulate_survey.load_sim_config(args.sim)
    if "psf" not in sim:
        raise wfutils.InputError(f"{args.sim}: no simulation.psf section")
    components = simulate_survey.psf_components(args.filter, sim["psf"])
    boxes = [float(b) for b in args.pixel_boxes.split(",") if b.strip()]
    psf = render_psf(components, args.pixel_scale, args.oversample, args.size_arcsec, boxes)
    header = fits.Header()
    header["FILTER"] = args.filter
    header["PIXSCALE"] = (args.pixel_scale / args.oversample, "[arcsec] pixel scale of this array")
    header["OVERSAMP"] = (args.oversample, "detector pixel / array pixel")
    header["DETSCALE"] = (args.pixel_scale, "[arcsec] detector (mosaic) pixel scale")
    header["PSFMODEL"] = ("simulator two-Gaussian", "simulate_survey.psf_components")
    header["FWHM"] = (simulate_survey.psf_fwhm_arcsec(args.filter, sim["psf"]), "[arcsec] core FWHM (optical)")
    header["PIXBOXES"] = (args.pixel_boxes or "none", "[arcsec] top-hat convolutions applied")
    for i, (weight, sigma) in enumerate(components, start=1):
        header[f"GWEIGHT{i}"] = (weight, "Gaussian component weight")
        header[f"GSIGMA{i}"] = (sigma, "[arcsec] Gaussian component sigma")
    wfutils.write_hdulist(
        fits.HDUList([fits.PrimaryHDU(psf.astype(np.float32), header)]),
        args.out,
        [],
        args.config_hash,
        "simulator_psf",
    )


if __name__ == "__main__":
    wfutils.run_cli(main)
