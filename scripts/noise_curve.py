"""Noise versus smoothing of a mosaic: the QA curve of PHANGS-JWST Sect. 4.1 (their Fig. 10).

On the source-free pixels of the mosaic (the CEERS tiered mask of ``noise_model.sky_mask``,
smooth background of ``background_box_px`` removed), the image is convolved with circular
Gaussians of increasing FWHM (``kernel_fwhm_arcsec``; NaN-aware, masked pixels left out, so
sources do not leak into the sky) and the robust standard deviation (biweight) of the pixels
whose kernel footprint is at least ``min_coverage`` source-free is measured. Next to it:

* the uncorrelated-noise prediction sigma_0 sqrt(sum K^2) from the native scatter sigma_0 --
  what the curve would be if pixels were independent; and the same prediction scaled to the
  measured curve at ``reference_resolution_arcsec`` (the paper's grey dashed line);
* the median propagated error sqrt(conv(ERR^2, K^2)) of convolve_image.py's error maps.

The final resolution is sqrt(native FWHM^2 + kernel FWHM^2) with the native FWHM from the
band's PSF file. Measured on the best-covered window of at most ``max_side`` pixels a side.
Writes an ECSV table (one row per kernel FWHM) and a PNG.

Command line::

    python scripts/noise_curve.py MOSAIC_i2d.fits --psf results/psf/F2100W_psf.fits --table T.ecsv --png T.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

import convolve_image
import noise_model
import psf_model
from wflib import masks, wfutils

log = logging.getLogger("noise_curve")

DEFAULTS = {
    "kernel_fwhm_arcsec": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5],
    "reference_resolution_arcsec": 0.9,
    "min_coverage": 0.9,
    "background_box_px": 64,
    "max_side": 2048,
    "min_pixels": 200,
    "mask_nsigma": 3.0,
    "mask_dilate_factor": 2.0,
    "ring_radius_px": 40.0,
}


# --------------------------------------------------------------------------- pure functions
def robust_std(values) -> float:
    from astropy.stats import biweight_midvariance

    values = np.asarray(values)
    values = values[np.isfinite(values)]
    return float(math.sqrt(biweight_midvariance(values))) if values.size >= 3 else math.nan


def noise_curve(sci, err, valid, pixscale: float, native_fwhm: float, params: dict) -> dict:
    """Measured and predicted noise after Gaussian smoothing (see the module docstring)."""
    params = {**noise_model.DEFAULTS, **DEFAULTS, **params}
    data = np.where(valid, sci, np.nan).astype(np.float32)
    sky = noise_model.sky_mask(data, valid, params)
    residual = data.astype(np.float64)
    if params["background_box_px"]:
        residual = residual - masks.block_background(data, sky, int(params["background_box_px"]))
    residual[~sky] = np.nan
    err = np.where(sky, err, np.nan)
    rows = []
    sigma0 = robust_std(residual[sky])
    for fwhm in params["kernel_fwhm_arcsec"]:
        if fwhm <= 0:
            k = np.ones((1, 1))
            smooth, serr, cov = residual, err, sky.astype(float)
        else:
            k = convolve_image.gaussian_kernel_px(fwhm / pixscale)
            smooth, serr, cov = convolve_image.convolve_masked(residual, k, params["min_coverage"], err)
        use = sky & (cov >= params["min_coverage"]) & np.isfinite(smooth)
        n = int(use.sum())
        measured = robust_std(smooth[use]) if n >= params["min_pixels"] else math.nan
        rows.append(
            {
                "kernel_fwhm_arcsec": float(fwhm),
                "resolution_arcsec": float(math.hypot(native_fwhm, fwhm)),
                "std_measured": measured,
                "std_uncorrelated": float(sigma0 * math.sqrt((k**2).sum())),
                "err_propagated": float(np.nanmedian(serr[use])) if n else math.nan,
                "n_pixels": n,
            }
        )
    ref = params["reference_resolution_arcsec"]
    res = np.array([r["resolution_arcsec"] for r in rows])
    meas = np.array([r["std_measured"] for r in rows])
    unc = np.array([r["std_uncorrelated"] for r in rows])
    good = np.isfinite(meas) & (unc > 0)
    scale = math.nan
    if good.sum() >= 2 and res[good][0] <= ref <= res[good][-1]:
        scale = float(np.interp(ref, res[good], meas[good]) / np.interp(ref, res[good], unc[good]))
    for r in rows:
        r["std_uncorrelated_scaled"] = r["std_uncorrelated"] * scale if np.isfinite(scale) else math.nan
    return {"rows": rows, "sigma0": sigma0, "sky_pixels": int(sky.sum()), "scale_at_reference": scale}


# --------------------------------------------------------------------------- FITS I/O and plot
def read_window(path, max_side: int):
    """SCI, ERR and validity of the best-covered window (WHT > 0, or finite SCI) of at most ``max_side`` pixels."""
    from astropy.io import fits

    import correlated_noise

    with fits.open(path, memmap=True) as hdul:
        names = {h.name for h in hdul}
        if "WHT" in names:
            y0, y1, x0, x1 = correlated_noise.coverage_window(hdul["WHT"], max_side)
        else:
            ny, nx = hdul["SCI"].shape
            y0, y1, x0, x1 = 0, min(ny, max_side), 0, min(nx, max_side)
        cut = np.s_[y0:y1, x0:x1]
        sci = np.array(hdul["SCI"].data[cut], dtype=np.float64)
        err = np.array(hdul["ERR"].data[cut], dtype=np.float64)
        header = hdul["SCI"].header.copy()
        filt = hdul[0].header.get("FILTER", "")
    valid = np.isfinite(sci) & np.isfinite(err) & (err > 0)
    return sci, err, valid, header, filt


def plot_curve(result: dict, title: str, native: float, ref: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = [r["kernel_fwhm_arcsec"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["std_measured"] for r in rows], "o-", c="C2", label="measured (source-free sky)")
    ax.plot(x, [r["std_uncorrelated"] for r in rows], ":", c="0.4", label="uncorrelated prediction")
    ax.plot(x, [r["std_uncorrelated_scaled"] for r in rows], "--", c="0.6", label=f'uncorrelated, scaled at {ref:g}"')
    ax.plot(x, [r["err_propagated"] for r in rows], "-", c="C1", lw=0.8, label="propagated ERR (median)")
    ax.axhline(result["sigma0"], ls="-.", c="C0", label="native")
    if ref > native:
        ax.axvline(math.sqrt(ref**2 - native**2), c="C3", label=f'kernel to {ref:g}"')
    ax.set_yscale("log")
    ax.set_xlabel('Gaussian kernel FWHM ["]')
    ax.set_ylabel("standard deviation [MJy/sr]")
    top = ax.secondary_xaxis(
        "top", functions=(lambda k: np.sqrt(native**2 + np.asarray(k) ** 2),
                          lambda r: np.sqrt(np.clip(np.asarray(r) ** 2 - native**2, 0, None)))
    )  # fmt: skip
    top.set_xlabel('resolution ["]')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="mosaic (i2d FITS: SCI, ERR, optionally WHT)")
    parser.add_argument("--psf", required=True, help="the band's PSF file (for the native FWHM)")
    parser.add_argument("--table", required=True, help="output ECSV table")
    parser.add_argument("--png", required=True, help="output plot")
    parser.add_argument("--params", default="{}", help="JSON overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input, extensions=("SCI", "ERR"))
    params = json.loads(args.params)
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown noise_curve parameter(s): {', '.join(sorted(unknown))}")
    params = {**DEFAULTS, **params}
    _, psf_header = psf_model.read_psf(args.psf)
    native = float(psf_header["FWHM"])
    sci, err, valid, header, filt = read_window(args.input, int(params["max_side"]))
    pixscale = convolve_image.pixel_scale_arcsec(header)
    result = noise_curve(sci, err, valid, pixscale, native, params)
    from astropy.table import Table

    table = Table(rows=result["rows"])
    table.meta.update(
        {"filter": filt, "native_fwhm_arcsec": native, "sigma0": result["sigma0"], "sky_pixels": result["sky_pixels"],
         "pixel_scale_arcsec": pixscale, "scale_at_reference": result["scale_at_reference"]}
    )  # fmt: skip
    with wfutils.atomic_output(args.table) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    title = f'{Path(args.input).name}: native {native:.3f}", {result["sky_pixels"]} sky pixels'
    plot_curve(result, title, native, params["reference_resolution_arcsec"], args.png)
    ref = [r for r in result["rows"] if r["resolution_arcsec"] >= params["reference_resolution_arcsec"]]
    log.info(
        "%s: native sky scatter %.4g MJy/sr on %d pixels; at %.2f\" resolution %.4g (x %.3f), uncorrelated "
        "prediction %.4g",
        Path(args.input).name, result["sigma0"], result["sky_pixels"], ref[0]["resolution_arcsec"] if ref else math.nan,
        ref[0]["std_measured"] if ref else math.nan,
        ref[0]["std_measured"] / result["sigma0"] if ref else math.nan, ref[0]["std_uncorrelated"] if ref else math.nan,
    )  # fmt: skip


if __name__ == "__main__":
    wfutils.run_cli(main)
