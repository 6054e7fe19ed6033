"""Synthetic clusters and the MCI selection regions (PHANGS-HST, Lee et al. 2022 Sec. 4.4; Thilker et al. 2022).

Method. Model clusters from the grid of PSF-convolved Moffat/EFF profiles (``n_fwhm``
log-spaced FWHM in ``fwhm_px`` x ``n_slope`` slopes in ``slope``: 12 x 18 = 216 models, as the
paper) are inserted into the V-band image ``batch_size`` at a time at random positions (at
least ``min_separation_px`` apart) with V magnitudes uniform between the bright end
(``abs_mag_v``[0] + distance modulus) and the detection limit (a point source at S/N
``limit_snr`` in the 4 px aperture, from the ERR map). They carry photon noise like real
sources: Poisson counts over the image's EXPTIME, their variance added to ERR. Each batch is
measured exactly like the real sources: DAOStarFinder on the image with the batch (the kernels,
thresholds and noise map of ``detect_sources.py``, its wide search included), a match within
``match_radius_px``, then aperture photometry and MCI (``concentration.measure``) at the V-band
PSF-fitted position, as for the real sources (``detect_sources.psf_positions``; ``centring:
dao`` uses the DAOStarFinder centroid instead). The MCIs of detected synthetic clusters with V
S/N >= ``hist_snr_min`` form 2D histograms with bin sizes 0.01, 0.02 and 0.04; each model region
is the set of bins holding at least ``min_count`` clusters after smoothing by ``smooth_bins``
bins (holes filled): three nested selection regions, drawn as contours. The
**stellar region** -- where the point sources of the field dominate -- is the highest-density
region of their MCI distribution (bin ``stellar_bin``, counts smoothed by one bin) holding
``stellar_fraction`` (90%) of them; point sources are PSF-fitted (or DOLPHOT) sources with
S/N >= ``hist_snr_min`` and ``qfit <= stellar_qfit_max``.

    python scripts/inject_clusters.py --image V_drc.fits --psf V_psf.fits --catalog CAT.ecsv
        --distance-mpc D --output SYNTH.ecsv --regions REGIONS.fits [--qa-png QA.png]
        [--n-clusters N] [--seed S] [--params JSON] [--log LOG]

``REGIONS.fits`` holds, per bin size b, HIST_<b> (counts) and REGION_<b> (0/1 mask), and
STELLAR (0/1) with STELLAR_HIST, on the MCI_in (x) x MCI_out (y) plane; header cards MCIIN0,
MCIOUT0 (lower edges) and BINSIZE. ``select_clusters.py`` reads it.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import zlib

import numpy as np

import concentration
import detect_sources
from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("inject_clusters")

DEFAULTS = {
    "n_clusters": 5000,
    "batch_size": 200,
    "min_separation_px": 20.0,
    "border_px": 20,
    "fwhm_px": [0.5, 7.0],
    "n_fwhm": 12,
    "slope": [0.75, 4.0],
    "n_slope": 18,
    "abs_mag_v": [-11.0, -4.0],
    "limit_snr": 5.0,
    "match_radius_px": 1.5,
    "hist_snr_min": 10.0,
    "bin_sizes": [0.01, 0.02, 0.04],
    "min_count": 0.3,  # smoothed synthetic clusters per bin (a number or one per bin size)
    "smooth_bins": 2.0,  # see model_region
    "mci_in_range": [-2.0, 1.5],
    "mci_out_range": [-4.0, 2.5],
    "stellar_bin": 0.04,
    "stellar_fraction": 0.9,  # of the point sources inside the stellar region
    "stellar_qfit_max": 0.3,
    # where the synthetic clusters are measured: "psf" (the V-band PSF fit the real sources get,
    # detect_sources.psf_positions: the paper's "same procedure used to measure real sources") or
    # "dao" (DAOStarFinder centroids, ~2.5x faster). With "dao" the extended synthetic clusters were
    # centred twice as well as the real ones (median offset 0.17 vs 0.35 px at S/N 20-50,
    # FWHM > 2.5 px); with "psf" 0.29 vs 0.35 px (tests/bench/catalogs.py).
    "centring": "psf",
    "detection": {},  # detect_sources.py parameters (must equal those of the real detection)
    "concentration": {},  # concentration.py parameters
}


# --------------------------------------------------------------------------- pure functions
def model_grid(params: dict) -> list[tuple[float, float]]:
    """(FWHM px, slope) of every model: log-spaced FWHM x linear slopes."""
    fwhms = np.exp(np.linspace(*np.log(params["fwhm_px"]), int(params["n_fwhm"])))
    slopes = np.linspace(*params["slope"], int(params["n_slope"]))
    return [(float(f), float(s)) for f in fwhms for s in slopes]


def magnitude_range(err, zp_ab: float, library: cc.ProfileLibrary, distance_mpc: float, params: dict):
    """(bright, faint) apparent AB magnitudes: the bright absolute limit, and the point-source detection limit."""
    stamp, _ = library.stamp(cc.V_BAND, 0, 0)
    ee4 = cc.encircled_fraction(stamp, 4.0)
    noise4 = float(np.nanmedian(err)) * math.sqrt(math.pi * 16.0)
    faint = zp_ab - 2.5 * math.log10(params["limit_snr"] * noise4 / ee4)
    bright = params["abs_mag_v"][0] + cc.distance_modulus(distance_mpc)
    return bright, max(faint, bright + 1.0)


def random_positions(rng, n, shape, border, min_sep):
    """Up to ``n`` positions inside the border, no two closer than ``min_sep`` (dart throwing)."""
    ny, nx = shape
    xs, ys = [], []
    for _ in range(50 * n):
        if len(xs) == n:
            break
        x, y = rng.uniform(border, nx - border), rng.uniform(border, ny - border)
        if all((x - a) ** 2 + (y - b) ** 2 >= min_sep**2 for a, b in zip(xs, ys, strict=True)):
            xs.append(x)
            ys.append(y)
    return np.array(xs), np.array(ys)


def with_photon_noise(sci, err, signal, exptime: float, rng):
    """(image, ERR) with ``signal`` (e-/s) added as Poisson counts over ``exptime`` and its variance added to ERR.

    Synthetic clusters must be measured like the real sources (Lee et al. 2022 Sec. 4.4): those
    carry their own photon noise, and their S/N and MCI errors come from an ERR map that includes
    it. Inserted noiseless, bright synthetic clusters had S/N several times too high and MCIs
    without scatter, so the model region missed the real clusters' noisy tails."""
    positive = np.clip(signal, 0, None)
    image = sci + rng.poisson(positive * exptime) / exptime
    return image, np.sqrt(err**2 + positive / exptime)


