"""Quality-assessment figures and tables for the run report (``snakemake --report``).

The published pipelines are judged by eye (PHANGS-JWST Figs. 4, 7, 8, 12-13; CEERS Figs. 4, 9):
every figure here is what a person looks at to accept or reject a reduction. One subcommand
per kind of figure; each reads products the workflow already wrote and never changes them:

``quicklook MOSAIC --out PNG``
    The mosaic's SCI, linear between its 2nd and 98th percentiles (the stretch of the
    published figures), block-averaged to at most ``--max-side`` pixels.
``composite --red R --green G --blue B --out PNG``
    Three-colour image of three bands on the coarsest of their (shared) grids, each channel
    linear 2-98%, with a zoom on the brightest compact source to judge inter-band alignment.
``destripe MODEL... --out PNG``
    Stripe models (``destripe.py --noise-model``) of a band's exposures, worst first.
``level-offsets OFFSETS_JSON --out PNG``
    Offsets solved by ``level_match.py --report`` per image, and the pair residuals.
``json-table JSON... --out TSV --html HTML`` / ``ecsv-table ECSV ...`` / ``tsv-html TSV --html HTML``
    Astrometric residual statistics (``align_*.py --qa-json``), fit tables, as report tables
    (Snakemake's report shows HTML pages; a TSV is only a download).
``noise MOSAIC... --out PNG --table TSV``
    Error map versus measured noise (``correlated_noise.py`` header cards NCPIXRAT, NCAPRAT,
    NCORRFAC, block factors NCB<n>; re-measured on the delivered mosaic) and noise versus
    smoothing scale.
``benchmarks TSV... --out PNG --table TSV``
    Wall time and peak memory per rule from Snakemake's benchmark files.

Pure functions (``percentile_stretch``, ``block_average``, ``rgb_image``, ``benchmark_summary``,
...) work on numpy arrays; the FITS layer reads memory-mapped, in row blocks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("qa_plots")

STRETCH_PERCENTILES = (2.0, 98.0)


# --------------------------------------------------------------------------- pure functions
def percentile_stretch(image: np.ndarray, percentiles=STRETCH_PERCENTILES) -> tuple[np.ndarray, float, float]:
    """``image`` scaled linearly to 0..1 between two percentiles of its finite pixels (NaN kept).

    Returns (scaled, low, high). An image without finite pixels, or a flat one, gives zeros.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros_like(image), math.nan, math.nan
    lo, hi = np.percentile(image[finite], percentiles)
    span = hi - lo if hi > lo else 1.0
    scaled = np.clip((image - lo) / span, 0.0, 1.0)
    scaled[~finite] = np.nan
    return scaled, float(lo), float(hi)


