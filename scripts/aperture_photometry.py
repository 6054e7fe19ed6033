"""Aperture photometry of the merged sources in all bands (PHANGS-HST, Lee et al. 2022 Secs. 4.2-4.3).

Method. Every source of the merged list is measured in each band in a circular aperture of
radius 4 px, minus the local background: the sigma-clipped median in an annulus of 7-8 px
(``catalog_common.aperture_fluxes``). Errors combine the ERR map inside the aperture and the
error of the background level. Magnitudes are given in the AB system (zero point from
PHOTFLAM/PHOTPLAM) and in Vega (AB minus the band's ``ab_minus_vega``).

Aperture corrections (Sec. 4.3, Deger et al. 2021). V band: the curve of growth of bright
(S/N >= ``apcor_snr_min``), isolated (no other source within ``apcor_isolation_px``) sources
whose CI = m(1 px) - m(3 px) lies in the window ``apcor_ci_window`` around the CI of the
fiducial cluster (a PSF-convolved Moffat of FWHM 2 px, slope 3) -- i.e. compact clusters, not
stars -- gives m(4 px) - m(``apcor_radius_px``) per source; the sigma-clipped mean is the
correction. With fewer than ``apcor_min_sources`` such sources the fiducial cluster's own
correction is used (and logged). Other bands: the V correction plus a fixed offset from the PSF
encircled energy (``ee_offsets_mag``; ``from_psf`` computes it from the PSF models as the
difference of their 4-px-to-total corrections).

    python scripts/aperture_photometry.py --image BAND=DRC ... --psf BAND=PSF ...
        --sources SOURCES.ecsv --output PHOT.ecsv [--params JSON] [--log LOG]
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np

from detect_sources import match_nearest, parse_band_paths
from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("aperture_photometry")

DEFAULTS = {
    "radius_px": 4.0,
    "annulus_px": [7.0, 8.0],
    "sigma_clip": 3.0,
    # AB - Vega of WFC3/UVIS (STScI zero points, approximate)
    "ab_minus_vega": {"F275W": 1.48, "F336W": 1.18, "F438W": -0.15, "F555W": 0.02, "F814W": 0.43},
    "apcor_snr_min": 50.0,
    "apcor_isolation_px": 12.0,
    "apcor_ci_window": [-0.1, 0.4],  # CI - CI(fiducial cluster), mag
    "apcor_radius_px": 12.0,
    "apcor_annulus_px": [14.0, 18.0],
    "apcor_min_sources": 5,
    "ee_offsets_mag": "from_psf",  # or {band: mag} added to the V correction
}


# --------------------------------------------------------------------------- pure functions
def psf_correction(library: cc.ProfileLibrary, band: str, radius: float) -> float:
    """m(radius) - m(total) of the band's PSF (mag, positive)."""
    stamp, _ = library.stamp(band, 0, 0)
    return -2.5 * math.log10(cc.encircled_fraction(stamp, radius))


def fiducial_ci_and_correction(library: cc.ProfileLibrary, radius: float, annulus) -> tuple[float, float]:
    """(CI13, m(radius) - m(total)) of the fiducial cluster measured like a source."""
    stamp, _ = library.stamp(cc.V_BAND, 0, 0, **cc.FIDUCIAL_CLUSTER)
    f1, f3, fr = cc.measured_stamp_fluxes(stamp, [1.0, 3.0, radius], annulus)
    return -2.5 * math.log10(f1 / f3), -2.5 * math.log10(fr)


