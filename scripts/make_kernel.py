"""Convolution kernels between PSFs by the method of Aniano et al. (2011), as PHANGS-JWST Sect. 3.10 uses them.

Method (Aniano et al. 2011, Sect. 2): both PSFs are put on one grid (the source PSF's pixels;
the target is interpolated onto it), circularised (``psf_model.circularise``: the azimuthal
mean, the limit of their rotation average) and normalised; the kernel's Fourier transform is
the ratio of the target's to the source's transform, multiplied by their low-pass filter

    phi(k) = 1                                         k <= k_L
           = 0.5 [1 + cos(pi (k - k_L) / (k_H - k_L))]   k_L < k <= k_H
           = 0                                         k > k_H

with k_H the first frequency where the (circularised) source transform falls below 0.5% of
its peak and k_L = 0.7 k_H, so that the division never amplifies frequencies the source PSF
does not carry. The back-transform is the kernel; it is recentred, optionally trimmed to the
radius holding ``trim_energy`` of sum |K|, and normalised to sum 1.

Quality metrics (their Sect. 3, eqs. 20-21), written to the header:

* D = sum |K * Psi_source - Psi_target| (accuracy): KERN_D with the actual (not circularised)
  PSFs, KERN_DC with the circularised ones the kernel was built from;
* W- = 1/2 sum (|K| - K) (the kernel's negative weight, the need to move power from large to
  small scales): KERN_WM, and its class KSAFETY: "very safe" (W- <= 0.3), "safe" (<= 0.5),
  "aggressive" (<= 1.0), "not recommended" beyond -- the thresholds of the PHANGS kernel search
  (``thresholds``).

``--search-gaussian`` finds, for one source PSF, the smallest Gaussian FWHM whose kernel is
very safe, safe and aggressive: W- of Gaussian targets on a grid of FWHMs from 1.02 to 3 times
the source FWHM, then a root search between the grid points around each threshold crossing
(the smallest FWHM above which W- stays below the threshold). ``--merge-searches`` gathers
the one-row tables of several bands into one.

Command line::

    python scripts/make_kernel.py --source PSF.fits --target gauss:0.9 --out KERNEL.fits
    python scripts/make_kernel.py --source PSF.fits --target PSF2.fits --out KERNEL.fits
    python scripts/make_kernel.py --source PSF.fits --search-gaussian --out SEARCH.ecsv [--qa-png SEARCH.png]
    python scripts/make_kernel.py --merge-searches gaussian_targets.ecsv SEARCH1.ecsv SEARCH2.ecsv ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

import psf_model
from wflib import wfutils

log = logging.getLogger("make_kernel")

DEFAULTS = {
    "low_pass_fraction": 0.005,  # k_H: the source transform falls below this fraction of its peak
    "low_pass_kl_ratio": 0.7,  # k_L = this x k_H
    "trim_energy": 0.9999,  # keep the radius holding this fraction of sum |K| (1: no trimming)
    "thresholds": {"very_safe": 0.3, "safe": 0.5, "aggressive": 1.0},
    "search_factors": [1.02, 3.0],  # Gaussian FWHM range of the search, x the source FWHM
    "search_points": 16,
    "search_tolerance_arcsec": 0.001,
}
SAFETY_CLASSES = ("very_safe", "safe", "aggressive")
FWHM_PER_SIGMA = psf_model.FWHM_PER_SIGMA


# --------------------------------------------------------------------------- pure functions
def gaussian_psf(fwhm_arcsec: float, pixscale: float, size: int) -> np.ndarray:
    """Circular Gaussian of ``fwhm_arcsec`` on a ``size`` x ``size`` grid (odd) centred on the central pixel, sum 1."""
    sigma = fwhm_arcsec / FWHM_PER_SIGMA / pixscale
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    out = np.outer(g, g)
    return out / out.sum()


def fit_to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Centred crop or zero pad of an odd square array to ``size`` (odd)."""
    n = image.shape[0]
    if n == size:
        return image
    if n > size:
        o = (n - size) // 2
        return image[o : o + size, o : o + size]
    out = np.zeros((size, size), dtype=image.dtype)
    o = (size - n) // 2
    out[o : o + n, o : o + n] = image
    return out


