"""Correlated noise of a drizzled mosaic: how well ERR predicts pixel and aperture noise, and the factor.

Drizzling with pixfrac ~ 1 spreads each input pixel over several output pixels, so the
mosaic's pixels are correlated: the scatter of single pixels is smaller than the noise
the error array implies on large scales, and the noise in an aperture of N pixels grows
faster than sqrt(N) x the pixel scatter (Casertano et al. 2000; CEERS, Bagley et al.
2023, Sect. 4: measure it from source-free pixels, e.g. their autocorrelation; CEERS
Sect. 3.3.4: empirical noise in apertures). On the source-free pixels of the mosaic
(CEERS tiered mask, smooth background removed) this script measures

* ``r_pix``: the robust scatter of SCI/ERR -- how far ERR is from the pixel scatter;
* ``r_ap(D)``: the robust scatter of aperture sums divided by sqrt(sum of w^2 ERR^2), for
  circular apertures of diameter D (default 0.2"), placed on a grid on source-free sky;
* ``F(N)``: the correlation factor, noise in N-pixel square blocks over sqrt(N) x the pixel
  scatter (``r_block(N) / r_pix``), and F from the autocorrelation of SCI/ERR summed over
  lags (its large-aperture limit);

and writes them to the primary header: NCPIXRAT (r_pix), NCAPRAT (r_ap at the reference
aperture), NCAPDIAM, NCORRFAC (= r_ap / r_pix: aperture noise = sqrt(sum w^2 ERR^2) x
NCPIXRAT x NCORRFAC), NCACFFAC (autocorrelation estimate), NCB<n> (block factors) and
NCAPPLY. With ``--apply`` the error and variance arrays are rescaled according to
``apply_to``: ``pixel`` (ERR x NCPIXRAT: ERR is then the pixel scatter, and aperture errors
need the factor NCORRFAC from the header) or ``aperture`` (ERR x NCAPRAT: sqrt(sum ERR^2)
then predicts the noise in the reference aperture, and single pixels scatter less than ERR).
One array cannot predict both: that ratio is the correlation the drizzle introduced.

Memory is bounded for mosaics of any size: the factors are measured on the best-covered
window of at most ``max_measure_side`` pixels a side (the correlation is a property of the
dither pattern, kernel and scales, not of the position), and the output is a copy of the
mosaic whose error arrays are rescaled band by band in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

import noise_model
from wflib import masks, wfutils

log = logging.getLogger("correlated_noise")

DEFAULTS = {
    "aperture_diameters_arcsec": [0.2],  # the first is the reference aperture (NCAPRAT, NCORRFAC)
    "block_sizes": [1, 2, 3, 4, 6, 8],
    "acf_max_lag": 6,  # pixels; the autocorrelation is summed over |dx|, |dy| <= this
    "apply_to": "pixel",  # pixel | aperture (with --apply)
    "background_box_px": 64,
    # source mask as noise_model's (3 sigma, dilations doubled): a lower threshold also masks the
    # positive noise of a correlated mosaic (2 sigma masked half of a blank one), and the sky left
    # then under-states the aperture noise by ~10%
    "mask_nsigma": 3.0,
    "mask_dilate_factor": 2.0,
    "ring_radius_px": 40.0,
    "min_samples": 30,
    "max_acf_pixels": 4_000_000,
    "max_measure_side": 4096,  # measured on the best-covered window of at most this many pixels a side
}


# --------------------------------------------------------------------------- pure functions
def robust_std(values) -> float:
    """sqrt of the biweight midvariance of the finite values (NaN if fewer than 3)."""
    from astropy.stats import biweight_midvariance

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(math.sqrt(biweight_midvariance(values))) if values.size >= 3 else math.nan


def block_ratio(residual: np.ndarray, err: np.ndarray, sky: np.ndarray, size: int) -> tuple[float, int]:
    """Scatter of b x b block sums of ``residual`` over their ERR prediction sqrt(sum err^2) (clean blocks)."""
    sums = noise_model.block_sums(residual, sky, size)
    predicted = np.sqrt(noise_model.block_sums(err.astype(np.float64) ** 2, sky, size))
    return robust_std(sums / predicted), int(sums.size)


def aperture_ratio(residual, err, sky, radius_px: float, spacing_px: float | None = None) -> tuple[float, int]:
    """Scatter of circular-aperture sums over sqrt(sum w^2 err^2), apertures wholly on clean sky.

    Apertures sit on a square grid (spacing 2 radii + 2 pixels, so they do not share pixels);
    pixel weights are exact overlap areas (photutils ``CircularAperture``).
    """
    from photutils.aperture import CircularAperture

    spacing = spacing_px or (2 * radius_px + 2)
    ny, nx = residual.shape
    half = int(math.ceil(radius_px)) + 1
    ys, xs = np.mgrid[half : ny - half : spacing, half : nx - half : spacing]
    ratios = []
    template = CircularAperture((0.0, 0.0), r=radius_px).to_mask(method="exact")
    weights = template.data
    hy, hx = weights.shape[0] // 2, weights.shape[1] // 2
    inside = weights > 0
    for y, x in zip(ys.ravel().astype(int), xs.ravel().astype(int), strict=True):
        sl = np.s_[y - hy : y - hy + weights.shape[0], x - hx : x - hx + weights.shape[1]]
        if not sky[sl][inside].all():
            continue
        total = float(np.sum(weights * residual[sl]))
        predicted = math.sqrt(float(np.sum((weights * err[sl]) ** 2)))
        ratios.append(total / predicted)
    return robust_std(ratios), len(ratios)


def acf_factor(z: np.ndarray, good: np.ndarray, max_lag: int) -> float:
    """sqrt of the autocorrelation of ``z`` (masked, unit variance at lag 0) summed over |lags| <= max_lag.

    For a stationary noise field this is the ratio of the noise in a large aperture to
    sqrt(N) x the pixel noise.
    """
    from numpy.fft import irfft2, rfft2

    data = np.where(good, z - np.mean(z[good]), 0.0)
    mask = good.astype(float)
    shape = [n + max_lag + 1 for n in data.shape]
    f = rfft2(data, shape)
    g = rfft2(mask, shape)
    num = irfft2(f * np.conj(f), shape)
    den = irfft2(g * np.conj(g), shape)
    lags = [*range(0, max_lag + 1), *range(-max_lag, 0)]
    total = 0.0
    c0 = num[0, 0] / den[0, 0]
    for dy in lags:
        for dx in lags:
            n = den[dy, dx]
            if n > 0.5:
                total += num[dy, dx] / n / c0
    return math.sqrt(max(total, 0.0))


# --------------------------------------------------------------------------- measurement
def measure(sci: np.ndarray, err: np.ndarray, valid: np.ndarray, pixel_scale: float, params: dict, sky=None) -> dict:
    """All ratios and factors on the source-free pixels of a mosaic (``sky`` overrides the mask)."""
    params = {**noise_model.DEFAULTS, **DEFAULTS, **params}
    data = np.where(valid, sci, np.nan).astype(np.float32)
    if sky is None:
        sky = noise_model.sky_mask(data, valid, params)
    residual = data.astype(np.float64)
    if params["background_box_px"]:
        residual = residual - masks.block_background(data, sky, int(params["background_box_px"]))
    err = np.where(valid, err, np.nan).astype(np.float64)
    z = residual / err
    r_pix = robust_std(z[sky])
    out = {"sky_pixels": int(sky.sum()), "pixel_ratio": r_pix, "blocks": {}, "apertures": {}}
    for b in params["block_sizes"]:
        ratio, n = block_ratio(residual, err, sky, int(b))
        if n >= params["min_samples"]:
            out["blocks"][int(b)] = {"ratio": ratio, "factor": ratio / r_pix, "n": n}
    for diameter in params["aperture_diameters_arcsec"]:
        ratio, n = aperture_ratio(residual, err, sky, diameter / 2 / pixel_scale)
        out["apertures"][float(diameter)] = {
            "ratio": ratio if n >= params["min_samples"] else math.nan,
            "factor": ratio / r_pix if n >= params["min_samples"] else math.nan,
            "n": n,
        }
    # autocorrelation on a central cut-out of at most max_acf_pixels pixels
    ny, nx = z.shape
    side = int(math.sqrt(params["max_acf_pixels"]))
    y0, x0 = max(0, (ny - side) // 2), max(0, (nx - side) // 2)
    cut = np.s_[y0 : y0 + side, x0 : x0 + side]
    zz = np.where(sky, z, 0.0)[cut] / r_pix
    out["acf_factor"] = acf_factor(zz, sky[cut], int(params["acf_max_lag"]))
    ref = out["apertures"].get(float(params["aperture_diameters_arcsec"][0]), {})
    out["reference_aperture_arcsec"] = float(params["aperture_diameters_arcsec"][0])
    out["aperture_ratio"] = ref.get("ratio", math.nan)
    out["correlation_factor"] = ref.get("factor", math.nan)
    return out


def scale_for(result: dict, apply_to: str) -> float:
    """The factor ERR is multiplied by for ``apply_to`` (pixel | aperture)."""
    if apply_to == "pixel":
        return result["pixel_ratio"]
    if apply_to == "aperture":
        return result["aperture_ratio"]
    raise wfutils.InputError(f"apply_to must be 'pixel' or 'aperture', not {apply_to!r}")


def header_cards(result: dict, applied: str, scale: float) -> list[tuple[str, object, str]]:
    def finite(value):
        return float(value) if value is not None and np.isfinite(value) else 0.0

    cards = [
        ("NCPIXRAT", finite(result["pixel_ratio"]), "pixel scatter / ERR, source-free sky"),
        ("NCAPDIAM", finite(result["reference_aperture_arcsec"]), "[arcsec] reference aperture diameter"),
        ("NCAPRAT", finite(result["aperture_ratio"]), "aperture noise / sqrt(sum w2 ERR2)"),
        ("NCORRFAC", finite(result["correlation_factor"]), "NCAPRAT / NCPIXRAT"),
        ("NCACFFAC", finite(result["acf_factor"]), "factor from the autocorrelation"),
        ("NCAPPLY", applied, "ERR rescaled for: none|pixel|aperture"),
        ("NCSCALE", finite(scale), "ERR x this, VAR_* x its square"),
    ]
    for b, row in sorted(result["blocks"].items()):
        cards.append((f"NCB{b:02d}", finite(row["factor"]), f"{b}x{b} block noise / ({b} x pixel noise)"))
    return cards


# --------------------------------------------------------------------------- FITS I/O (bounded memory)
def coverage_window(wht_hdu, side: int, block: int = 256) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the ``side`` x ``side`` window with the most pixels of positive weight.

    WHT is read band by band (memory-mapped) into a coarse coverage map; the window is the
    best run of coarse blocks, so memory stays at one band however large the mosaic.
    """
    ny, nx = wht_hdu.shape
    by, bx = math.ceil(ny / block), math.ceil(nx / block)
    coarse = np.zeros((by, bx))
    for j in range(by):
        band = np.asarray(wht_hdu.data[j * block : (j + 1) * block]) > 0
        padded = np.zeros((block, bx * block), bool)
        padded[: band.shape[0], :nx] = band
        coarse[j] = padded.reshape(block, bx, block).sum(axis=(0, 2))
    ky, kx = min(by, max(1, side // block)), min(bx, max(1, side // block))
    c = np.pad(coarse.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[ky:, kx:] - c[:-ky, kx:] - c[ky:, :-kx] + c[:-ky, :-kx]
    j, i = np.unravel_index(np.argmax(sums), sums.shape)
    y0, x0 = j * block, i * block
    return y0, min(ny, y0 + ky * block), x0, min(nx, x0 + kx * block)


def measure_file(path, params: dict) -> dict:
    """``measure`` on the best-covered window of at most ``max_measure_side`` pixels a side of a mosaic."""
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        y0, y1, x0, x1 = coverage_window(hdul["WHT"], int(params["max_measure_side"]))
        cut = np.s_[y0:y1, x0:x1]
        sci = np.array(hdul["SCI"].data[cut], dtype=np.float32)
        err = np.array(hdul["ERR"].data[cut], dtype=np.float32)
        wht = np.array(hdul["WHT"].data[cut], dtype=np.float32)
        area = hdul["SCI"].header.get("PIXAR_A2") or hdul[0].header.get("PIXAR_A2")
    if not area:
        from stdatamodels.jwst.datamodels import read_metadata

        area = read_metadata(str(path))["meta.photometry.pixelarea_arcsecsq"]
    valid = np.isfinite(sci) & np.isfinite(err) & (err > 0) & (wht > 0)
    result = measure(sci, err, valid, math.sqrt(area), params)
    result["window"] = [int(y0), int(y1), int(x0), int(x1)]
    return result


def write_output(src, dst, scale: float, cards, inputs, cfg_hash) -> None:
    """Copy the mosaic, rescale ERR (x scale) and VAR_* (x scale^2) band by band, add the cards.

    The copy is edited in place (memory-mapped) before it is renamed into place, so memory is
    one band of rows; the ASDF tree's hash of the FITS headers is refreshed (same length).
    """
    import re
    import shutil

    from astropy.io import fits
    from stdatamodels.fits_support import fits_hash

    provenance = wfutils.provenance_cards(inputs, cfg_hash, "correlated_noise")
    with wfutils.atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
        with fits.open(tmp, mode="update", memmap=True) as hdul:
            names = {hdu.name for hdu in hdul}
            for ext, factor in (("ERR", scale), *((v.upper(), scale**2) for v in noise_model.VARIANCES)):
                if factor == 1.0 or ext not in names:
                    continue
                data = hdul[ext].data
                for y0 in range(0, data.shape[0], 1024):
                    data[y0 : y0 + 1024] *= np.float32(factor)
                hdul.flush()
                del data
            for key, value, comment in (*provenance, *cards):
                hdul[0].header[key] = (value, comment)
            hdul[0].header["FILENAME"] = Path(dst).name
            hdul.flush()
            if "ASDF" in names:
                column = hdul["ASDF"].columns[0].name
                text = bytes(hdul["ASDF"].data[column][0])
                new = re.sub(rb"_fits_hash: [0-9a-f]{64}", b"_fits_hash: " + fits_hash(hdul).encode(), text)
                hdul["ASDF"].data[column][0][:] = np.frombuffer(new, dtype=np.uint8)


# --------------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="drizzled mosaic (i2d ImageModel FITS)")
    parser.add_argument("output", help="mosaic with the factors in its header (and rescaled errors with --apply)")
    parser.add_argument("--apply", action="store_true", help="rescale ERR and VAR_* (see apply_to)")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input, extensions=("SCI", "ERR", "WHT"))
    params = {**DEFAULTS, **json.loads(args.params)}
    result = measure_file(args.input, params)
    applied, scale = "none", 1.0
    if args.apply:
        scale = scale_for(result, params["apply_to"])
        if not np.isfinite(scale) or scale <= 0:
            raise wfutils.InputError(f"{args.input}: no usable {params['apply_to']} ratio measured ({scale})")
        applied = params["apply_to"]
    blocks = ", ".join(f"{b}: {row['factor']:.3f}" for b, row in sorted(result["blocks"].items()))
    log.info(
        "%s (window %s): pixel scatter / ERR = %.3f on %d sky pixels; %.2f\" apertures: noise / ERR-predicted = "
        "%.3f (%d); correlation factor %.3f (autocorrelation %.3f); blocks {%s}; ERR x %.4f (%s)",
        Path(args.input).name, result["window"], result["pixel_ratio"], result["sky_pixels"],
        result["reference_aperture_arcsec"], result["aperture_ratio"],
        result["apertures"].get(result["reference_aperture_arcsec"], {}).get("n", 0),
        result["correlation_factor"], result["acf_factor"], blocks, scale, applied,
    )  # fmt: skip
    write_output(args.input, args.output, scale, header_cards(result, applied, scale), [args.input], args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