def curve_of_growth_correction(sci, err, x, y, params):
    """Per-source m(4 px) - m(apcor_radius) with a wider background annulus (NaN where undefined)."""
    res = cc.aperture_fluxes(
        sci,
        err,
        x,
        y,
        [params["radius_px"], params["apcor_radius_px"]],
        params["apcor_annulus_px"],
        params["sigma_clip"],
    )
    f4, fbig = res["flux"][:, 0], res["flux"][:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((f4 > 0) & (fbig > 0), -2.5 * np.log10(f4 / fbig), np.nan)


def v_band_correction(sci, err, x, y, flux1, flux3, flux4, err4, ci_fid, apcor_fid, params):
    """(correction, n_sources used, mask of the sources used) from bright, isolated, cluster-like sources."""
    from astropy.stats import sigma_clipped_stats

    with np.errstate(divide="ignore", invalid="ignore"):
        ci = -2.5 * np.log10(flux1 / flux3)
        snr = flux4 / err4
    neighbour = np.full(len(x), np.inf)
    if len(x) > 1:
        from scipy.spatial import cKDTree

        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        neighbour = dist[:, 1]
    lo, hi = params["apcor_ci_window"]
    use = (
        (snr >= params["apcor_snr_min"])
        & (neighbour > params["apcor_isolation_px"])
        & (ci - ci_fid >= lo)
        & (ci - ci_fid <= hi)
    )
    use &= np.isfinite(ci)
    if use.sum() < params["apcor_min_sources"]:
        log.warning(
            "only %d bright isolated cluster-like sources: V aperture correction of the fiducial cluster "
            "(%.3f mag) used",
            int(use.sum()),
            apcor_fid,
        )
        return apcor_fid, int(use.sum()), use
    corr = curve_of_growth_correction(sci, err, x[use], y[use], params)
    corr = corr[np.isfinite(corr)]
    if corr.size < params["apcor_min_sources"]:
        return apcor_fid, int(corr.size), use
    mean, median, std = sigma_clipped_stats(corr, sigma=2.5)
    log.info(
        "V aperture correction %.3f mag (median %.3f, std %.3f) from %d bright isolated clusters",
        mean,
        median,
        std,
        corr.size,
    )
    return float(mean), int(corr.size), use


def photometry(images: dict, library: cc.ProfileLibrary, sources, zps: dict, params: dict):
    """Table of fluxes, errors, AB/Vega magnitudes and aperture-corrected totals in every band."""
    from astropy.table import Table

    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    table = Table()
    for col in ("id", "x", "y", "origin", "sharpness", "qfit", "ps_id"):
        if col in sources.colnames:
            table[col] = sources[col]
    sci, err = images[cc.V_BAND]
    radius = float(params["radius_px"])
    v = cc.aperture_fluxes(sci, err, x, y, [1.0, 3.0, radius], params["annulus_px"], params["sigma_clip"])
    ci_fid, apcor_fid = fiducial_ci_and_correction(library, radius, params["annulus_px"])
    apcor_v, n_apcor, used = v_band_correction(
        sci,
        err,
        x,
        y,
        v["flux"][:, 0],
        v["flux"][:, 1],
        v["flux"][:, 2],
        v["flux_err"][:, 2],
        ci_fid,
        apcor_fid,
        params,
    )
    offsets = params["ee_offsets_mag"]
    if offsets == "from_psf":
        v_psf = psf_correction(library, cc.V_BAND, radius)
        offsets = {b: psf_correction(library, b, radius) - v_psf for b in images}
    table["apcor_source"] = used
    table.meta["apcor"] = {}
    for band, (bsci, berr) in images.items():
        res = (
            v
            if band == cc.V_BAND
            else cc.aperture_fluxes(bsci, berr, x, y, [radius], params["annulus_px"], params["sigma_clip"])
        )
        j = -1
        flux, flux_err = res["flux"][:, j], res["flux_err"][:, j]
        zp_ab = zps[band]["ab"]
        vega_offset = float(params["ab_minus_vega"].get(band, 0.0))
        apcor = apcor_v + (0.0 if band == cc.V_BAND else float(offsets.get(band, 0.0)))
        table[f"flux_{band}"] = flux
        table[f"flux_err_{band}"] = flux_err
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"snr_{band}"] = flux / flux_err
        table[f"bkg_{band}"] = res["bkg"]
        table[f"mag_ab_{band}"] = cc.mag_from_flux(flux, zp_ab)
        table[f"mag_vega_{band}"] = table[f"mag_ab_{band}"] - vega_offset
        table[f"mag_err_{band}"] = cc.mag_error(flux, flux_err)
        table[f"apcor_{band}"] = np.full(len(x), apcor)
        table[f"mag_tot_ab_{band}"] = table[f"mag_ab_{band}"] - apcor
        table[f"mag_tot_vega_{band}"] = table[f"mag_vega_{band}"] - apcor
        table.meta["apcor"][band] = round(apcor, 4)
        table.meta[f"zp_ab_{band}"] = round(zp_ab, 4)
    table.meta.update(
        {
            "apcor_v_sources": n_apcor,
            "apcor_fiducial": round(apcor_fid, 4),
            "ci13_fiducial": round(ci_fid, 4),
            "radius_px": radius,
            "annulus_px": list(params["annulus_px"]),
        }
    )
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", required=True, help="BAND=DRC file (F555W required)")
    parser.add_argument("--psf", action="append", required=True, help="BAND=PSF model (F555W required)")
    parser.add_argument("--sources", required=True, help="merged source list from detect_sources.py")
    parser.add_argument("--output", required=True, help="photometry catalog (ECSV)")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    paths, psf_paths = parse_band_paths(args.image, "image"), parse_band_paths(args.psf, "psf")
    missing = [b for b in paths if b not in psf_paths] + ([cc.V_BAND] if cc.V_BAND not in paths else [])
    if missing:
        raise wfutils.InputError(f"--image and --psf needed for band(s) {', '.join(sorted(set(missing)))}")
    images, zps = {}, {}
    for band, path in paths.items():
        sci, err, header, _ = cc.read_drc(path, band)
        images[band], zps[band] = (sci, err), cc.zeropoints(header)
    library = cc.ProfileLibrary({b: cc.read_psf_image(p) for b, p in psf_paths.items()})
    sources = cc.read_table(args.sources, ["x", "y"])
    table = photometry(images, library, sources, zps, params)
    cc.write_table(table, args.output, [args.sources, *paths.values()], "aperture_photometry")
    log.info("%d sources measured in %s; aperture corrections %s", len(table), ", ".join(paths), table.meta["apcor"])


__all__ = ["photometry", "match_nearest"]

if __name__ == "__main__":
    wfutils.run_cli(main)