def block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks ignoring NaN (NaN where a block has no finite pixel)."""
    if factor <= 1:
        return np.asarray(image, dtype=np.float32)
    ny, nx = image.shape
    ny2, nx2 = ny // factor * factor, nx // factor * factor
    blocks = np.asarray(image[:ny2, :nx2], dtype=np.float64).reshape(ny2 // factor, factor, nx2 // factor, factor)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    count = finite.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def reduction_factor(shape, max_side: int) -> int:
    """Smallest integer block size that brings the longest axis to at most ``max_side`` pixels."""
    return max(1, math.ceil(max(shape) / max_side))


def rgb_image(red, green, blue, percentiles=STRETCH_PERCENTILES) -> np.ndarray:
    """(ny, nx, 3) RGB in 0..1, each channel linear between its own percentiles; NaN -> black."""
    channels = [np.nan_to_num(percentile_stretch(c, percentiles)[0], nan=0.0) for c in (red, green, blue)]
    return np.dstack(channels)


def brightest_compact_source(image: np.ndarray, valid: np.ndarray, box: int = 5) -> tuple[int, int]:
    """(y, x) of the brightest local peak of a ``box``-smoothed image among ``valid`` pixels.

    Smoothing first keeps single hot pixels from being chosen; the image's border of ``box``
    pixels is ignored so that a zoom around it stays inside.
    """
    from scipy.ndimage import uniform_filter

    data = np.where(valid & np.isfinite(image), image, 0.0)
    smooth = uniform_filter(data, size=3) - uniform_filter(data, size=4 * box + 1)
    smooth[~valid] = -np.inf
    b = min(box * 2, min(image.shape) // 4)
    smooth[:b] = smooth[-b:] = -np.inf
    smooth[:, :b] = smooth[:, -b:] = -np.inf
    y, x = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(y), int(x)


def stripe_rms(stripes: np.ndarray) -> float:
    """RMS of a stripe model over its finite, non-zero pixels (the reference border is exactly 0)."""
    values = stripes[np.isfinite(stripes) & (stripes != 0)]
    return float(np.sqrt(np.mean(values.astype(np.float64) ** 2))) if values.size else 0.0


def benchmark_summary(records: list[dict]) -> list[dict]:
    """Per rule: jobs, total and longest wall time (s), total CPU time (s), largest peak RSS (MB).

    ``records``: one dict per benchmark file with ``rule`` and the TSV columns ``s``,
    ``max_rss`` and ``cpu_time`` (Snakemake writes ``-`` for unmeasured values -> NaN).
    Sorted by total wall time, longest first.
    """
    rules: dict[str, dict] = {}
    for rec in records:
        row = rules.setdefault(
            rec["rule"],
            {"rule": rec["rule"], "jobs": 0, "wall_s": 0.0, "max_wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0},
        )
        wall, cpu, rss = (_number(rec.get(k)) for k in ("s", "cpu_time", "max_rss"))
        row["jobs"] += 1
        row["wall_s"] += wall if np.isfinite(wall) else 0.0
        row["max_wall_s"] = max(row["max_wall_s"], wall if np.isfinite(wall) else 0.0)
        row["cpu_s"] += cpu if np.isfinite(cpu) else 0.0
        row["max_rss_mb"] = max(row["max_rss_mb"], rss if np.isfinite(rss) else 0.0)
    return sorted(rules.values(), key=lambda r: -r["wall_s"])


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def noise_curve(header) -> tuple[list[int], list[float]]:
    """Block sizes and correlation factors F(N) from a mosaic's NCB<n> header cards (CEERS Sec. 4)."""
    sizes, factors = [], []
    for key in header:
        if len(key) == 5 and key.startswith("NCB") and key[3:].isdigit():
            sizes.append(int(key[3:]))
            factors.append(float(header[key]))
    order = np.argsort(sizes)
    return [sizes[i] for i in order], [factors[i] for i in order]


# --------------------------------------------------------------------------- FITS readers
def read_reduced(path, extension: str, max_side: int) -> tuple[np.ndarray, int, object]:
    """A FITS image extension block-averaged to at most ``max_side`` pixels a side, read in row blocks.

    Returns (image, factor, header). Memory is one block of rows of the full image.
    """
    from astropy.io import fits

    path = Path(path)
    with fits.open(path, memmap=True) as hdul:
        if extension not in hdul:
            raise wfutils.InputError(f"{path}: no {extension} extension")
        hdu = hdul[extension]
        if hdu.data is None or hdu.data.ndim != 2:
            raise wfutils.InputError(f"{path}[{extension}]: not a 2-D image")
        header = hdu.header.copy()
        factor = reduction_factor(hdu.data.shape, max_side)
        ny = hdu.data.shape[0] // factor * factor
        rows = max(factor, (4096 // factor) * factor)
        parts = [block_average(np.asarray(hdu.data[y : min(y + rows, ny)]), factor) for y in range(0, ny, rows)]
    return np.vstack(parts), factor, header


def valid_science(path, max_side: int) -> tuple[np.ndarray, int, object]:
    """SCI with pixels of zero weight set to NaN (if the mosaic has WHT), reduced like ``read_reduced``."""
    from astropy.io import fits

    sci, factor, header = read_reduced(path, "SCI", max_side)
    with fits.open(path, memmap=True) as hdul:
        has_wht = "WHT" in hdul
    if has_wht:
        wht, _, _ = read_reduced(path, "WHT", max_side)
        sci = np.where(wht > 0, sci, np.nan)
    return sci, factor, header


def band_of(path) -> str:
    """Filter of a mosaic: the FILTER card, else the ``<target>_<band>_i2d.fits`` name."""
    from astropy.io import fits

    header = fits.getheader(path, 0)
    return str(header.get("FILTER") or Path(path).name.split("_")[-2])


def pixel_scale_arcsec(header) -> float:
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)) * 3600.0)