def inject_and_measure(sci, err, noise, bkg, library, zp_ab, mag_range, params, rng, n_total, psf_model, exptime):
    """Insert synthetic clusters (photon noise over ``exptime`` s) and measure them, batch by batch: dict of columns."""
    grid = model_grid(params)
    cols = {
        k: []
        for k in (
            "batch",
            "x",
            "y",
            "fwhm_px",
            "slope",
            "mag_v_ab",
            "detected",
            "x_meas",
            "y_meas",
            "flux_F555W",
            "snr_F555W",
            "ci13",
            "mci_in",
            "mci_out",
        )
    }
    det_params = {**detect_sources.DEFAULTS, **params["detection"]}
    ci_params = {**concentration.DEFAULTS, **params["concentration"]}
    radii = ci_params["radii_px"]
    j4 = radii.index(4.0)
    batch = 0
    while len(cols["x"]) < n_total:
        n = min(int(params["batch_size"]), n_total - len(cols["x"]))
        x, y = random_positions(rng, n, sci.shape, params["border_px"], params["min_separation_px"])
        if len(x) == 0:
            raise wfutils.InputError("no room for synthetic clusters: image smaller than twice border_px")
        models = [grid[i] for i in rng.integers(0, len(grid), len(x))]
        mags = rng.uniform(*mag_range, len(x))
        qx, qy, ix, iy, px, py = cc.quantize_position(x, y, library.os)
        signal = np.zeros_like(sci)
        for k, (fwhm, slope) in enumerate(models):
            stamp, _ = library.stamp(cc.V_BAND, int(px[k]), int(py[k]), fwhm, slope)
            cc.add_stamp(signal, stamp, int(ix[k]), int(iy[k]), 10 ** (-0.4 * (mags[k] - zp_ab)))
        image, image_err = with_photon_noise(sci, err, signal, exptime, rng)
        fx, fy = detect_sources.find_all_sources(image - bkg, noise, det_params)
        idx = detect_sources.match_nearest(qx, qy, fx, fy, params["match_radius_px"])
        detected = idx >= 0
        xm = np.where(detected, fx[np.maximum(idx, 0)], qx)
        ym = np.where(detected, fy[np.maximum(idx, 0)], qy)
        if params["centring"] == "psf" and detected.any():  # the real sources' positions: V-band PSF fits
            xm[detected], ym[detected], _, _ = detect_sources.psf_positions(
                image - bkg, image_err, psf_model, xm[detected], ym[detected], det_params
            )
        res = concentration.measure(image, image_err, xm, ym, library, ci_params)
        flux4, err4 = res["fluxes"][:, j4], res["flux_errs"][:, j4]
        batch += 1
        values = {
            "batch": np.full(len(x), batch),
            "x": qx,
            "y": qy,
            "fwhm_px": [m[0] for m in models],
            "slope": [m[1] for m in models],
            "mag_v_ab": mags,
            "detected": detected,
            "x_meas": xm,
            "y_meas": ym,
            "flux_F555W": flux4,
            "snr_F555W": flux4 / err4,
            "ci13": res["ci13"],
            "mci_in": res["mci_in"],
            "mci_out": res["mci_out"],
        }
        for key, value in values.items():
            cols[key].extend(np.asarray(value).tolist())
        log.info("batch %d: %d clusters inserted, %d detected", batch, len(x), int(detected.sum()))
    return {k: np.asarray(v) for k, v in cols.items()}


