"""5-sigma point-source depth of a mosaic from empty apertures (CEERS, Bagley et al. 2023, Sect. 3.3.4).

Circular apertures of radii 0.05"-1.5" are placed on source-free pixels (positive weight and
outside the band's own tier mask, i.e. away from the sources detected in this image; the merged
mask of all bands, made to keep faint sources out of the background fit, can leave no pixel
free), an aperture used only if every pixel it touches is source-free, on a jittered grid at a
random origin so that apertures of one radius do not overlap. The robust 1-sigma of the
aperture sums (biweight scale) is the noise at each radius; a second-order polynomial of
noise vs radius is fitted (Papovich et al. 2016; Finkelstein et al. 2022) and evaluated at
r = 0.1"; dividing by the encircled energy of the band's PSF within 0.1" (as an aperture on
the mosaic's pixels measures it: the PSF integrated over pixels, averaged over sub-pixel
positions) gives the noise of a point source's total flux, and 5x that is the depth in AB magnitudes. The table also
carries the pixel noise times sqrt(N pixels) -- the noise uncorrelated pixels would give --
and the plot shows both (the gap between them is the drizzle's pixel correlation).

``--inject N`` adds an injection-recovery check: N point sources of the PSF (integrated over
the mosaic pixels) at ``inject_snr`` (10) x the predicted 1-sigma total flux are added at
source-free positions (in rounds of well-separated sources, each on a fresh copy of the mosaic),
their flux is measured in r = 0.1" apertures, and the recovered depth is 5 x the robust scatter
of the measured fluxes divided by the median fraction of the injected flux the apertures gained.

PSF file: a normalised (or not) image in the primary HDU, header ``PIXSCALE`` = arcsec per
array pixel, ``OVERSAMP`` = mosaic (detector) pixel / array pixel (the PSF-model format).

Command line::

    python scripts/depth.py MOSAIC_i2d.fits --mask BAND_tiers.fits --psf PSF.fits --table depth.ecsv
        [--plot depth.png] [--sci-ext SCI_BKSUB] [--inject 1000] [--params JSON] [--log LOG]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings

import numpy as np

from wflib import wfutils

log = logging.getLogger("depth")

AB_ZEROPOINT_UJY = 23.9  # m_AB = 23.9 - 2.5 log10(f / uJy)
UJY_PER_MJYSR_SR = 1e12  # MJy -> uJy
DEFAULTS = {
    "radii_arcsec": [0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5],
    "reference_radius_arcsec": 0.1,
    "max_apertures": 2000,
    "min_apertures": 30,
    "polynomial_degree": 2,
    "nsigma": 5.0,
    "seed": 12345,
    "inject_snr": 10.0,  # injected sources at this multiple of the predicted 1-sigma total flux
    "inject_max_rounds": 50,  # injection rounds (fresh copies of the mosaic) to reach --inject sources
}


# --------------------------------------------------------------------------- PSF
def read_psf(path):
    """(normalised PSF array, arcsec per array pixel, oversampling) of a PSF FITS file."""
    from pathlib import Path

    from astropy.io import fits

    if not Path(path).exists():
        raise wfutils.InputError(f"{path}: PSF file does not exist")
    with fits.open(path) as hdul:
        hdu = next((h for h in hdul if h.data is not None and getattr(h.data, "ndim", 0) == 2), None)
        if hdu is None:
            raise wfutils.InputError(f"{path}: no 2-D PSF image")
        header = hdu.header
        scale = header.get("PIXSCALE", header.get("PIXELSCL"))
        if not scale or scale <= 0:
            raise wfutils.InputError(f"{path}: PSF header lacks PIXSCALE (arcsec per array pixel)")
        psf = np.asarray(hdu.data, np.float64)
        oversample = int(header.get("OVERSAMP", 1))
    if not np.isfinite(psf).all() or psf.sum() <= 0:
        raise wfutils.InputError(f"{path}: PSF has non-finite values or no flux")
    return psf / psf.sum(), float(scale), oversample


def encircled_energy(psf: np.ndarray, psf_scale: float, radius_arcsec: float) -> float:
    """Fraction of the PSF's flux within ``radius_arcsec`` of its centre (exact pixel overlaps)."""
    from photutils.aperture import CircularAperture

    ny, nx = psf.shape
    ap = CircularAperture(((nx - 1) / 2, (ny - 1) / 2), r=radius_arcsec / psf_scale)
    return float(ap.do_photometry(psf, method="exact")[0][0] / psf.sum())


