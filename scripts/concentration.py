"""Concentration indices CI and MCI of every source (PHANGS-HST, Lee et al. 2022 Sec. 4.4; Thilker et al. 2022).

Method. V-band fluxes in circular apertures of radius 1, 1.5, 2, 2.5, 3, 4 and 5 px (local
background from the 7-8 px annulus, ``catalog_common.aperture_fluxes``). CI = m(1 px) - m(3 px).
Normalised indices NCI_ij = 1 - CI_ij / CI_ij,fiducial use the CIs of the fiducial cluster (a
PSF-convolved Moffat of FWHM 2 px and slope 3, measured the same way on a noiseless model with
the V-band PSF), and

    MCI_in  = (NCI(1, 1.5) + NCI(1.5, 2) + NCI(2, 2.5)) / 3
    MCI_out = (NCI(2.5, 3) + NCI(3, 4) + NCI(4, 5)) / 3

so the fiducial cluster sits at the origin and more compact sources have larger MCI.

With ``--jwst-image`` (a JWST mosaic, e.g. F200W, MJy/sr with ERR) the CI between the same
angular radii (0.04" and 0.12") is also measured there, at each source's sky position: column
``ci13_jwst`` (NaN outside the mosaic).

    python scripts/concentration.py --image V_drc.fits --psf V_psf.fits --photometry PHOT.ecsv
        --output CAT.ecsv [--jwst-image F200W_i2d.fits] [--params JSON] [--log LOG]

Writes the photometry catalog with the CI columns added (ECSV, and FITS next to it).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("concentration")

DEFAULTS = {
    "radii_px": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
    "annulus_px": [7.0, 8.0],
    "sigma_clip": 3.0,
    "jwst_pixel_scale_ratio": None,  # JWST px per HST px (None: from the two WCSs)
}
MCI_IN = (1.0, 1.5, 2.0, 2.5)
MCI_OUT = (2.5, 3.0, 4.0, 5.0)


# --------------------------------------------------------------------------- pure functions
def concentration_indices(fluxes: np.ndarray, radii, fiducial: np.ndarray) -> dict:
    """CI13, MCI_in and MCI_out from fluxes (n x radii) and the fiducial cluster's fluxes (radii)."""
    radii = [float(r) for r in radii]
    idx = {r: radii.index(r) for r in radii}
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = np.where(fluxes > 0, -2.5 * np.log10(fluxes), np.nan)
    fid = -2.5 * np.log10(fiducial)

    def ci(a, b):
        return mags[:, idx[a]] - mags[:, idx[b]]

    def mci(chain):
        terms = [1.0 - ci(a, b) / (fid[idx[a]] - fid[idx[b]]) for a, b in zip(chain[:-1], chain[1:], strict=True)]
        return np.mean(terms, axis=0)

    return {"ci13": ci(1.0, 3.0), "mci_in": mci(MCI_IN), "mci_out": mci(MCI_OUT)}


def fiducial_fluxes(library: cc.ProfileLibrary, radii, annulus) -> np.ndarray:
    stamp, _ = library.stamp(cc.V_BAND, 0, 0, **cc.FIDUCIAL_CLUSTER)
    return cc.measured_stamp_fluxes(stamp, radii, annulus)


def measure(sci, err, x, y, library: cc.ProfileLibrary, params: dict) -> dict:
    """Aperture fluxes and CI/MCI columns of sources at (x, y) in the V image."""
    radii = params["radii_px"]
    res = cc.aperture_fluxes(sci, err, x, y, radii, params["annulus_px"], params["sigma_clip"])
    out = concentration_indices(res["flux"], radii, fiducial_fluxes(library, radii, params["annulus_px"]))
    out["fluxes"], out["flux_errs"] = res["flux"], res["flux_err"]
    return out


def jwst_ci(path, hst_wcs, x, y, params):
    """CI between 0.04" and 0.12" radii in a JWST mosaic at the sources' sky positions (NaN outside)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    wfutils.check_image_file(path, extensions=("SCI", "ERR"), unit=None)
    with fits.open(path, memmap=False) as hdul:
        sci = hdul["SCI"].data.astype(float)
        err = hdul["ERR"].data.astype(float)
        wcs = WCS(hdul["SCI"].header)
    from astropy.wcs.utils import proj_plane_pixel_scales

    ratio = params["jwst_pixel_scale_ratio"] or float(
        np.mean(proj_plane_pixel_scales(hst_wcs)) / np.mean(proj_plane_pixel_scales(wcs))
    )
    ra, dec = hst_wcs.pixel_to_world_values(x, y)
    jx, jy = wcs.world_to_pixel_values(ra, dec)
    ny, nx = sci.shape
    inside = (jx > 8 * ratio) & (jx < nx - 8 * ratio) & (jy > 8 * ratio) & (jy < ny - 8 * ratio)
    out = np.full(len(x), np.nan)
    if inside.any():
        ann = [a * ratio for a in params["annulus_px"]]
        res = cc.aperture_fluxes(
            sci, err, jx[inside], jy[inside], [1.0 * ratio, 3.0 * ratio], ann, params["sigma_clip"]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            f1, f3 = res["flux"][:, 0], res["flux"][:, 1]
            out[inside] = np.where((f1 > 0) & (f3 > 0), -2.5 * np.log10(f1 / f3), np.nan)
    log.info("JWST CI measured for %d of %d sources in %s", int(np.isfinite(out).sum()), len(x), path)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="V-band (F555W) DRC image")
    parser.add_argument("--psf", required=True, help="V-band PSF model (for the fiducial cluster)")
    parser.add_argument("--photometry", required=True, help="catalog from aperture_photometry.py")
    parser.add_argument("--output", required=True, help="catalog with CI columns (ECSV; FITS written next to it)")
    parser.add_argument("--jwst-image", help="JWST mosaic for ci13_jwst (optional)")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    sci, err, _, wcs = cc.read_drc(args.image, cc.V_BAND)
    library = cc.ProfileLibrary({cc.V_BAND: cc.read_psf_image(args.psf)})
    table = cc.read_table(args.photometry, ["x", "y"])
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    res = measure(sci, err, x, y, library, params)
    for j, r in enumerate(params["radii_px"]):
        table[f"flux_r{r:g}"] = res["fluxes"][:, j]
        table[f"flux_err_r{r:g}"] = res["flux_errs"][:, j]
    for key in ("ci13", "mci_in", "mci_out"):
        table[key] = res[key]
    ra, dec = wcs.pixel_to_world_values(x, y)
    table["ra"], table["dec"] = ra, dec
    if args.jwst_image:
        table["ci13_jwst"] = jwst_ci(args.jwst_image, wcs, x, y, params)
    fid = fiducial_fluxes(library, params["radii_px"], params["annulus_px"])
    table.meta["ci13_fiducial"] = round(float(-2.5 * np.log10(fid[0] / fid[params["radii_px"].index(3.0)])), 4)
    inputs = [args.image, args.psf, args.photometry] + ([args.jwst_image] if args.jwst_image else [])
    cc.write_table(table, args.output, inputs, "concentration")
    if args.output.endswith(".ecsv"):
        cc.write_table(table, args.output[: -len(".ecsv")] + ".fits", inputs, "concentration")
    good = np.isfinite(res["mci_in"]) & np.isfinite(res["mci_out"])
    log.info(
        "%d sources: CI/MCI for %d (median MCI_in %.3f, MCI_out %.3f)",
        len(table),
        int(good.sum()),
        float(np.nanmedian(res["mci_in"])),
        float(np.nanmedian(res["mci_out"])),
    )


if __name__ == "__main__":
    wfutils.run_cli(main)