def save_figure(fig, path, dpi=90) -> None:
    import matplotlib.pyplot as plt

    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- figures
def quicklook(path, out, max_side: int = 1200, percentiles=STRETCH_PERCENTILES, title: str | None = None) -> dict:
    """Quick-look PNG of a mosaic: SCI, linear between its 2nd and 98th percentiles, north up."""
    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    sci, factor, header = valid_science(path, max_side)
    scaled, lo, hi = percentile_stretch(sci, percentiles)
    plt = pyplot()
    ny, nx = scaled.shape
    fig, ax = plt.subplots(figsize=(7.5, 7.5 * ny / nx + 0.8), constrained_layout=True)
    cmap = plt.get_cmap("gray").with_extremes(bad="#301020")
    shown = ax.imshow(scaled * (hi - lo) + lo, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(
        shown, ax=ax, fraction=0.04, pad=0.01, label=f"MJy/sr (linear, {percentiles[0]:g}-{percentiles[1]:g}%)"
    )
    scale = pixel_scale_arcsec(header) * factor
    ax.set_title(
        title or f'{Path(path).name}: {sci.shape[1] * factor} x {sci.shape[0] * factor} px, shown at {scale:.3f}"/px',
        fontsize=9,
    )
    save_figure(fig, out)
    log.info("%s: quick-look %s (block %d, stretch %.7g .. %.7g MJy/sr)", Path(path).name, out, factor, lo, hi)
    return {"low": lo, "high": hi, "factor": factor}


def common_grid_images(paths, max_side: int) -> tuple[list[np.ndarray], object]:
    """The SCI of several mosaics of one target on the coarsest of their grids.

    The workflow's bands share a tangent point, orientation and outer edges with pixel scales
    that are integer multiples of each other (mosaic_grid.py), so finer bands are block-averaged
    onto the coarsest grid; other grids are reprojected (``reproject_interp``).
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    headers = [fits.getheader(p, "SCI") for p in paths]
    scales = [pixel_scale_arcsec(h) for h in headers]
    coarse = int(np.argmax(scales))
    target_shape = (headers[coarse]["NAXIS2"], headers[coarse]["NAXIS1"])
    base = reduction_factor(target_shape, max_side)
    images = []
    for path, header, scale in zip(paths, headers, scales, strict=True):
        ratio = scales[coarse] / scale
        shape = (header["NAXIS2"], header["NAXIS1"])
        if abs(ratio - round(ratio)) < 1e-6 and tuple(round(ratio) * s for s in target_shape) == shape:
            image, _, _ = valid_science(path, max(shape) // (round(ratio) * base))
        else:
            from reproject import reproject_interp

            log.info("%s: grid differs from the coarsest band's; reprojecting", Path(path).name)
            sci, factor, hdr = valid_science(path, max_side * 4)
            wcs_in = WCS(hdr).celestial[::factor, ::factor] if factor > 1 else WCS(hdr).celestial
            out_wcs = WCS(headers[coarse]).celestial
            out_wcs = out_wcs[::base, ::base] if base > 1 else out_wcs
            image, _ = reproject_interp(
                (sci, wcs_in), out_wcs, shape_out=(target_shape[0] // base, target_shape[1] // base)
            )
        images.append(image)
    shape = np.min([im.shape for im in images], axis=0)
    return [im[: shape[0], : shape[1]] for im in images], headers[coarse]


def composite(red, green, blue, out, max_side: int = 1200, zoom_px: int = 40, title: str = "") -> dict:
    """Three-colour PNG (red = longest wavelength) and a zoom on the brightest compact source."""
    paths = [red, green, blue]
    for p in paths:
        wfutils.check_image_file(p, extensions=("SCI",), unit=None)
    images, _ = common_grid_images(paths, max_side)
    rgb = rgb_image(*images)
    covered = np.all([np.isfinite(im) for im in images], axis=0)
    y, x = brightest_compact_source(images[1], covered)
    half = max(8, min(zoom_px, min(rgb.shape[:2]) // 4))
    y0, x0 = max(0, y - half), max(0, x - half)
    # the zoom is stretched on its own pixels: the source's core colours are what show misalignment
    zoom_images = [im[y0 : y + half, x0 : x + half] for im in images]
    zoom = rgb_image(*zoom_images, percentiles=(1.0, 99.8))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), gridspec_kw={"width_ratios": [1.6, 1]}, constrained_layout=True)
    axes[0].imshow(rgb, origin="lower", interpolation="nearest")
    axes[0].add_patch(plt.Rectangle((x0, y0), zoom.shape[1], zoom.shape[0], fill=False, color="w", lw=1))
    axes[1].imshow(zoom, origin="lower", interpolation="nearest")
    names = [band_of(p) for p in paths]
    axes[0].set_title(f"{title} R/G/B = {' / '.join(names)} (each linear 2-98%)", fontsize=9)
    axes[1].set_title("zoom on the brightest compact source: colour fringes = misaligned bands", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, out)
    log.info("composite %s: R/G/B %s, zoom at (%d, %d)", out, "/".join(names), x, y)
    return {"bands": names, "zoom_centre": (y, x)}


def destripe_panels(models, out, max_panels: int = 12, title: str = "") -> list[tuple[str, float]]:
    """Thumbnails of the stripe models of a band, largest RMS first, one symmetric stretch."""
    from astropy.io import fits

    rms = []
    for path in models:
        with fits.open(path, memmap=True) as hdul:
            if "STRIPES" not in hdul:
                raise wfutils.InputError(f"{path}: no STRIPES extension (not a destripe.py --noise-model file)")
            rms.append((str(path), stripe_rms(np.asarray(hdul["STRIPES"].data))))
    rms.sort(key=lambda item: -item[1])
    shown = rms[:max_panels]
    plt = pyplot()
    ncol = min(4, max(1, len(shown)))
    nrow = math.ceil(len(shown) / ncol) + 1
    fig = plt.figure(figsize=(3.2 * ncol + 0.5, 3.0 * nrow), constrained_layout=True)
    grid = fig.add_gridspec(nrow, ncol)
    half = 3.0 * max((r for _, r in shown), default=1.0) or 1.0
    for k, (path, value) in enumerate(shown):
        ax = fig.add_subplot(grid[1 + k // ncol, k % ncol])
        stripes = fits.getdata(path, "STRIPES")
        image = ax.imshow(stripes, origin="lower", cmap="RdBu_r", vmin=-half, vmax=half, interpolation="nearest")
        ax.set_title(f"{Path(path).name.removesuffix('_stripes.fits')}\nrms {value:.2g}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[0, :])
    ax.bar(range(len(rms)), [r for _, r in rms], color="C0")
    ax.set_ylabel("stripe model rms (MJy/sr)")
    ax.set_xlabel(f"{len(rms)} exposures, largest first (the {len(shown)} largest shown below)")
    ax.set_title(title, fontsize=9)
    if shown:
        fig.colorbar(image, ax=fig.axes[1:], shrink=0.6, label="stripe model (MJy/sr)")
    save_figure(fig, out)
    log.info("destripe panels %s: %d models, largest rms %.3g", out, len(rms), rms[0][1] if rms else 0.0)
    return rms


def level_offsets(report_path, out, title: str = "") -> dict:
    """Offsets per image (total and first stage, formal errors) and pair residuals of a level-match report."""
    report = read_json(report_path)
    if "images" not in report or "stages" not in report:
        raise wfutils.InputError(f"{report_path}: not a level_match.py --report file (no images/stages)")
    images = report["images"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2.2, 1]}, constrained_layout=True)
    x = np.arange(len(images))
    total = np.array([im["offset_mjysr"] for im in images])
    errors = np.array([im["formal_error_mjysr"] for im in images])
    lyot = np.array(["_lyot" in im.get("file", "") for im in images])
    for part, colour, label in (
        (~lyot, "C0", "subtracted offset"),
        (lyot, "C3", "subtracted offset, MIRI coronagraph part"),
    ):
        if part.any():
            axes[0].errorbar(x[part], total[part], yerr=errors[part], fmt="o", ms=3, color=colour, label=label)
    axes[0].plot(x, [im["stage1_offset_mjysr"] for im in images], "x", ms=4, color="C1", label="stage 1 (within visit)")
    visits = [im.get("visit_id") for im in images]
    for k in range(1, len(visits)):
        if visits[k] != visits[k - 1]:
            axes[0].axvline(k - 0.5, color="0.8", lw=0.8)
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].set_xlabel("image (grouped by visit)")
    axes[0].set_ylabel("offset (MJy/sr)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(title, fontsize=9)
    for stage in report["stages"]:
        pairs = [p for group in stage.get("groups") or [stage] for p in group.get("pairs", [])]
        kept = [p["residual_mjysr"] for p in pairs if p.get("kept") and p.get("residual_mjysr") is not None]
        if kept:
            axes[1].hist(kept, bins=20, histtype="step", lw=1.5, label=f"stage {stage['stage']}: {len(kept)} pairs")
    n_rejected = len(report.get("rejected_pairs", []))
    axes[1].set_xlabel("pair residual after the fit (MJy/sr)")
    axes[1].set_title(f"{n_rejected} pair(s) rejected", fontsize=9)
    axes[1].legend(fontsize=8)
    save_figure(fig, out)
    log.info("level offsets %s: %d images, %d rejected pairs", out, len(images), n_rejected)
    return {"images": len(images), "rejected": n_rejected}


def noise_figure(mosaics, out, table, max_side: int = 1024, html=None) -> list[dict]:
    """Error map versus measured noise per band and noise versus smoothing scale (CEERS Sec. 4).

    From the header (measured by correlated_noise.py before any rescaling): NCPIXRAT (pixel
    scatter / ERR), NCAPRAT (aperture noise / ERR prediction), the block factors NCB<n>. On
    the delivered mosaic, pixel scatter / ERR is measured again on source-free sky (window of
    at most ``max_side`` pixels): ~1 when ``apply_to: pixel`` rescaled ERR.
    """
    from astropy.io import fits

    import correlated_noise

    rows, curves = [], {}
    for path in mosaics:
        header = fits.getheader(path, 0)
        band = band_of(path)
        if "NCPIXRAT" not in header:
            raise wfutils.InputError(f"{path}: no NCPIXRAT card (the mosaic did not pass correlated_noise.py)")
        measured = correlated_noise.measure_file(path, {**correlated_noise.DEFAULTS, "max_measure_side": max_side})
        rows.append(
            {
                "band": band,
                "NCPIXRAT": float(header["NCPIXRAT"]),
                "NCAPRAT": float(header.get("NCAPRAT", math.nan)),
                "NCORRFAC": float(header.get("NCORRFAC", math.nan)),
                "NCSCALE": float(header.get("NCSCALE", math.nan)),
                "NCAPPLY": str(header.get("NCAPPLY", "")),
                "delivered_pixel_ratio": float(measured["pixel_ratio"]),
                "delivered_aperture_ratio": float(measured["aperture_ratio"]),
                "sky_pixels": int(measured["sky_pixels"]),
            }
        )
        curves[band] = noise_curve(header)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), constrained_layout=True)
    x = np.arange(len(rows))
    w = 0.2
    for k, (key, label) in enumerate(
        [
            ("NCPIXRAT", "pixel scatter / ERR, before rescaling"),
            ("NCAPRAT", "aperture noise / ERR, before rescaling"),
            ("delivered_pixel_ratio", "pixel scatter / ERR, delivered"),
            ("delivered_aperture_ratio", "aperture noise / ERR, delivered"),
        ]
    ):
        axes[0].bar(x + (k - 1.5) * w, [r[key] for r in rows], w, label=label)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_xticks(x, [r["band"] for r in rows])
    axes[0].set_ylabel("measured noise / error-map prediction")
    axes[0].legend(fontsize=7)
    axes[0].set_title("error map vs measured noise (1 = ERR is right)", fontsize=9)
    for band, (sizes, factors) in curves.items():
        axes[1].plot(sizes, factors, "o-", ms=3, label=band)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].set_xlabel("smoothing: block side N (pixels)")
    axes[1].set_ylabel("noise in N x N blocks / (N x pixel noise)")
    axes[1].set_title("noise vs smoothing (1 = uncorrelated pixels)", fontsize=9)
    axes[1].legend(fontsize=7, ncol=2)
    save_figure(fig, out)
    write_table(rows, table, html, "Noise: measured / predicted by the error map")
    log.info("noise figure %s: %d bands", out, len(rows))
    return rows


def benchmark_figure(paths, out, table, base=None, html=None) -> list[dict]:
    """Wall time and peak memory per rule from ``benchmarks/<rule>/...tsv`` files."""
    records = []
    for path in paths:
        path = Path(path)
        rel = path.relative_to(base) if base and path.is_relative_to(base) else path
        lines = path.read_text().splitlines()
        if len(lines) < 2:
            raise wfutils.InputError(f"{path}: benchmark file without a data row")
        names = lines[0].split("\t")
        for line in lines[1:]:
            records.append({"rule": rel.parts[0], **dict(zip(names, line.split("\t"), strict=False))})
    summary = benchmark_summary(records)
    plt = pyplot()
    fig, axes = plt.subplots(
        1, 2, figsize=(13, 0.32 * max(len(summary), 4) + 1.4), sharey=True, constrained_layout=True
    )
    y = np.arange(len(summary))[::-1]
    axes[0].barh(y, [r["wall_s"] for r in summary], color="C0", label="sum over jobs")
    axes[0].barh(y, [r["max_wall_s"] for r in summary], color="C1", height=0.4, label="longest job")
    axes[0].set_yticks(y, [f"{r['rule']} ({r['jobs']})" for r in summary], fontsize=7)
    axes[0].set_xlabel("wall time (s)")
    axes[0].legend(fontsize=8)
    axes[1].barh(y, [r["max_rss_mb"] for r in summary], color="C2")
    axes[1].set_xlabel("largest peak memory of a job (max RSS, MB)")
    axes[0].set_title("run time per rule (jobs in brackets)", fontsize=9)
    axes[1].set_title("memory per rule", fontsize=9)
    save_figure(fig, out)
    write_table(summary, table, html, "Run time and memory per rule")
    log.info("benchmarks %s: %d files, %d rules", out, len(paths), len(summary))
    return summary


def benchmark_files(base, target=None) -> list[Path]:
    """Benchmark TSVs under ``base`` (``<rule>/<target>/...tsv`` or ``<rule>/<target>.tsv``), of one target if given."""
    base = Path(base)
    files = sorted(base.rglob("*.tsv"))
    if target is None:
        return files
    return [
        f
        for f in files
        if len(f.relative_to(base).parts) > 1
        and (f.relative_to(base).parts[1] == target or f.relative_to(base).parts[1] == f"{target}.tsv")
    ]


# --------------------------------------------------------------------------- tables
def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise wfutils.InputError(f"{path}: not a readable JSON file ({exc})") from None


def table_columns(rows: list[dict]) -> list[str]:
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_tsv(rows: list[dict], path) -> None:
    """Rows of dicts as a tab-separated table (union of keys, in first-seen order); floats to 4 digits."""
    columns = table_columns(rows)
    lines = ["\t".join(columns)] + ["\t".join(format_cell(r.get(c)) for c in columns) for r in rows]
    wfutils.write_text("\n".join(lines) + "\n", path)


def html_table(rows: list[dict], title: str = "") -> str:
    """A small self-contained HTML page with the rows as a table (the report shows it in a frame)."""
    import html

    columns = table_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    style = (
        "body{font-family:sans-serif;font-size:13px;margin:8px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
        "td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def write_table(rows: list[dict], tsv=None, html=None, title: str = "") -> None:
    """The rows as TSV and/or as an HTML page."""
    if tsv:
        write_tsv(rows, tsv)
    if html:
        wfutils.write_text(html_table(rows, title), html)


def read_tsv(path) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise wfutils.InputError(f"{path}: empty table")
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"), strict=False)) for line in lines[1:] if line]


def flatten(doc: dict, prefix: str = "") -> dict:
    """Nested dict -> one level with dotted keys (lists joined by commas)."""
    out = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


def json_table(paths, out, html=None) -> list[dict]:
    """Astrometry QA JSON (``align_relative``: ``groups``; ``align_absolute``: ``bands``) -> one row per group/band."""
    rows = []
    for path in paths:
        doc = read_json(path)
        entries = doc.get("groups") or doc.get("bands")
        if entries is None:
            raise wfutils.InputError(f"{path}: neither 'groups' nor 'bands' (not an align_*.py --qa-json file)")
        for key, stats in entries.items():
            rows.append({"file": Path(path).name, "step": doc.get("step", ""), "group": key, **flatten(stats)})
    write_table(rows, out, html, "Astrometric residuals")
    return rows


def ecsv_table(path, out, html=None) -> list[dict]:
    """An ECSV fit table (e.g. anchor_background.py --table) as TSV for the report."""
    from astropy.table import Table

    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # astropy raises many types
        raise wfutils.InputError(f"{path}: not a readable ECSV table ({exc})") from None
    rows = [{c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in table.colnames} for row in table]
    write_table(rows, out, html, Path(path).name)
    return rows


# --------------------------------------------------------------------------- command line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("quicklook", help="quick-look PNG of a mosaic (linear 2-98%%)")
    p.add_argument("mosaic")
    p.add_argument("--out", required=True)
    p.add_argument("--max-side", type=int, default=1200)
    p = sub.add_parser("composite", help="three-colour PNG of three bands")
    for colour in ("red", "green", "blue"):
        p.add_argument(f"--{colour}", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--max-side", type=int, default=1200)
    p = sub.add_parser("destripe", help="stripe-model panels of a band")
    p.add_argument("models", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p = sub.add_parser("level-offsets", help="offsets and pair residuals of a level_match report")
    p.add_argument("report")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p = sub.add_parser("json-table", help="astrometry QA JSON files as one table")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", help="TSV")
    p.add_argument("--html", help="HTML page")
    p = sub.add_parser("ecsv-table", help="an ECSV table as TSV/HTML")
    p.add_argument("input")
    p.add_argument("--out", help="TSV")
    p.add_argument("--html", help="HTML page")
    p = sub.add_parser("tsv-html", help="a TSV table as an HTML page (and a copy of the TSV)")
    p.add_argument("input")
    p.add_argument("--out", help="copy of the table (TSV)")
    p.add_argument("--html", required=True)
    p.add_argument("--title", default="")
    p = sub.add_parser("noise", help="error map vs measured noise and noise vs smoothing")
    p.add_argument("mosaics", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--html", help="the table as an HTML page")
    p = sub.add_parser("benchmarks", help="run time and memory per rule")
    p.add_argument("benchmarks", help="benchmarks directory: <rule>/<target>/...tsv or <rule>/<target>.tsv")
    p.add_argument("--target", help="only this target's files")
    p.add_argument("--out", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--html", help="the table as an HTML page")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    if args.command == "quicklook":
        quicklook(args.mosaic, args.out, args.max_side)
    elif args.command == "composite":
        composite(args.red, args.green, args.blue, args.out, args.max_side, title=args.title)
    elif args.command == "destripe":
        destripe_panels(args.models, args.out, title=args.title)
    elif args.command == "level-offsets":
        level_offsets(args.report, args.out, args.title)
    elif args.command == "json-table":
        json_table(args.inputs, args.out, args.html)
    elif args.command == "ecsv-table":
        ecsv_table(args.input, args.out, args.html)
    elif args.command == "tsv-html":
        write_table(read_tsv(args.input), tsv=args.out, html=args.html, title=args.title)
    elif args.command == "noise":
        noise_figure(args.mosaics, args.out, args.table, html=args.html)
    elif args.command == "benchmarks":
        files = benchmark_files(args.benchmarks, args.target)
        if not files:
            raise wfutils.InputError(
                f"no benchmark .tsv files of {args.target or 'any target'} under {args.benchmarks}"
            )
        benchmark_figure(files, args.out, args.table, Path(args.benchmarks), args.html)


if __name__ == "__main__":
    wfutils.run_cli(main)