def pixelized_encircled_energy(psf, psf_scale, pixel_scale, radius_arcsec, oversample=4) -> float:
    """Fraction of a point source's flux an aperture of ``radius_arcsec`` measures on the mosaic's pixels:
    the PSF integrated over mosaic pixels, measured with exact-overlap apertures (uniform pixels), averaged
    over sub-pixel positions. For apertures of a few pixels this is below the continuous EE (the flux of
    a partly covered pixel sits towards the centre); it is what the empty apertures' noise is divided by."""
    from photutils.aperture import CircularAperture

    k = max(1, int(round(pixel_scale / psf_scale)))
    offsets = (np.arange(k) + 0.5) / k - 0.5
    fractions = []
    for fy in offsets:
        for fx in offsets:
            stamp, half, (ux, uy) = psf_on_grid(psf, psf_scale, oversample, pixel_scale, fx, fy)
            ap = CircularAperture((half + ux, half + uy), r=radius_arcsec / pixel_scale)
            fractions.append(ap.do_photometry(stamp, method="exact")[0][0])
    return float(np.mean(fractions))


def psf_on_grid(psf, psf_scale, oversample, pixel_scale, frac_x, frac_y):
    """The PSF integrated over mosaic pixels (sums of k x k array pixels) for a source at offset
    (frac_x, frac_y) from a pixel centre: returns (stamp, half size, offsets used). The offsets are
    moved to the nearest values for which array pixels tile the mosaic pixels exactly."""
    from scipy.ndimage import zoom

    k = int(round(pixel_scale / psf_scale))
    if k < 1 or abs(k * psf_scale - pixel_scale) > 0.01 * pixel_scale:
        k = max(oversample, 1)
        psf = zoom(psf, psf_scale / (pixel_scale / k), order=1)
        psf = psf / psf.sum()
    cy, cx = (np.array(psf.shape) - 1) / 2
    half = int(min(cy, cx) // k) - 1
    n = 2 * half + 1

    def start(c, frac):
        s0 = c - (half + 0.5 + frac) * k + 0.5
        s = int(round(s0))
        return s, frac + (s0 - s) / k

    y0, fy = start(cy, frac_y)
    x0, fx = start(cx, frac_x)
    cut = psf[y0 : y0 + n * k, x0 : x0 + n * k]
    return cut.reshape(n, k, n, k).sum(axis=(1, 3)), half, (fx, fy)


# --------------------------------------------------------------------------- apertures
def aperture_centres(free_distance: np.ndarray, radius_px: float, max_n: int, rng, spacing_px=None):
    """Centres (x, y) of apertures of ``radius_px`` whose pixels are all source-free: a jittered grid of
    spacing ``spacing_px`` (default 2r + 2 px: apertures do not overlap) at a random origin, kept where the
    distance to the nearest unusable pixel exceeds r + 1."""
    ny, nx = free_distance.shape
    spacing = spacing_px or 2 * radius_px + 2
    y0, x0 = radius_px + 1 + rng.uniform(0, spacing, 2)
    ys, xs = np.mgrid[y0 : ny - radius_px - 1 : spacing, x0 : nx - radius_px - 1 : spacing]
    jitter = rng.uniform(-1, 1, (2,) + ys.shape)
    ys = np.clip(np.round(ys + jitter[0]).astype(int), 0, ny - 1).ravel()
    xs = np.clip(np.round(xs + jitter[1]).astype(int), 0, nx - 1).ravel()
    ok = free_distance[ys, xs] > radius_px + 1.0
    xs, ys = xs[ok], ys[ok]
    if xs.size > max_n:
        pick = rng.choice(xs.size, max_n, replace=False)
        xs, ys = xs[pick], ys[pick]
    return np.c_[xs, ys].astype(float)


def robust_sigma(values) -> float:
    from astropy.stats import biweight_scale

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(biweight_scale(values)) if values.size >= 5 else math.nan


def empty_aperture_noise(data, free, pixel_scale, pixel_sr, params, rng):
    """Rows of (radius, number, robust sigma of sums in uJy, sqrt(N) x pixel sigma) per radius."""
    from photutils.aperture import CircularAperture
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(free)
    to_ujy = pixel_sr * UJY_PER_MJYSR_SR
    pixel_sigma = robust_sigma(data[free][:: max(1, int(free.sum() // 2_000_000))]) * to_ujy
    rows = []
    for radius in params["radii_arcsec"]:
        r_px = radius / pixel_scale
        centres = aperture_centres(distance, r_px, int(params["max_apertures"]), rng)
        overlapping = False
        independent = len(centres)
        if len(centres) < params["min_apertures"]:
            # too few disjoint positions (large radii in a crowded field): random, possibly overlapping
            candidates = np.argwhere(distance > r_px + 1.0)
            if len(candidates) >= params["min_apertures"]:
                pick = rng.choice(len(candidates), min(len(candidates), int(params["max_apertures"])), replace=False)
                centres = candidates[pick][:, ::-1].astype(float)
                overlapping = True
                independent = max(2.0, len(candidates) / (math.pi * r_px**2))
        if len(centres) < params["min_apertures"]:
            log.info(
                'r = %.3f": only %d clean aperture positions (< %d); radius skipped',
                radius,
                len(centres),
                params["min_apertures"],
            )
            continue
        sums = CircularAperture(centres, r=r_px).do_photometry(data, method="exact")[0] * to_ujy
        sigma = robust_sigma(sums - np.median(sums))
        rows.append(
            {
                "radius_arcsec": float(radius),
                "n_apertures": int(len(centres)),
                "sigma_ujy": sigma,
                "sigma_err_ujy": sigma / math.sqrt(2 * min(len(centres), independent)),
                "uncorrelated_ujy": pixel_sigma * math.sqrt(math.pi * r_px**2),
                "overlapping": overlapping,
            }
        )
    return rows, pixel_sigma


def fit_noise(rows, degree: int, radius: float):
    """Polynomial of noise vs radius through the rows (weights 1/error); (coefficients, value at radius)."""
    r = np.array([row["radius_arcsec"] for row in rows])
    s = np.array([row["sigma_ujy"] for row in rows])
    e = np.array([row["sigma_err_ujy"] for row in rows])
    if r.size < degree + 1:
        raise wfutils.InputError(f"only {r.size} aperture radii usable: too few for a degree-{degree} fit")
    coeffs = np.polyfit(r, s, degree, w=1.0 / e)
    return coeffs, float(np.polyval(coeffs, radius))


def depth_mag(sigma_total_ujy: float, nsigma: float) -> float:
    return AB_ZEROPOINT_UJY - 2.5 * math.log10(nsigma * sigma_total_ujy)


def measure_depth(data, free, pixel_scale, pixel_sr, psf, psf_scale, params) -> dict:
    """Empty-aperture depth of one mosaic: table rows, fit, EE, predicted depth (pure function)."""
    rng = np.random.default_rng(int(params["seed"]))
    rows, pixel_sigma = empty_aperture_noise(data, free, pixel_scale, pixel_sr, params, rng)
    coeffs, sigma_ref = fit_noise(rows, int(params["polynomial_degree"]), params["reference_radius_arcsec"])
    ee = pixelized_encircled_energy(psf, psf_scale, pixel_scale, params["reference_radius_arcsec"])
    sigma_total = sigma_ref / ee
    return {
        "rows": rows,
        "pixel_sigma_ujy": pixel_sigma,
        "coefficients": [float(c) for c in coeffs],
        "sigma_ref_ujy": sigma_ref,
        "encircled_energy": ee,
        "encircled_energy_continuous": encircled_energy(psf, psf_scale, params["reference_radius_arcsec"]),
        "sigma_total_ujy": sigma_total,
        "depth_ab": depth_mag(sigma_total, params["nsigma"]),
        "free_fraction": float(free.mean()),
    }


def inject_recover(data, free, pixel_scale, pixel_sr, psf, psf_scale, oversample, flux_ujy, n, params):
    """Injection-recovery depth (the check of CEERS Sect. 3.3.4's prediction): n PSF sources of ``flux_ujy``
    on source-free positions (apertures placed like the empty ones), measured in r = reference_radius
    apertures; depth = 5 x robust scatter of the measured fluxes / recovered fraction of the injected flux
    (median of the aperture sums minus those of the same apertures before injection: the local sky level,
    which the empty-aperture noise ignores too, does not enter).

    The sources go in rounds, each on a fresh copy of the mosaic at positions of a new random grid
    (spaced so that no source's light reaches another's aperture), until n are measured or
    ``inject_max_rounds`` is reached: a small or crowded mosaic holds too few separated positions at once.
    """
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(int(params["seed"]) + 1)
    r_px = params["reference_radius_arcsec"] / pixel_scale
    to_ujy = pixel_sr * UJY_PER_MJYSR_SR
    distance = distance_transform_edt(free)
    before, after = [], []
    for _ in range(int(params["inject_max_rounds"])):
        centres = aperture_centres(distance, r_px, n - len(after), rng, spacing_px=2 * max(r_px, 6.0) + 2)
        sums = inject_round(data, centres, flux_ujy / to_ujy, r_px, psf, psf_scale, oversample, pixel_scale, rng)
        before.extend(sums[0])
        after.extend(sums[1])
        if len(after) >= n:
            break
    measured = np.array(after) * to_ujy
    fraction = float(np.median(measured - np.array(before) * to_ujy) / flux_ujy)
    scatter = robust_sigma(measured - np.median(measured))
    return {
        "n_injected": int(measured.size),
        "flux_ujy": float(flux_ujy),
        "recovered_fraction": fraction,
        "scatter_ujy": scatter,
        "depth_ab": depth_mag(scatter / fraction, params["nsigma"]),
    }


def inject_round(data, centres, flux, r_px, psf, psf_scale, oversample, pixel_scale, rng):
    """(aperture sums before, after) adding point sources of ``flux`` (image units x pixels) to a copy of
    ``data`` near ``centres``, each at a random sub-pixel offset (the PSF integrated over the mosaic pixels)."""
    from photutils.aperture import CircularAperture

    k = max(1, int(round(pixel_scale / psf_scale)))
    image = np.array(data, np.float64)
    positions = []
    for x, y in centres:
        fx, fy = (rng.integers(0, k, 2) + 0.5) / k - 0.5
        stamp, half, (fx, fy) = psf_on_grid(psf, psf_scale, oversample, pixel_scale, fx, fy)
        xi, yi = int(x), int(y)
        y0, x0 = yi - half, xi - half
        sy = slice(max(y0, 0), min(y0 + stamp.shape[0], image.shape[0]))
        sx = slice(max(x0, 0), min(x0 + stamp.shape[1], image.shape[1]))
        image[sy, sx] += flux * stamp[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0]
        positions.append((xi + fx, yi + fy))
    if not positions:
        return np.empty(0), np.empty(0)
    apertures = CircularAperture(np.array(positions), r=r_px)
    return tuple(apertures.do_photometry(np.nan_to_num(a), method="exact")[0] for a in (data, image))


# --------------------------------------------------------------------------- I/O
def read_source_mask(path, shape) -> np.ndarray:
    """The band's own tier mask (BKGMASK of a ``mosaic_background.py tiers`` file) on the mosaic's grid."""
    from mosaic_background import read_mask

    bits, _ = read_mask(path)
    if bits.shape != tuple(shape):
        raise wfutils.InputError(f"{path}: mask shape {bits.shape} differs from the mosaic's {tuple(shape)}")
    return bits


def read_mosaic(path, sci_ext: str, mask_path):
    """(image, source-free mask, pixel scale arcsec, pixel area sr, band) of a background-subtracted mosaic;
    source-free: positive weight and none of the band's tiers set in ``mask_path``."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    wfutils.check_image_file(path, extensions=("SCI", "WHT"))
    with fits.open(path) as hdul:
        names = {h.name for h in hdul}
        ext = sci_ext if sci_ext in names else "SCI"
        if ext != sci_ext:
            log.warning("%s: no %s extension; using SCI", path, sci_ext)
        data = np.asarray(hdul[ext].data, np.float32)
        valid = np.isfinite(data) & (np.asarray(hdul["WHT"].data) > 0)
        free = valid & (read_source_mask(mask_path, data.shape) == 0)
        header = hdul["SCI"].header
        band = str(hdul[0].header.get("FILTER", header.get("FILTER", "")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(WCS(header).celestial))) * 3600.0)
        pixel_sr = header.get("PIXAR_SR") or scale**2 / 4.254517e10
    if free.sum() < 1000:
        raise wfutils.InputError(f"{path}: only {int(free.sum())} source-free pixels (WHT > 0, {mask_path} == 0)")
    return np.where(valid, data, np.nan), free, scale, float(pixel_sr), band


def write_table(path, result, band, inputs: dict, params, injection=None):
    """ECSV of the aperture rows and fit; ``inputs``: {"mosaic", "mask", "psf"} paths, kept in the metadata."""
    from astropy.table import Table

    table = Table(rows=result["rows"])
    table["fit_ujy"] = np.polyval(result["coefficients"], table["radius_arcsec"])
    meta = {
        "band": band,
        **{key: str(value) for key, value in inputs.items()},
        "method": "empty apertures off the band's tier mask, polynomial fit, EE-corrected (CEERS Sect. 3.3.4)",
        "reference_radius_arcsec": params["reference_radius_arcsec"],
        "polynomial": result["coefficients"],
        "sigma_ref_ujy": result["sigma_ref_ujy"],
        "encircled_energy": result["encircled_energy"],
        "encircled_energy_continuous": result["encircled_energy_continuous"],
        "sigma_total_ujy": result["sigma_total_ujy"],
        "nsigma": params["nsigma"],
        "depth_ab": result["depth_ab"],
        "pixel_sigma_ujy": result["pixel_sigma_ujy"],
        "free_fraction": result["free_fraction"],
    }
    if injection:
        meta["injection"] = injection
    table.meta.update(json.loads(json.dumps(meta)))
    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    wfutils.write_text(buf.getvalue(), path)


def plot(path, result, band, injection=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.array([row["radius_arcsec"] for row in result["rows"]])
    s = np.array([row["sigma_ujy"] for row in result["rows"]])
    e = np.array([row["sigma_err_ujy"] for row in result["rows"]])
    u = np.array([row["uncorrelated_ujy"] for row in result["rows"]])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.errorbar(r, s, e, fmt="o", color="k", label="empty apertures (biweight sigma)")
    rr = np.linspace(r.min(), r.max(), 100)
    ax.plot(rr, np.polyval(result["coefficients"], rr), "r-", label="2nd-order polynomial")
    ax.plot(r, u, "b--", label=r"pixel $\sigma\sqrt{N}$ (uncorrelated)")
    ax.axvline(0.1, color="0.6", ls=":")
    text = f'5σ depth (r=0.1", EE={result["encircled_energy"]:.3f}): {result["depth_ab"]:.2f} AB'
    if injection:
        text += f"\ninjection-recovery: {injection['depth_ab']:.2f} AB"
    ax.set_title(f"{band}\n{text}", fontsize=9)
    ax.set_xlabel("aperture radius (arcsec)")
    ax.set_ylabel("1σ noise (µJy)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mosaic", help="background-subtracted mosaic (SCI_BKSUB, WHT)")
    parser.add_argument("--mask", required=True, help="the band's tier mask (mosaic_background.py tiers output)")
    parser.add_argument("--psf", required=True, help="PSF FITS (PIXSCALE, OVERSAMP header)")
    parser.add_argument("--table", required=True, help="output ECSV")
    parser.add_argument("--plot", help="output PNG")
    parser.add_argument("--sci-ext", default="SCI_BKSUB")
    parser.add_argument("--inject", type=int, default=0, help="number of point sources for injection-recovery")
    parser.add_argument("--params", default="{}", help="JSON overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--config-hash", default=None)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = {**DEFAULTS, **json.loads(args.params)}
    data, free, scale, pixel_sr, band = read_mosaic(args.mosaic, args.sci_ext, args.mask)
    psf, psf_scale, oversample = read_psf(args.psf)
    result = measure_depth(np.nan_to_num(data), free, scale, pixel_sr, psf, psf_scale, params)
    log.info(
        '%s %s: sigma(0.1") = %.4f uJy, EE = %.3f, 5-sigma depth %.2f AB (%.1f%% of pixels source-free)',
        args.mosaic,
        band,
        result["sigma_ref_ujy"],
        result["encircled_energy"],
        result["depth_ab"],
        100 * result["free_fraction"],
    )
    injection = None
    if args.inject:
        flux = params["inject_snr"] * result["sigma_total_ujy"]
        injection = inject_recover(
            np.nan_to_num(data), free, scale, pixel_sr, psf, psf_scale, oversample, flux, args.inject, params
        )
        log.info(
            "injection-recovery: %d sources, recovered fraction %.3f, depth %.2f AB",
            injection["n_injected"],
            injection["recovered_fraction"],
            injection["depth_ab"],
        )
    inputs = {"mosaic": args.mosaic, "mask": args.mask, "psf": args.psf}
    write_table(args.table, result, band, inputs, params, injection)
    if args.plot:
        plot(args.plot, result, band, injection)


if __name__ == "__main__":
    wfutils.run_cli(main)