def resample_centred(image: np.ndarray, from_scale: float, to_scale: float, size: int) -> np.ndarray:
    """``image`` (centred on its central pixel) interpolated onto a ``size`` grid of ``to_scale`` pixels, sum 1.

    Cubic-spline samples at the new pixel centres, renormalised: the right resampling for a
    smooth, well-sampled PSF or kernel (a surface brightness, not a pixel-integrated flux).
    """
    from scipy.ndimage import map_coordinates

    if math.isclose(from_scale, to_scale, rel_tol=1e-9):
        out = fit_to_size(image, size)
        return out / out.sum()
    c_in = (image.shape[0] - 1) / 2
    r = (np.arange(size) - (size - 1) / 2) * (to_scale / from_scale) + c_in
    yy, xx = np.meshgrid(r, r, indexing="ij")
    out = map_coordinates(image, [yy, xx], order=3, mode="constant", cval=0.0)
    return out / out.sum()


def frequency_radius(size: int, pixscale: float) -> np.ndarray:
    """|k| (cycles per arcsec) of each element of an unshifted 2D FFT of a ``size`` grid."""
    f = np.fft.fftfreq(size, d=pixscale)
    return np.hypot(f[:, None], f[None, :])


def low_pass_filter(k: np.ndarray, k_low: float, k_high: float) -> np.ndarray:
    """Aniano et al. (2011) filter: 1 below k_L, a cosine taper to 0 at k_H, 0 beyond."""
    phi = np.zeros_like(k)
    phi[k <= k_low] = 1.0
    taper = (k > k_low) & (k <= k_high)
    phi[taper] = 0.5 * (1.0 + np.cos(np.pi * (k[taper] - k_low) / (k_high - k_low)))
    return phi


def cutoff_frequency(transform: np.ndarray, k: np.ndarray, fraction: float) -> float:
    """k_H: the first |k| at which the azimuthal mean of ``transform`` falls below ``fraction`` of its peak."""
    step = k[0, 1]
    which = np.round(k / step).astype(np.int64).ravel()
    counts = np.bincount(which)
    keep = counts > 0
    prof = np.bincount(which, weights=transform.ravel())[keep] / counts[keep]
    kk = np.bincount(which, weights=k.ravel())[keep] / counts[keep]
    below = np.nonzero(prof < fraction * prof[0])[0]
    return float(kk[below[0]]) if below.size else float(kk[-1])


class SourceTransform:
    """The circularised source PSF and its Fourier transform, reused for many targets."""

    def __init__(self, source: np.ndarray, pixscale: float, params: dict | None = None):
        self.params = {**DEFAULTS, **(params or {})}
        self.pixscale = pixscale
        self.source = source / source.sum()
        self.size = source.shape[0]
        self.circular = psf_model.circularise(self.source)
        self.circular /= self.circular.sum()
        self.k = frequency_radius(self.size, pixscale)
        self.ft = np.real(np.fft.fft2(np.fft.ifftshift(self.circular)))
        self.k_high = cutoff_frequency(self.ft, self.k, self.params["low_pass_fraction"])
        self.k_low = self.params["low_pass_kl_ratio"] * self.k_high
        phi = low_pass_filter(self.k, self.k_low, self.k_high)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.inverse = np.where(phi > 0, phi / self.ft, 0.0)
        self.fwhm = psf_model.half_max_fwhm(self.source, pixscale)

    def kernel(self, target: np.ndarray, circular_target=False, trim: bool = True, metrics: bool = True) -> dict:
        """Kernel from this source to ``target`` (same grid, sum 1) with its W- and (``metrics``) D metrics."""
        from scipy.signal import fftconvolve

        target = target / target.sum()
        tc = target if circular_target else psf_model.circularise(target)
        tc = tc / tc.sum()
        ft_t = np.real(np.fft.fft2(np.fft.ifftshift(tc)))
        kernel = np.fft.fftshift(np.real(np.fft.ifft2(ft_t * self.inverse)))
        kernel = recentre(kernel)
        if trim and self.params["trim_energy"] < 1:
            kernel = trim_energy(kernel, self.params["trim_energy"])
        kernel = kernel / kernel.sum()
        if not metrics:
            return {"kernel": kernel, "W_minus": w_minus(kernel)}
        conv = fftconvolve(self.source, kernel, mode="same")
        conv_c = fftconvolve(self.circular, kernel, mode="same")
        return {
            "kernel": kernel,
            "D": float(np.abs(conv - target).sum()),
            "D_circ": float(np.abs(conv_c - tc).sum()),
            "W_minus": w_minus(kernel),
        }

    def gaussian_kernel(self, fwhm_arcsec: float, trim: bool = True, metrics: bool = True) -> dict:
        if fwhm_arcsec / FWHM_PER_SIGMA * 10 > self.size * self.pixscale:
            raise wfutils.InputError(
                f"target Gaussian FWHM {fwhm_arcsec}\" too large for the source PSF's "
                f'{self.size * self.pixscale:.2f}" field (needs 10 sigma): make the PSF with a larger fov_arcsec'
            )
        target = gaussian_psf(fwhm_arcsec, self.pixscale, self.size)
        return self.kernel(target, circular_target=True, trim=trim, metrics=metrics)


