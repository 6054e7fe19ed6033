"""Multi-scale stellar associations by watershed on point-source maps (PHANGS-HST, Lee et al. 2022 Sec. 4.7).

Method (Larson et al.). Point sources passing quality cuts (S/N >= ``snr_min`` in ``band``,
DAOFIND sharpness in ``sharpness_range``, PSF ``qfit`` <= ``qfit_max``; for a DOLPHOT catalog its
sharpness in ``dolphot_sharpness_range`` and crowding <= ``dolphot_crowding_max``) are put on the V-band
pixel grid as a map of ones at their positions. For each scale (FWHM 8, 16, 32, 64 pc at the
target's distance) the map is smoothed with a Gaussian of that FWHM and high-pass filtered by
subtracting the map smoothed with a ``highpass_factor`` (4) times wider Gaussian. A single,
isolated source filtered the same way sets both thresholds: markers are local maxima above
``peak_factor`` (1.5) times its peak (so regions are multi-peaked), and regions may grow only
where the map exceeds its value at radius FWHM/2 (the edge threshold). ``skimage.segmentation.
watershed`` floods the negated map from the markers inside that mask.

Each region gets: centroid (map-weighted), area, equivalent radius sqrt(area/pi) and the
half-light (effective) radius of the background-subtracted V-band light inside it, both in pc,
the number of point sources, and photometry in every band (sum of SCI minus a smooth
background over the region, errors from ERR), AB magnitudes.

    python scripts/associations.py --pointsources POINTS.ecsv --image BAND=DRC ...
        --distance-mpc D --output ASSOC.ecsv --masks MASKS.fits [--ds9 A.reg] [--qa-png A.png]
        [--params JSON] [--log LOG]

``MASKS.fits`` has one int32 label image per scale (EXTNAME ``SCALE_<n>PC``, V-band WCS);
the table (ECSV, FITS next to it) has one row per region with a ``scale_pc`` column.
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np

import detect_sources
from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("associations")

DEFAULTS = {
    "band": "F555W",
    "scales_pc": [8, 16, 32, 64],
    "highpass_factor": 4.0,
    "peak_factor": 1.5,
    "snr_min": 5.0,
    "sharpness_range": [0.3, 1.0],
    "qfit_max": 1.5,  # crowding raises qfit even in grouped fits; only poor fits are dropped
    # DOLPHOT point sources (sharpness_kind "dolphot"): DOLPHOT's sharpness is 0 for a perfect PSF
    "dolphot_sharpness_range": [-0.2, 0.2],
    "dolphot_crowding_max": 1.3,  # mag
    "bkg_box_px": 64,
}


# --------------------------------------------------------------------------- pure functions
def filtered_map(points: np.ndarray, fwhm_px: float, highpass_factor: float) -> np.ndarray:
    """Point map smoothed with a Gaussian of ``fwhm_px`` minus the map smoothed ``highpass_factor`` times wider."""
    from scipy.ndimage import gaussian_filter

    sigma = fwhm_px / 2.3548
    return gaussian_filter(points, sigma, mode="constant") - gaussian_filter(
        points, highpass_factor * sigma, mode="constant"
    )


def single_source_levels(fwhm_px: float, highpass_factor: float) -> tuple[float, float]:
    """(peak, value at radius FWHM/2) of one isolated source on the filtered map."""
    half = int(math.ceil(4 * highpass_factor * fwhm_px / 2.3548)) + 3
    single = np.zeros((2 * half + 1, 2 * half + 1))
    single[half, half] = 1.0
    filt = filtered_map(single, fwhm_px, highpass_factor)
    r = np.hypot(*np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1)))
    edge = float(np.interp(fwhm_px / 2.0, r[half, half:], filt[half, half:]))
    return float(filt[half, half]), edge


def point_map(x, y, shape) -> np.ndarray:
    """Map of point-source counts on the pixel grid (ones at the rounded positions)."""
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    ok = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
    out = np.zeros(shape)
    np.add.at(out, (iy[ok], ix[ok]), 1.0)
    return out


def segment(points: np.ndarray, fwhm_px: float, params: dict):
    """(label image, filtered map, peak threshold, edge threshold) of one scale."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    filt = filtered_map(points, fwhm_px, params["highpass_factor"])
    peak1, edge1 = single_source_levels(fwhm_px, params["highpass_factor"])
    threshold = params["peak_factor"] * peak1
    peaks = peak_local_max(
        filt, min_distance=max(1, int(round(fwhm_px / 2))), threshold_abs=threshold, exclude_border=False
    )
    markers = np.zeros(points.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    mask = filt > edge1
    labels = watershed(-filt, markers, mask=mask) if len(peaks) else np.zeros(points.shape, np.int32)
    return labels.astype(np.int32), filt, threshold, edge1


def region_properties(labels, filt, v_image, images: dict, zps: dict, members_x, members_y, pc_px):
    """Rows (dicts) of region properties: centroid, sizes (pc), member count, photometry per band."""
    from scipy import ndimage

    n = int(labels.max())
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    area = ndimage.sum(np.ones_like(labels), labels, index)
    weight = np.clip(filt, 0, None)
    cy, cx = np.array(ndimage.center_of_mass(weight, labels, index)).T
    ix, iy = np.round(members_x).astype(int), np.round(members_y).astype(int)
    ok = (ix >= 0) & (ix < labels.shape[1]) & (iy >= 0) & (iy < labels.shape[0])
    member_label = np.zeros(len(ix), int)
    member_label[ok] = labels[iy[ok], ix[ok]]
    n_members = np.bincount(member_label, minlength=n + 1)[1:]
    sums = {b: ndimage.sum(np.nan_to_num(s), labels, index) for b, (s, _) in images.items()}
    errs = {b: np.sqrt(ndimage.sum(np.nan_to_num(e) ** 2, labels, index)) for b, (_, e) in images.items()}
    objects = ndimage.find_objects(labels)
    rows = []
    for k in range(n):
        sl = objects[k]
        inside = labels[sl] == k + 1
        yy, xx = np.mgrid[sl]
        r = np.hypot(xx - cx[k], yy - cy[k])[inside]
        flux = np.clip(np.nan_to_num(v_image[sl][inside]), 0, None)
        order = np.argsort(r)
        cum = np.cumsum(flux[order])
        reff = float(r[order][np.searchsorted(cum, 0.5 * cum[-1])]) if cum[-1] > 0 else math.nan
        row = {
            "region_id": k + 1,
            "x": float(cx[k]),
            "y": float(cy[k]),
            "area_px": float(area[k]),
            "radius_eq_pc": math.sqrt(area[k] / math.pi) * pc_px,
            "reff_pc": reff * pc_px,
            "n_points": int(n_members[k]),
        }
        for band in images:
            row[f"flux_{band}"] = float(sums[band][k])
            row[f"flux_err_{band}"] = float(errs[band][k])
            row[f"mag_ab_{band}"] = float(cc.mag_from_flux(sums[band][k], zps[band]))
            row[f"mag_err_{band}"] = float(cc.mag_error(sums[band][k], errs[band][k]))
        rows.append(row)
    return rows


def quality_mask(points, params) -> np.ndarray:
    band = params["band"]
    snr = np.nan_to_num(np.asarray(points[f"snr_{band}"], float))
    use = snr >= params["snr_min"]
    if "origin" in points.colnames:
        dolphot = np.asarray(points["origin"]).astype(str) == "dolphot"
    else:
        dolphot = np.full(len(points), points.meta.get("sharpness_kind") == "dolphot")
    if "sharpness" in points.colnames:
        sharp = np.asarray(points["sharpness"], float)
        lo, hi = np.where(dolphot[:, None], params["dolphot_sharpness_range"], params["sharpness_range"]).T
        use &= (sharp >= lo) & (sharp <= hi)
    if "crowding" in points.colnames:
        crowd = np.nan_to_num(np.asarray(points["crowding"], float), nan=np.inf)
        use &= ~dolphot | (crowd <= params["dolphot_crowding_max"])
    if "qfit" in points.colnames:
        q = np.asarray(points["qfit"], float)
        use &= ~np.isfinite(q) | (q <= params["qfit_max"])
    return use


# --------------------------------------------------------------------------- QA and entry point
def qa_plot(path, v_image, masks: dict, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(masks)
    cols = min(n, 2)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 5.5 * rows), squeeze=False)
    finite = v_image[np.isfinite(v_image)]
    lo, hi = np.percentile(finite, [5, 99.5]) if finite.size else (0, 1)
    for ax, (scale, labels) in zip(axes.ravel(), masks.items(), strict=False):
        ax.imshow(np.arcsinh((v_image - lo) / max(hi - lo, 1e-9) * 10), origin="lower", cmap="gray_r")
        if labels.max() > 0:
            ax.contour(labels > 0, levels=[0.5], colors="tab:blue", linewidths=0.7)
        ax.set_title(f"{scale:g} pc: {int(labels.max())} associations", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run(points_path, image_paths: dict, distance_mpc, params, output, masks_path, ds9=None, qa_png=None):
    from astropy.io import fits
    from astropy.table import Table, vstack

    points = cc.read_table(points_path, ["x", "y", f"snr_{params['band']}"])
    images, zps, header, wcs = {}, {}, None, None
    for band, path in image_paths.items():
        sci, err, h, w = cc.read_drc(path, band)
        bkg = detect_sources.smooth_background(sci, int(params["bkg_box_px"]), 3)
        images[band], zps[band] = (sci - bkg, err), cc.zeropoints(h)["ab"]
        if band == cc.V_BAND:
            header, wcs = h, w
    if header is None:
        raise wfutils.InputError(f"--image {cc.V_BAND}=... is required (the pixel grid of the maps)")
    shape = images[cc.V_BAND][0].shape
    from astropy.wcs.utils import proj_plane_pixel_scales

    pixscale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    pc_px = cc.pc_per_pixel(distance_mpc, pixscale)
    use = quality_mask(points, params)
    px, py = np.asarray(points["x"], float)[use], np.asarray(points["y"], float)[use]
    pmap = point_map(px, py, shape)
    log.info(
        "%d of %d point sources pass the cuts; %.3f pc per pixel at %.2f Mpc",
        int(use.sum()),
        len(points),
        pc_px,
        distance_mpc,
    )
    tables, masks = [], {}
    hdus = [fits.PrimaryHDU()]
    wcs_header = wcs.to_header()
    for scale in params["scales_pc"]:
        fwhm_px = float(scale) / pc_px
        labels, filt, peak_thr, edge_thr = segment(pmap, fwhm_px, params)
        rows = region_properties(labels, filt, images[cc.V_BAND][0], images, zps, px, py, pc_px)
        table = Table(rows=rows) if rows else Table(names=["region_id", "x", "y"])
        table["scale_pc"] = float(scale)
        if rows:
            ra, dec = wcs.pixel_to_world_values(table["x"], table["y"])
            table["ra"], table["dec"] = ra, dec
        tables.append(table)
        masks[float(scale)] = labels
        hdu = fits.ImageHDU(labels, header=wcs_header, name=f"SCALE_{int(scale)}PC")
        hdu.header["SCALEPC"], hdu.header["FWHMPX"] = (float(scale), "smoothing FWHM (pc)"), (fwhm_px, "(px)")
        hdu.header["PEAKTHR"], hdu.header["EDGETHR"] = (peak_thr, "marker threshold"), (edge_thr, "mask threshold")
        hdus.append(hdu)
        median = float(np.median(2 * np.asarray(table["radius_eq_pc"]))) if rows else math.nan
        log.info(
            "%g pc (FWHM %.1f px): %d associations, median equivalent diameter %.1f pc",
            scale,
            fwhm_px,
            len(rows),
            median,
        )
    table = vstack([t for t in tables if len(t)]) if any(len(t) for t in tables) else Table()
    table.meta.update({"distance_mpc": distance_mpc, "pc_per_pixel": pc_px, "band": params["band"]})
    inputs = [points_path, *image_paths.values()]
    cc.write_table(table, output, inputs, "associations")
    if str(output).endswith(".ecsv"):
        cc.write_table(table, str(output)[: -len(".ecsv")] + ".fits", inputs, "associations")
    hdul = fits.HDUList(hdus)
    hdul[0].header["DISTMPC"] = distance_mpc
    wfutils.write_hdulist(hdul, masks_path, inputs, None, "associations")
    if ds9:
        colours = ["cyan", "green", "yellow", "magenta", "red", "blue"]
        text = ["# Region file format: DS9 version 4.1", "# stellar associations, one colour per scale", "image"]
        for i, t in enumerate(tables):
            for row in t if len(t) else []:
                r_px = row["radius_eq_pc"] / pc_px
                text.append(
                    f"circle({row['x'] + 1:.2f},{row['y'] + 1:.2f},{r_px:.2f}) # color={colours[i % 6]} "
                    f"text={{{row['scale_pc']:g}pc-{row['region_id']}}}"
                )
        wfutils.write_text("\n".join(text) + "\n", ds9)
    if qa_png:
        qa_plot(qa_png, images[cc.V_BAND][0], masks, f"stellar associations ({params['band']} point sources)")
    return table, masks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pointsources", required=True, help="point-source catalog (detect_sources.py or DOLPHOT)")
    parser.add_argument("--image", action="append", required=True, help="BAND=DRC (F555W required: the map grid)")
    parser.add_argument("--distance-mpc", type=float, required=True)
    parser.add_argument("--output", required=True, help="association catalog (ECSV; FITS next to it)")
    parser.add_argument("--masks", required=True, help="label images per scale (FITS)")
    parser.add_argument("--ds9")
    parser.add_argument("--qa-png")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    if not args.distance_mpc > 0:
        raise wfutils.InputError(f"--distance-mpc must be positive, not {args.distance_mpc}")
    paths = detect_sources.parse_band_paths(args.image, "image")
    run(args.pointsources, paths, args.distance_mpc, params, args.output, args.masks, args.ds9, args.qa_png)


if __name__ == "__main__":
    wfutils.run_cli(main)