def mci_histogram(mci_in, mci_out, bin_size, params):
    """Counts on the MCI plane (rows: MCI_out, columns: MCI_in) and the lower edges."""
    lo_in, hi_in = params["mci_in_range"]
    lo_out, hi_out = params["mci_out_range"]
    nx = int(round((hi_in - lo_in) / bin_size))
    ny = int(round((hi_out - lo_out) / bin_size))
    ok = np.isfinite(mci_in) & np.isfinite(mci_out)
    hist, _, _ = np.histogram2d(
        mci_out[ok], mci_in[ok], bins=[ny, nx], range=[[lo_out, lo_out + ny * bin_size], [lo_in, lo_in + nx * bin_size]]
    )
    return hist, (lo_in, lo_out)


def model_region(hist, min_count, smooth_bins):
    """Bins whose count, smoothed by a Gaussian of ``smooth_bins`` bins, is at least ``min_count``; holes filled.

    The paper's histograms hold ~4e6 clusters, enough to reach the scatter of the faint ones;
    with thousands the smoothing stands in for the clusters a bin would have received. Two bins
    rather than one widen the 0.04 region by ~25% of its area, almost all of it taken up by
    clusters at S/N 10-20 (tests/bench/catalogs.py, 7 simulation seeds)."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    smooth = gaussian_filter(hist.astype(float), smooth_bins, mode="constant") if smooth_bins > 0 else hist
    return binary_fill_holes(smooth >= min_count)


def stellar_region(hist, fraction):
    """The region dominated by point sources: the densest bins of their density (smoothed by one
    bin) that together hold ``fraction`` of it (a highest-density region), its part around the
    density peak, holes filled."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter, label

    smooth = gaussian_filter(hist.astype(float), 1.0)
    if smooth.max() <= 0:
        return np.zeros_like(hist, dtype=bool)
    values = np.sort(smooth.ravel())[::-1]
    cumulative = np.cumsum(values) / values.sum()
    level = values[min(int(np.searchsorted(cumulative, fraction)), len(values) - 1)]
    labels, _ = label(smooth >= level)
    peak = labels[np.unravel_index(np.argmax(smooth), smooth.shape)]
    return binary_fill_holes(labels == peak)  # the stellar locus, not islands of lone outliers


