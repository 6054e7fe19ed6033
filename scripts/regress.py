"""Compare a re-reduction with a previous release: difference images and statistics per band.

The published pipelines check a new reduction against their earlier release and against the
archive's default mosaics (PHANGS-JWST Sec. 5, comparison with the earlier internal release;
CEERS Sec. 5, comparison with the previous data release): the new mosaic is reprojected onto
the old one's pixel grid and subtracted, so that a changed sky level, flux scale, astrometry
or a new artefact shows at once. For every pair NEW=OLD this script

* reprojects NEW's SCI onto OLD's grid (``reproject.reproject_interp``, bilinear: surface
  brightness in MJy/sr needs no pixel-area scaling);
* on the pixels valid in both (finite, OLD's WHT > 0 where it has one) measures the median
  difference (a sky-level change), its robust scatter (sigma from the MAD), the flux ratio
  sum(NEW)/sum(OLD), a robust straight-line fit NEW = gain x OLD + offset (sigma-clipped
  least squares: a flux-scale change shows in the gain, a level change in the offset), and
  the shift between the two images by cross-correlation (``skimage.registration
  .phase_cross_correlation`` without phase normalisation, 1/20 pixel), in milliarcseconds;
* writes ``OUT_DIR/<NEW stem>_regress.fits`` (SCI = NEW - OLD on OLD's grid, NEW = NEW
  reprojected, OLD's WCS; the statistics in the primary header) and a PNG (old, new,
  difference), and one TSV row per band.

Command line::

    python scripts/regress.py --out-dir DIR --table stats.tsv NEW_i2d.fits=OLD_i2d.fits ...
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("regress")

CLIP_SIGMA = 3.0


# --------------------------------------------------------------------------- pure functions
def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation (NaN for no values)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def clipped_line(x: np.ndarray, y: np.ndarray, sigma: float = CLIP_SIGMA, iterations: int = 5) -> tuple[float, float]:
    """(gain, offset) of y = gain x + offset by least squares, clipping residuals beyond ``sigma`` robust sigmas."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    gain, offset = math.nan, math.nan
    for _ in range(iterations):
        if keep.sum() < 3:
            break
        gain, offset = np.polyfit(x[keep], y[keep], 1)
        resid = y - (gain * x + offset)
        scale = robust_sigma(resid[keep])
        new_keep = keep & (np.abs(resid) <= sigma * scale) if scale > 0 else keep
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    return float(gain), float(offset)


def image_shift(
    reference: np.ndarray, moving: np.ndarray, valid: np.ndarray, upsample: int = 20
) -> tuple[float, float]:
    """(dy, dx) pixels by which ``moving`` is displaced relative to ``reference`` (cross-correlation).

    Both images are median-subtracted and set to 0 outside ``valid`` so that the footprint
    edge does not dominate the correlation; the plain cross-correlation (no phase
    normalisation) is used: phase normalisation biased sub-pixel shifts by 0.1 pixel on a
    field with a background gradient.
    """
    from skimage.registration import phase_cross_correlation

    if valid.sum() < 16:
        return math.nan, math.nan
    a = np.where(valid, reference - np.median(reference[valid]), 0.0)
    b = np.where(valid, moving - np.median(moving[valid]), 0.0)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
    # phase_cross_correlation gives the shift that registers ``b`` with ``a``; the displacement is its negative
    return float(-shift[0]), float(-shift[1])


def compare(old: np.ndarray, new: np.ndarray, valid: np.ndarray, pixel_scale_arcsec: float) -> dict:
    """Statistics of NEW - OLD on the ``valid`` pixels of one grid (see the module docstring)."""
    diff = new - old
    d = diff[valid]
    n_old = int(np.isfinite(old).sum())
    stats = {
        "common_pixels": int(valid.sum()),
        "common_fraction": float(valid.sum() / n_old) if n_old else 0.0,
        "median_diff_mjysr": float(np.median(d)) if d.size else math.nan,
        "sigma_diff_mjysr": robust_sigma(d),
        "flux_ratio": float(new[valid].sum() / old[valid].sum()) if d.size and old[valid].sum() != 0 else math.nan,
    }
    stats["gain"], stats["offset_mjysr"] = clipped_line(old[valid], new[valid])
    dy, dx = image_shift(old, new, valid)
    stats["shift_x_mas"] = dx * pixel_scale_arcsec * 1e3
    stats["shift_y_mas"] = dy * pixel_scale_arcsec * 1e3
    return stats


# --------------------------------------------------------------------------- FITS I/O
def read_mosaic(path) -> tuple[np.ndarray, object, np.ndarray]:
    """(SCI with zero-weight pixels NaN, SCI header, valid mask) of a mosaic."""
    from astropy.io import fits

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    with fits.open(path, memmap=True) as hdul:
        sci = np.array(hdul["SCI"].data, dtype=np.float64)
        header = hdul["SCI"].header.copy()
        if "WHT" in hdul:
            sci[~(np.asarray(hdul["WHT"].data) > 0)] = np.nan
    if sci.ndim != 2:
        raise wfutils.InputError(f"{path}: SCI is not a 2-D image")
    return sci, header, np.isfinite(sci)


def pixel_scale(header) -> float:
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)) * 3600.0)