def recentre(kernel: np.ndarray) -> np.ndarray:
    """Roll ``kernel`` so its peak is on the central pixel (FFT round-off can shift it by one)."""
    jy, jx = np.unravel_index(np.argmax(kernel), kernel.shape)
    c = (kernel.shape[0] - 1) // 2
    return np.roll(kernel, (c - jy, c - jx), axis=(0, 1))


def trim_energy(kernel: np.ndarray, energy: float) -> np.ndarray:
    """Centred crop of ``kernel`` to the smallest circle (as a square) holding ``energy`` of sum |K|."""
    n = kernel.shape[0]
    c = (n - 1) / 2
    y, x = np.indices(kernel.shape)
    r = np.hypot(y - c, x - c).ravel()
    order = np.argsort(r)
    cum = np.cumsum(np.abs(kernel).ravel()[order])
    radius = r[order][np.searchsorted(cum, energy * cum[-1])]
    half = min(int(math.ceil(radius)) + 1, (n - 1) // 2)
    return fit_to_size(kernel, 2 * half + 1)


def w_minus(kernel: np.ndarray) -> float:
    """Aniano et al. (2011) eq. 21: W- = 1/2 sum(|K| - K) for a kernel normalised to sum 1."""
    k = kernel / kernel.sum()
    return float(0.5 * (np.abs(k) - k).sum())


def safety_class(wm: float, thresholds: dict) -> str:
    for name in SAFETY_CLASSES:
        if wm <= thresholds[name]:
            return name.replace("_", " ")
    return "not recommended"


def search_gaussian_targets(st: SourceTransform) -> dict:
    """Smallest Gaussian FWHM (arcsec) that is very safe, safe and aggressive for this source, and the W-/D scan.

    W- is evaluated on a grid of FWHMs (``search_factors`` x the source FWHM, ``search_points``);
    for each threshold the crossing is the last grid interval where W- goes from above to
    below it (W- stays below from there on) and is refined by Brent's method to
    ``search_tolerance_arcsec``.
    """
    from scipy.optimize import brentq

    p = st.params
    lo, hi = (f * st.fwhm for f in p["search_factors"])
    grid = np.geomspace(lo, hi, int(p["search_points"]))
    wm = np.array([st.gaussian_kernel(f, trim=False, metrics=False)["W_minus"] for f in grid])
    result = {"scan_fwhm": grid, "scan_w_minus": wm, "source_fwhm": st.fwhm}
    for name in SAFETY_CLASSES:
        thr = p["thresholds"][name]
        above = np.nonzero(wm > thr)[0]
        if above.size == 0:
            fwhm = grid[0]  # safe over the whole range: the grid's first point is an upper bound
        elif above[-1] == grid.size - 1:
            fwhm = math.nan  # never that safe within the range
        else:
            i = above[-1]
            fwhm = brentq(
                lambda f, t=thr: st.gaussian_kernel(f, trim=False, metrics=False)["W_minus"] - t,
                grid[i], grid[i + 1], xtol=p["search_tolerance_arcsec"],
            )  # fmt: skip
        k = st.gaussian_kernel(fwhm, trim=False) if np.isfinite(fwhm) else {"W_minus": math.nan, "D": math.nan}
        result[name] = {"fwhm": float(fwhm), "w_minus": k["W_minus"], "D": k["D"]}
    return result


# --------------------------------------------------------------------------- FITS I/O
def parse_target(value: str):
    """``gauss:<FWHM arcsec>`` -> ("gauss", fwhm); anything else is a PSF file path -> ("psf", path)."""
    if value.lower().startswith("gauss:"):
        try:
            fwhm = float(value.split(":", 1)[1])
        except ValueError as exc:
            raise wfutils.InputError(f"--target {value!r}: expected gauss:<FWHM in arcsec>, e.g. gauss:0.9") from exc
        if not fwhm > 0:
            raise wfutils.InputError(f"--target {value!r}: the Gaussian FWHM must be positive")
        return "gauss", fwhm
    return "psf", value


def make_kernel(source_path, target_value: str, params: dict) -> tuple[np.ndarray, dict]:
    """Kernel from a PSF file to ``gauss:<fwhm>`` or another PSF file, with its metrics and header values."""
    source, sh = psf_model.read_psf(source_path)
    pixscale = float(sh["PIXSCALE"])
    kind, value = parse_target(target_value)
    if kind == "gauss":
        st = SourceTransform(source, pixscale, params)
        target_fwhm, target_name = value, f"gauss:{value:g}"
        if target_fwhm <= st.fwhm:
            raise wfutils.InputError(
                f'{source_path}: target Gaussian FWHM {target_fwhm}" is not broader than the source PSF '
                f'({st.fwhm:.3f}")'
            )
        res = st.gaussian_kernel(target_fwhm)
    else:
        target, th = psf_model.read_psf(value)
        tscale = float(th["PIXSCALE"])
        size = int(math.ceil(max(source.shape[0] * pixscale, target.shape[0] * tscale) / pixscale)) | 1
        source = fit_to_size(source, size)
        target = resample_centred(target, tscale, pixscale, size)
        st = SourceTransform(source, pixscale, params)
        target_fwhm = psf_model.half_max_fwhm(target, pixscale)
        target_name = th.get("FILTER", Path(value).stem)
        if target_fwhm <= st.fwhm:
            raise wfutils.InputError(
                f'{value}: target PSF (FWHM {target_fwhm:.3f}") is not broader than the source {source_path} '
                f'({st.fwhm:.3f}"): a kernel would sharpen the image'
            )
        res = st.kernel(target)
    thresholds = st.params["thresholds"]
    info = {
        "source": sh.get("FILTER", Path(source_path).stem),
        "target": target_name,
        "pixscale": pixscale,
        "source_fwhm": st.fwhm,
        "target_fwhm": float(target_fwhm),
        "D": res["D"],
        "D_circ": res["D_circ"],
        "W_minus": res["W_minus"],
        "safety": safety_class(res["W_minus"], thresholds),
        "k_low": st.k_low,
        "k_high": st.k_high,
        "sum": float(res["kernel"].sum()),
        "gaussian": kind == "gauss",
    }
    return res["kernel"], info


def write_kernel(path, kernel: np.ndarray, info: dict, inputs, cfg_hash=None) -> None:
    from astropy.io import fits

    data = kernel.astype(np.float32)
    data = (data / data.astype(np.float64).sum()).astype(np.float32)
    hdu = fits.PrimaryHDU(data)
    h = hdu.header
    h["KSOURCE"] = (info["source"], "source PSF (band)")
    h["KTARGET"] = (info["target"], "target PSF: band or gauss:<FWHM arcsec>")
    h["PIXSCALE"] = (info["pixscale"], "[arcsec] kernel pixel")
    h["SFWHM"] = (round(info["source_fwhm"], 6), "[arcsec] source PSF FWHM")
    h["TFWHM"] = (round(info["target_fwhm"], 6), "[arcsec] target PSF FWHM")
    h["BMAJ"] = (info["target_fwhm"] / 3600.0, "[deg] target FWHM")
    h["BMIN"] = (info["target_fwhm"] / 3600.0, "[deg] target FWHM")
    h["BPA"] = (0.0, "[deg] circular beam")
    h["KERN_D"] = (info["D"], "D (Aniano eq.20), actual PSFs")
    h["KERN_DC"] = (info["D_circ"], "D (Aniano eq.20), circularised PSFs")
    h["KERN_WM"] = (info["W_minus"], "W- (Aniano eq.21), negative weight")
    h["KSAFETY"] = (info["safety"], "W- class")
    h["KLOWPK_L"] = (info["k_low"], "[1/arcsec] low-pass k_L")
    h["KLOWPK_H"] = (info["k_high"], "[1/arcsec] low-pass k_H")
    h["KSUM"] = (float(data.astype(np.float64).sum()), "sum of the kernel")
    h["CRPIX1"] = (data.shape[1] + 1) / 2
    h["CRPIX2"] = (data.shape[0] + 1) / 2
    h["CDELT1"] = -info["pixscale"] / 3600.0
    h["CDELT2"] = info["pixscale"] / 3600.0
    wfutils.write_hdulist(fits.HDUList([hdu]), path, inputs, cfg_hash, "make_kernel")


def search_table(filter_name: str, result: dict, thresholds: dict):
    from astropy.table import Table

    row = {"filter": filter_name, "source_fwhm_arcsec": result["source_fwhm"]}
    for name in SAFETY_CLASSES:
        row[f"{name}_fwhm_arcsec"] = result[name]["fwhm"]
    for name in SAFETY_CLASSES:
        row[f"{name}_w_minus"] = result[name]["w_minus"]
        row[f"{name}_D"] = result[name]["D"]
    table = Table(rows=[row])
    table.meta["thresholds_w_minus"] = dict(thresholds)
    table.meta["scan"] = {
        "fwhm_arcsec": [float(v) for v in result["scan_fwhm"]],
        "w_minus": [float(v) for v in result["scan_w_minus"]],
    }
    table.meta["description"] = (
        "Smallest Gaussian FWHM whose Aniano et al. (2011) kernel from this band's PSF has W- below each threshold"
    )
    return table


def plot_search(filter_name: str, result: dict, thresholds: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, a1 = plt.subplots(figsize=(6, 4))
    a1.plot(result["scan_fwhm"], result["scan_w_minus"], "o-")
    for name in SAFETY_CLASSES:
        a1.axhline(thresholds[name], ls="--", c="k", lw=0.8)
        if np.isfinite(result[name]["fwhm"]):
            a1.axvline(result[name]["fwhm"], ls=":", c="C3")
            a1.text(result[name]["fwhm"], thresholds[name], f' {name.replace("_", " ")} {result[name]["fwhm"]:.3f}"')
    a1.set_xlabel('target Gaussian FWHM ["]')
    a1.set_ylabel("W-")
    a1.set_yscale("log")
    a1.set_title(f'{filter_name}: source FWHM {result["source_fwhm"]:.3f}"')
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def merge_searches(paths):
    from astropy.table import Table, vstack

    tables = [Table.read(p, format="ascii.ecsv") for p in paths]
    if not tables:
        return Table()
    meta = {key: tables[0].meta.get(key) for key in ("thresholds_w_minus", "description")}
    merged = vstack([Table(t, meta={}) for t in tables])
    merged.meta.update(meta)
    return merged


# --------------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="source PSF FITS (psf_model.py output)")
    parser.add_argument("--target", help="gauss:<FWHM arcsec> or a target PSF FITS file")
    parser.add_argument("--out", help="kernel FITS (or the search table with --search-gaussian)")
    parser.add_argument("--search-gaussian", action="store_true", help="search very safe/safe/aggressive Gaussians")
    parser.add_argument("--qa-png", help="plot of the W- search (with --search-gaussian)")
    parser.add_argument("--merge-searches", metavar="OUT", help="merge the search tables given into OUT (ECSV)")
    parser.add_argument("tables", nargs="*", help="search tables (with --merge-searches)")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    if args.merge_searches:
        table = merge_searches(args.tables)
        with wfutils.atomic_output(args.merge_searches) as tmp:
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        log.info("Gaussian targets of %d bands -> %s", len(table), args.merge_searches)
        return
    if not args.source or not args.out or not (args.target or args.search_gaussian):
        parser.error("--source and --out, with --target or --search-gaussian, are required (or --merge-searches)")
    params = json.loads(args.params)
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown make_kernel parameter(s): {', '.join(sorted(unknown))}")
    params = {**DEFAULTS, **params}
    t0 = time.time()
    if args.search_gaussian:
        source, sh = psf_model.read_psf(args.source)
        st = SourceTransform(source, float(sh["PIXSCALE"]), params)
        result = search_gaussian_targets(st)
        name = sh.get("FILTER", Path(args.source).stem)
        log.info(
            "%s (FWHM %.4f\"): very safe %.4f\", safe %.4f\", aggressive %.4f\" (W- <= %s) in %.1f s",
            name, st.fwhm, result["very_safe"]["fwhm"], result["safe"]["fwhm"], result["aggressive"]["fwhm"],
            "/".join(str(params["thresholds"][n]) for n in SAFETY_CLASSES), time.time() - t0,
        )  # fmt: skip
        table = search_table(name, result, params["thresholds"])
        with wfutils.atomic_output(args.out) as tmp:
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        if args.qa_png:
            plot_search(name, result, params["thresholds"], args.qa_png)
        return
    kernel, info = make_kernel(args.source, args.target, params)
    log.info(
        "%s -> %s: kernel %d x %d px of %.5f\"; D %.4g (circularised %.3g), W- %.4g (%s), sum %.9f; k_L %.3f, "
        "k_H %.3f /arcsec; %.1f s",
        info["source"], info["target"], kernel.shape[1], kernel.shape[0], info["pixscale"], info["D"], info["D_circ"],
        info["W_minus"], info["safety"], info["sum"], info["k_low"], info["k_high"], time.time() - t0,
    )  # fmt: skip
    inputs = [args.source] + ([] if info["gaussian"] else [args.target])
    write_kernel(args.out, kernel, info, inputs, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