def in_region(mask, origin, bin_size, mci_in, mci_out):
    """Whether each (MCI_in, MCI_out) lies in a region mask (False outside the plane or for NaN)."""
    mci_in, mci_out = np.asarray(mci_in, float), np.asarray(mci_out, float)
    ok = np.isfinite(mci_in) & np.isfinite(mci_out)
    col = np.floor((np.where(ok, mci_in, origin[0]) - origin[0]) / bin_size).astype(int)
    row = np.floor((np.where(ok, mci_out, origin[1]) - origin[1]) / bin_size).astype(int)
    ok &= (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    out = np.zeros(len(mci_in), bool)
    out[ok] = mask[row[ok], col[ok]]
    return out


def point_source_mask(catalog, params):
    """Sources that count as point sources for the stellar region."""
    snr = np.asarray(catalog[f"snr_{cc.V_BAND}"], float)
    use = np.nan_to_num(snr) >= params["hist_snr_min"]
    if "origin" in catalog.colnames:
        use &= np.isin(np.asarray(catalog["origin"]).astype(str), ["psf", "dolphot"])
    if "qfit" in catalog.colnames:
        q = np.asarray(catalog["qfit"], float)
        use &= ~np.isfinite(q) | (q <= params["stellar_qfit_max"])
    return use


# --------------------------------------------------------------------------- QA and I/O
def read_regions(path):
    """{name: (mask or counts, origin (MCI_in0, MCI_out0), bin size)} from a regions FITS file."""
    from astropy.io import fits

    out = {}
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul[1:]:
                h = hdu.header
                out[hdu.name] = (np.asarray(hdu.data), (h["MCIIN0"], h["MCIOUT0"]), h["BINSIZE"])
    except FileNotFoundError:
        raise wfutils.InputError(f"{path}: regions file does not exist") from None
    except KeyError as exc:
        raise wfutils.InputError(f"{path}: not an MCI regions file (missing {exc})") from None
    return out


def region_contour(ax, mask, origin, bin_size, **kw):
    ny, nx = mask.shape
    xs = origin[0] + (np.arange(nx) + 0.5) * bin_size
    ys = origin[1] + (np.arange(ny) + 0.5) * bin_size
    if mask.any():
        ax.contour(xs, ys, mask.astype(float), levels=[0.5], **kw)


def qa_plot(path, synth, regions, points_in, points_out, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6.5))
    ok = synth["detected"] & np.isfinite(synth["mci_in"])
    ax.scatter(synth["mci_in"][ok], synth["mci_out"][ok], s=2, c="0.6", label=f"synthetic clusters ({ok.sum()})")
    ax.scatter(points_in, points_out, s=3, c="tab:red", label=f"point sources ({len(points_in)})")
    colours = {"REGION_0.01": "tab:blue", "REGION_0.02": "tab:green", "REGION_0.04": "tab:purple"}
    for name, (mask, origin, b) in regions.items():
        if name.startswith("REGION_"):
            region_contour(ax, mask, origin, b, colors=colours.get(name, "k"), linewidths=1.2)
            ax.plot([], [], c=colours.get(name, "k"), label=f"model region, bin {b:g}")
    mask, origin, b = regions["STELLAR"]
    region_contour(ax, mask, origin, b, colors="red", linewidths=1.5)
    ax.plot([], [], c="red", label="stellar region")
    ax.set(xlabel="MCI$_{in}$", ylabel="MCI$_{out}$", xlim=(-1.5, 1.2), ylim=(-3.5, 2.0), title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def run(image, psf, catalog_path, distance_mpc, params, seed, out, regions_path, qa_png=None):
    from astropy.io import fits
    from astropy.table import Table

    sci, err, header, _ = cc.read_drc(image, cc.V_BAND)
    zp_ab = cc.zeropoints(header)["ab"]
    library = cc.ProfileLibrary({cc.V_BAND: cc.read_psf_image(psf)})
    det_params = {**detect_sources.DEFAULTS, **params["detection"]}
    bkg, noise = detect_sources.smooth_background(
        sci, int(det_params["bkg_box_px"]), int(det_params["bkg_filter_px"]), rms=True
    )
    noise = np.where(np.isfinite(err), np.minimum(noise, err), noise)
    exptime = float(header.get("EXPTIME", 0.0))
    if not exptime > 0:
        raise wfutils.InputError(f"{image}: no positive EXPTIME (the synthetic clusters' photon noise needs it)")
    mag_range = magnitude_range(err, zp_ab, library, distance_mpc, params)
    log.info(
        "synthetic clusters: %d models, V %.2f-%.2f AB at %.2f Mpc", len(model_grid(params)), *mag_range, distance_mpc
    )
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if params["centring"] not in ("psf", "dao"):
        raise wfutils.InputError(f"centring must be psf or dao, not {params['centring']!r}")
    psf_model = detect_sources.psf_model_from(cc.read_psf_image(psf), cc.OVERSAMPLE)
    synth = inject_and_measure(
        sci, err, noise, bkg, library, zp_ab, mag_range, params, rng, int(params["n_clusters"]), psf_model, exptime
    )
    elapsed = time.perf_counter() - t0
    log.info(
        "%d synthetic clusters in %.1f s (%.1f s per 1000)",
        len(synth["x"]),
        elapsed,
        1000 * elapsed / max(len(synth["x"]), 1),
    )
    use = synth["detected"] & (np.nan_to_num(synth["snr_F555W"]) >= params["hist_snr_min"])
    hdus = [fits.PrimaryHDU()]

    def image_hdu(data, name, origin, b):
        hdu = fits.ImageHDU(np.asarray(data), name=name)
        hdu.header["MCIIN0"], hdu.header["MCIOUT0"], hdu.header["BINSIZE"] = origin[0], origin[1], b
        hdu.header["AXES"] = "x: MCI_in, y: MCI_out"
        return hdu

    regions = {}
    min_counts = np.broadcast_to(np.asarray(params["min_count"]), (len(params["bin_sizes"]),))
    for b, min_count in zip(params["bin_sizes"], min_counts, strict=True):
        hist, origin = mci_histogram(synth["mci_in"][use], synth["mci_out"][use], b, params)
        region = model_region(hist, float(min_count), float(params["smooth_bins"]))
        hdus += [
            image_hdu(hist.astype(np.int32), f"HIST_{b:g}", origin, b),
            image_hdu(region.astype(np.uint8), f"REGION_{b:g}", origin, b),
        ]
        regions[f"REGION_{b:g}"] = (region, origin, b)
        log.info(
            "model region, bin %.2f: %d bins, %.0f%% of the synthetic clusters inside",
            b,
            int(region.sum()),
            100 * in_region(region, origin, b, synth["mci_in"][use], synth["mci_out"][use]).mean(),
        )
    catalog = cc.read_table(catalog_path, ["mci_in", "mci_out", f"snr_{cc.V_BAND}"])
    points = point_source_mask(catalog, params)
    p_in, p_out = np.asarray(catalog["mci_in"], float)[points], np.asarray(catalog["mci_out"], float)[points]
    hist, origin = mci_histogram(p_in, p_out, params["stellar_bin"], params)
    stellar = stellar_region(hist, params["stellar_fraction"])
    regions["STELLAR"] = (stellar, origin, params["stellar_bin"])
    hdus += [
        image_hdu(hist.astype(np.int32), "STELLAR_HIST", origin, params["stellar_bin"]),
        image_hdu(stellar.astype(np.uint8), "STELLAR", origin, params["stellar_bin"]),
    ]
    log.info(
        "stellar region: %d point sources, %d bins, %.0f%% of them inside",
        len(p_in),
        int(stellar.sum()),
        100 * in_region(stellar, origin, params["stellar_bin"], p_in, p_out).mean() if len(p_in) else 0,
    )
    hdul = fits.HDUList(hdus)
    hdul[0].header["NSYNTH"] = (len(synth["x"]), "synthetic clusters inserted")
    hdul[0].header["SECPER1K"] = (round(1000 * elapsed / max(len(synth["x"]), 1), 3), "s per 1000 synthetic clusters")
    wfutils.write_hdulist(hdul, regions_path, [image, psf, catalog_path], None, "inject_clusters")
    table = Table(synth)
    table.meta.update(
        {
            "seconds": round(elapsed, 2),
            "seconds_per_1000": round(1000 * elapsed / max(len(table), 1), 3),
            "mag_range": [round(m, 3) for m in mag_range],
            "distance_mpc": distance_mpc,
        }
    )
    cc.write_table(table, out, [image, psf, catalog_path], "inject_clusters")
    if qa_png:
        qa_plot(qa_png, synth, regions, p_in, p_out, f"synthetic clusters, {distance_mpc:.2f} Mpc")
    return table, regions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="V-band (F555W) DRC image")
    parser.add_argument("--psf", required=True, help="V-band PSF model")
    parser.add_argument("--catalog", required=True, help="source catalog with MCI (concentration.py)")
    parser.add_argument("--distance-mpc", type=float, required=True)
    parser.add_argument("--output", required=True, help="synthetic cluster table (ECSV)")
    parser.add_argument("--regions", required=True, help="MCI-plane regions (FITS)")
    parser.add_argument("--qa-png")
    parser.add_argument("--n-clusters", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the image name)")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    if args.n_clusters is not None:
        params["n_clusters"] = args.n_clusters
    if not args.distance_mpc > 0:
        raise wfutils.InputError(f"--distance-mpc must be positive, not {args.distance_mpc}")
    seed = args.seed if args.seed is not None else zlib.crc32(str(args.image).encode())
    run(args.image, args.psf, args.catalog, args.distance_mpc, params, seed, args.output, args.regions, args.qa_png)


if __name__ == "__main__":
    wfutils.run_cli(main)