def regress_pair(new_path, old_path, out_fits, out_png=None, cfg_hash=None) -> dict:
    """Reproject NEW onto OLD's grid, write the difference image (and PNG); return the statistics."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_interp

    old, old_header, old_valid = read_mosaic(old_path)
    new, new_header, _ = read_mosaic(new_path)
    new_on_old, footprint = reproject_interp(
        (new, WCS(new_header).celestial), WCS(old_header).celestial, shape_out=old.shape, order="bilinear"
    )
    valid = old_valid & np.isfinite(new_on_old) & (footprint > 0)
    if not valid.any():
        raise wfutils.InputError(f"{new_path} and {old_path} have no valid pixel in common (different fields?)")
    stats = compare(old, new_on_old, valid, pixel_scale(old_header))
    stats["new"], stats["old"] = Path(new_path).name, str(old_path)
    log.info(
        "%s vs %s: %d common pixels (%.1f%% of the old), median difference %+.4g MJy/sr, sigma %.4g, flux ratio %.5f, "
        "gain %.5f, offset %+.4g, shift (%+.1f, %+.1f) mas",
        Path(new_path).name, old_path, stats["common_pixels"], 100 * stats["common_fraction"],
        stats["median_diff_mjysr"], stats["sigma_diff_mjysr"], stats["flux_ratio"], stats["gain"],
        stats["offset_mjysr"], stats["shift_x_mas"], stats["shift_y_mas"],
    )  # fmt: skip
    wcs_header = WCS(old_header).celestial.to_header()
    diff = np.where(valid, new_on_old - old, np.nan).astype(np.float32)
    primary = fits.PrimaryHDU()
    cards = {
        "RGNPIX": ("common_pixels", "pixels valid in both"),
        "RGMEDDIF": ("median_diff_mjysr", "[MJy/sr] median NEW - OLD"),
        "RGSIGDIF": ("sigma_diff_mjysr", "[MJy/sr] robust sigma of NEW - OLD"),
        "RGFLUXRT": ("flux_ratio", "sum(NEW) / sum(OLD), common pixels"),
        "RGGAIN": ("gain", "NEW = RGGAIN x OLD + RGOFFSET"),
        "RGOFFSET": ("offset_mjysr", "[MJy/sr] offset of the fit"),
        "RGSHIFTX": ("shift_x_mas", "[mas] NEW displaced along x (cross-corr.)"),
        "RGSHIFTY": ("shift_y_mas", "[mas] NEW displaced along y (cross-corr.)"),
    }
    for key, (name, comment) in cards.items():
        value = stats[name]
        primary.header[key] = (value if not isinstance(value, float) or math.isfinite(value) else 0.0, comment)
    primary.header["RGOLD"] = (Path(old_path).name[:60], "previous-release mosaic")
    sci_header = wcs_header.copy()
    sci_header["BUNIT"] = "MJy/sr"
    hdul = fits.HDUList(
        [
            primary,
            fits.ImageHDU(diff, header=sci_header, name="SCI"),
            fits.ImageHDU(new_on_old.astype(np.float32), header=sci_header, name="NEW"),
        ]
    )
    wfutils.write_hdulist(hdul, out_fits, [new_path, old_path], cfg_hash, "regress")
    if out_png:
        figure(old, new_on_old, diff, stats, out_png)
    return stats


def figure(old, new, diff, stats, path) -> None:
    """Old, new (both on the old grid, linear 2-98% of the old) and difference (+-5 robust sigma)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(old)
    lo, hi = np.percentile(old[finite], [2, 98]) if finite.any() else (0, 1)
    half = 5 * stats["sigma_diff_mjysr"] if stats["sigma_diff_mjysr"] > 0 else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), constrained_layout=True)
    for ax, image, title, vmin, vmax, cmap in (
        (axes[0], old, f"previous release: {Path(stats['old']).name}", lo, hi, "gray"),
        (axes[1], new, "this run, on the previous grid", lo, hi, "gray"),
        (axes[2], diff, "this run - previous", -half, half, "RdBu_r"),
    ):
        shown = ax.imshow(image, origin="lower", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, label="MJy/sr")
    fig.suptitle(
        f"median difference {stats['median_diff_mjysr']:+.3g} MJy/sr, sigma {stats['sigma_diff_mjysr']:.3g}, "
        f"flux ratio {stats['flux_ratio']:.4f}, gain {stats['gain']:.4f}, "
        f"shift ({stats['shift_x_mas']:+.1f}, {stats['shift_y_mas']:+.1f}) mas",
        fontsize=10,
    )
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def write_table(rows: list[dict], path) -> None:
    columns = [
        "band", "new", "old", "common_pixels", "common_fraction", "median_diff_mjysr", "sigma_diff_mjysr",
        "flux_ratio", "gain", "offset_mjysr", "shift_x_mas", "shift_y_mas",
    ]  # fmt: skip

    def fmt(value):
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = ["\t".join(columns)] + ["\t".join(fmt(r.get(c, "")) for c in columns) for r in rows]
    wfutils.write_text("\n".join(lines) + "\n", path)


def parse_pair(text: str) -> tuple[str, str]:
    new, sep, old = text.partition("=")
    if not sep or not new or not old:
        raise wfutils.InputError(f"{text!r}: expected NEW_i2d.fits=OLD_i2d.fits")
    return new, old


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="NEW_i2d.fits=OLD_i2d.fits, one per band")
    parser.add_argument("--out-dir", required=True, help="difference images <NEW stem>_regress.fits and .png go here")
    parser.add_argument("--table", required=True, help="statistics, one row per band (TSV)")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG figures")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    out_dir = Path(args.out_dir)
    rows = []
    pairs = [parse_pair(p) for p in args.pairs]
    for k, (new, old) in enumerate(pairs, start=1):
        stem = Path(new).name.removesuffix(".fits")
        png = None if args.no_png else out_dir / f"{stem}_regress.png"
        stats = regress_pair(new, old, out_dir / f"{stem}_regress.fits", png, args.config_hash)
        parts = Path(new).name.split("_")
        rows.append({"band": parts[-2] if len(parts) >= 3 else stem, **stats})
        log.info("compared %d/%d bands", k, len(pairs))
    write_table(rows, args.table)


if __name__ == "__main__":
    wfutils.run_cli(main)
