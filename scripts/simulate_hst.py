"""HST-like UV-optical drizzled images of a galaxy target with known truth (PHANGS-HST, Lee et al. 2022).

Renders F275W, F336W, F438W, F555W and F814W images at 0.04"/px over (part of) the galaxy
field, as WFC3/UVIS DRC files are delivered (Sec. 4.1): SCI in e-/s with PHOTFLAM/PHOTPLAM,
ERR (every noise source: sources, sky, read noise) and WHT (inverse variance), north up,
sky-subtracted. The images contain

- field **stars** (the PSF), blue main-sequence and red (super)giants;
- compact **clusters**: Moffat/EFF profiles Sigma(r) ~ (1 + (r/a)^2)^-slope of intrinsic
  FWHM ``fwhm_px`` and power-law slope ``slope`` (Thilker et al. 2022 grid: 0.5-7 px,
  0.75-4), truncated at their stamp edge and convolved with the PSF, with colours from
  young (1 Myr) to old (10 Gyr) populations; FWHM = 2 r_eff with log-normal effective radii
  (``reff_pc``: median pc, dex) at the target's distance, clipped to the grid range;
- stellar **associations**: groups of young blue stars whose members are spread as a
  Gaussian of FWHM ``spread`` x the scale (8, 16, 32, 64 pc by default, converted with the
  target's distance);
- a smooth exponential disk of diffuse light.

The truth catalog (``--truth``) lists every source with its kind, position, total and 4-px
aperture fluxes per band, profile parameters and association; ``--truth-associations`` lists
the associations. PSF models (oversampled images, the TinyTim/STDPSF models a real survey
uses) are written per band for the PSF photometry. Nothing in the science path reads the truth.

    python scripts/simulate_hst.py --sim SIM_JSON --target TARGET_JSON --out-dir DIR
        --psf-dir DIR --truth T.ecsv --truth-associations A.ecsv [--log LOG]

Outputs ``DIR/<target>_<band>_drc.fits`` and ``PSFDIR/<target>_<band>_psf.fits``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("simulate_hst")


# --------------------------------------------------------------------------- configuration helpers
def band_psf(cfg: dict) -> dict:
    """{band: {fwhm_px, wing_fraction, wing_width}} of the simulated PSFs."""
    scale = cfg["pixel_scale_arcsec"]
    return {
        band: {
            "fwhm_px": spec["fwhm_arcsec"] / scale,
            "wing_fraction": spec.get("wing_fraction", cfg["psf_wing_fraction"]),
            "wing_width": cfg["psf_wing_width"],
        }
        for band, spec in cfg["bands"].items()
    }


def zeropoint_ab(spec: dict) -> float:
    return -2.5 * math.log10(spec["photflam"]) - 5.0 * math.log10(spec["photplam"]) - 2.408


def colours_of(cfg: dict, template: str, bands) -> np.ndarray:
    """AB colours m(band) - m(F555W) of a named spectral template, in the order of ``bands``."""
    table = cfg["colours_ab"][template]
    return np.array([table[b] for b in bands], dtype=float)


def cluster_colours(cfg: dict, log_age: np.ndarray, bands) -> np.ndarray:
    """Colours (n x bands) interpolated in log age between the young, intermediate and old templates."""
    nodes = np.array([6.0, 8.0, 10.0])
    temps = np.array([colours_of(cfg, t, bands) for t in ("young_cluster", "intermediate_cluster", "old_cluster")])
    return np.column_stack([np.interp(log_age, nodes, temps[:, j]) for j in range(len(bands))])


def power_law_mags(rng, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm ~ 10^(slope m) between ``lo`` and ``hi`` (inverse transform)."""
    if slope == 0:
        return rng.uniform(lo, hi, n)
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.uniform(0, 1, n) * (b - a)) / slope


# --------------------------------------------------------------------------- source populations
def place_associations(rng, cfg: dict, shape, pc_px: float):
    """Association centres per scale: no two closer than 1.2 x (sum of their scales), away from the edges."""
    spec = cfg["associations"]
    ny, nx = shape
    rows = []
    placed = []
    for scale_pc in spec["scales_pc"]:
        scale_px = scale_pc / pc_px
        for _ in range(spec["per_scale"]):
            for _attempt in range(2000):
                margin = 1.5 * scale_px + 5
                x, y = rng.uniform(margin, nx - margin), rng.uniform(margin, ny - margin)
                if all(math.hypot(x - px, y - py) > 1.2 * (scale_px + ps) + 6 for px, py, ps in placed):
                    break
            else:
                log.warning("no room for another %g pc association; %d placed", scale_pc, len(rows))
                continue
            placed.append((x, y, scale_px))
            n = int(rng.integers(spec["members"][0], spec["members"][1] + 1))
            rows.append(
                {
                    "assoc_id": len(rows) + 1,
                    "scale_pc": float(scale_pc),
                    "x": x,
                    "y": y,
                    "n_members": n,
                    "spread_fwhm_px": spec["spread"] * scale_px,
                }
            )
    return rows


def draw_population(cfg: dict, shape, distance_mpc: float, seed_text: str):
    """Columns of every source (stars, clusters, association members) and the association rows."""
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    bands = list(cfg["bands"])
    ny, nx = shape
    pc_px = cc.pc_per_pixel(distance_mpc, cfg["pixel_scale_arcsec"])
    cols = {k: [] for k in ("kind", "x", "y", "mag_v_ab", "fwhm_px", "slope", "log_age", "assoc_id", "template")}
    colours = []

    def add(kind, x, y, mag, colour, fwhm=np.nan, slope=np.nan, age=np.nan, assoc=0, template=""):
        for key, value in (
            ("kind", kind),
            ("x", x),
            ("y", y),
            ("mag_v_ab", mag),
            ("fwhm_px", fwhm),
            ("slope", slope),
            ("log_age", age),
            ("assoc_id", assoc),
            ("template", template),
        ):
            cols[key].extend(
                np.broadcast_to(
                    np.asarray(value, dtype=object if key in ("kind", "template") else float), np.shape(x)
                ).tolist()
            )
        colours.append(np.atleast_2d(colour))

    stars = cfg["stars"]
    n = int(stars["count"])
    blue = rng.uniform(0, 1, n) < stars["blue_fraction"]
    mags = power_law_mags(rng, n, *stars["mag_v"], stars["lf_slope"])
    for flag, template in ((True, "blue_star"), (False, "red_star")):
        sel = blue == flag
        k = int(sel.sum())
        colour = colours_of(cfg, template, bands) + rng.normal(0, 0.1, (k, len(bands)))
        add("star", rng.uniform(0, nx, k), rng.uniform(0, ny, k), mags[sel], colour, template=template)

    cl = cfg["clusters"]
    n = int(cl["count"])
    # sizes: log-normal effective radii in pc (Ryon et al. 2017: r_eff ~ 1-10 pc, peak 2-3 pc) at the
    # target's distance, FWHM ~ 2 r_eff, kept inside the Thilker et al. grid range
    reff_px = 10 ** rng.normal(math.log10(cl["reff_pc"][0]), cl["reff_pc"][1], n) / pc_px
    fwhm = np.clip(2.0 * reff_px, *cl["fwhm_px"])
    slope = rng.uniform(*cl["slope"], n)
    age = rng.uniform(*cl["log_age"], n)
    mags = power_law_mags(rng, n, *cl["mag_v"], cl["lf_slope"])
    colour = cluster_colours(cfg, age, bands) + rng.normal(0, 0.05, (n, len(bands)))
    add(
        "cluster",
        rng.uniform(10, nx - 10, n),
        rng.uniform(10, ny - 10, n),
        mags,
        colour,
        fwhm,
        slope,
        age,
        template="cluster",
    )

    assoc_rows = place_associations(rng, cfg, shape, pc_px)
    spec = cfg["associations"]
    for row in assoc_rows:
        m = row["n_members"]
        sigma = row["spread_fwhm_px"] / 2.3548
        x = row["x"] + rng.normal(0, sigma, m)
        y = row["y"] + rng.normal(0, sigma, m)
        mags = power_law_mags(rng, m, *spec["mag_v"], stars["lf_slope"])
        colour = colours_of(cfg, "blue_star", bands) + rng.normal(0, 0.1, (m, len(bands)))
        add("association_star", x, y, mags, colour, assoc=row["assoc_id"], template="blue_star")
    table = {k: np.asarray(v, dtype=object if k in ("kind", "template") else float) for k, v in cols.items()}
    table["assoc_id"] = table["assoc_id"].astype(int)
    table["colour"] = np.vstack(colours)
    inside = (table["x"] > -0.5) & (table["x"] < nx - 0.5) & (table["y"] > -0.5) & (table["y"] < ny - 0.5)
    table = {k: v[inside] for k, v in table.items()}
    return table, assoc_rows, pc_px


def diffuse_light(cfg: dict, shape, band: str) -> np.ndarray:
    """Smooth exponential disk (e-/s per pixel) centred on the galaxy centre, in the band's colour."""
    spec = cfg["diffuse"]
    ny, nx = shape
    cx = (nx - 1) / 2 - spec["center_offset_px"][0]
    cy = (ny - 1) / 2 - spec["center_offset_px"][1]
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot(xx - cx, yy - cy) * cfg["pixel_scale_arcsec"]
    flux_v = spec["amplitude_v_e_s"] * np.exp(-r / spec["scale_arcsec"])
    colour = cfg["colours_ab"]["diffuse"][band]
    zp_ratio = 10 ** (0.4 * (zeropoint_ab(cfg["bands"][band]) - zeropoint_ab(cfg["bands"][cc.V_BAND])))
    return flux_v * 10 ** (-0.4 * colour) * zp_ratio


# --------------------------------------------------------------------------- rendering
def render_band(cfg: dict, pop: dict, band: str, library: cc.ProfileLibrary, shape, rng):
    """(noiseless signal e-/s, total flux e-/s, 4-px aperture flux e-/s) of one band."""
    bands = list(cfg["bands"])
    j = bands.index(band)
    zp = zeropoint_ab(cfg["bands"][band])
    mag = pop["mag_v_ab"] + pop["colour"][:, j]
    flux = 10 ** (-0.4 * (mag - zp))
    image = diffuse_light(cfg, shape, band)
    _, _, ix, iy, px, py = cc.quantize_position(pop["x"], pop["y"], library.os)
    ap4 = np.zeros(len(flux))
    for i in range(len(flux)):
        is_cluster = pop["kind"][i] == "cluster"
        stamp, _ = library.stamp(
            band,
            int(px[i]),
            int(py[i]),
            pop["fwhm_px"][i] if is_cluster else None,
            pop["slope"][i] if is_cluster else None,
        )
        cc.add_stamp(image, stamp, int(ix[i]), int(iy[i]), float(flux[i]))
        ap4[i] = flux[i] * cc.encircled_fraction(
            library.stamp(
                band, 0, 0, pop["fwhm_px"][i] if is_cluster else None, pop["slope"][i] if is_cluster else None
            )[0],
            4.0,
        )
    return image, flux, ap4


def add_noise(signal: np.ndarray, spec: dict, cfg: dict, rng):
    """(SCI, ERR, WHT) in e-/s: Poisson noise of sources and sky plus read noise, sky subtracted."""
    t = spec["exptime"]
    sky = spec["sky_e_s"]
    rn2 = cfg["read_noise_e"] ** 2 * cfg["n_exposures"]
    expected = np.clip(signal, 0, None) * t + sky * t
    counts = rng.poisson(expected).astype(np.float64) + rng.normal(0, math.sqrt(rn2), signal.shape)
    sci = counts / t - sky
    err = np.sqrt(expected + rn2) / t
    return sci.astype(np.float32), err.astype(np.float32), (1.0 / err**2).astype(np.float32)


def drc_header(cfg, target, band, shape):
    from astropy.io import fits

    spec = cfg["bands"][band]
    scale = cfg["pixel_scale_arcsec"] / 3600.0
    ny, nx = shape
    off = cfg.get("center_offset_arcsec", [0.0, 0.0])
    dec = target["dec"] + off[1] / 3600.0
    ra = target["ra"] + off[0] / 3600.0 / math.cos(math.radians(dec))
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2.0, (ny + 1) / 2.0
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -scale, 0.0, 0.0, scale
    h["BUNIT"] = ("ELECTRONS/S", "DRC units")
    h["PHOTFLAM"] = (spec["photflam"], "inverse sensitivity, erg/cm2/A/e-")
    h["PHOTPLAM"] = (spec["photplam"], "pivot wavelength (Angstroms)")
    h["PHOTZPT"] = (-21.10, "ST magnitude zero point")
    h["EXPTIME"] = (spec["exptime"], "exposure time (s)")
    h["FILTER"] = band
    return h


def simulate(cfg: dict, target: dict, out_dir, psf_dir, truth_path, assoc_path, cfg_hash=None):
    """Write the five DRC images, PSF models and the truth tables of one target."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    shape = tuple(int(v) for v in cfg["shape_px"])[::-1]  # config [nx, ny]
    distance = float(target.get("distance_mpc") or cfg["default_distance_mpc"])
    pop, assoc_rows, pc_px = draw_population(cfg, shape, distance, f"{cfg['seed']}:{target['target']}:hst")
    library = cc.ProfileLibrary(band_psf(cfg))
    name = target["target"]
    truth = Table()
    truth["id"] = np.arange(1, len(pop["x"]) + 1)
    truth["kind"] = pop["kind"].astype(str)
    qx, qy, *_ = cc.quantize_position(pop["x"], pop["y"], library.os)
    truth["x"], truth["y"] = qx, qy
    for key in ("fwhm_px", "slope", "log_age", "assoc_id", "mag_v_ab"):
        truth[key] = pop[key]
    truth["template"] = pop["template"].astype(str)
    outputs = []
    for band, spec in cfg["bands"].items():
        rng = np.random.default_rng(zlib.crc32(f"{cfg['seed']}:{name}:hst:{band}".encode()))
        signal, flux, ap4 = render_band(cfg, pop, band, library, shape, rng)
        sci, err, wht = add_noise(signal, spec, cfg, rng)
        truth[f"flux_{band}"] = flux
        truth[f"flux_ap4_{band}"] = ap4
        header = drc_header(cfg, target, band, shape)
        primary = fits.PrimaryHDU()
        for key in ("TELESCOP", "INSTRUME", "DETECTOR"):
            primary.header[key] = {"TELESCOP": "HST-like", "INSTRUME": "WFC3", "DETECTOR": "UVIS"}[key]
        primary.header["FILTER"] = band
        primary.header["TARGNAME"] = name
        primary.header["DISTMPC"] = (distance, "distance used for physical scales (Mpc)")
        hdul = fits.HDUList(
            [
                primary,
                fits.ImageHDU(sci, header, name="SCI"),
                fits.ImageHDU(err, header, name="ERR"),
                fits.ImageHDU(wht, header, name="WHT"),
            ]
        )
        path = Path(out_dir) / f"{name}_{band}_drc.fits"
        wfutils.write_hdulist(hdul, path, [], cfg_hash, "simulate_hst")
        psf = library.fine_psf(band)
        ph = fits.Header()
        ph["OVERSAMP"] = (library.os, "PSF samples per image pixel")
        ph["FWHMPX"] = (library.psf[band]["fwhm_px"], "core FWHM (image pixels)")
        ph["FILTER"] = band
        wfutils.write_hdulist(
            fits.HDUList([fits.PrimaryHDU(psf.astype(np.float32), ph)]),
            Path(psf_dir) / f"{name}_{band}_psf.fits",
            [],
            cfg_hash,
            "simulate_hst",
        )
        outputs.append(path)
        log.info(
            "%s %s: %d sources rendered, sky %.4f e-/s, median ERR %.4f e-/s",
            name,
            band,
            len(flux),
            spec["sky_e_s"],
            float(np.median(err)),
        )
    wcs = WCS(drc_header(cfg, target, cc.V_BAND, shape))
    ra, dec = wcs.pixel_to_world_values(truth["x"], truth["y"])
    truth["ra"], truth["dec"] = ra, dec
    truth.meta.update(
        {"distance_mpc": distance, "pc_per_pixel": pc_px, "pixel_scale_arcsec": cfg["pixel_scale_arcsec"]}
    )
    cc.write_table(truth, truth_path, outputs, "simulate_hst")
    assoc = (
        Table(rows=assoc_rows, names=["assoc_id", "scale_pc", "x", "y", "n_members", "spread_fwhm_px"])
        if assoc_rows
        else Table(names=["assoc_id", "scale_pc", "x", "y", "n_members", "spread_fwhm_px"])
    )
    assoc.meta.update({"distance_mpc": distance, "pc_per_pixel": pc_px})
    cc.write_table(assoc, assoc_path, outputs, "simulate_hst")
    counts = {k: int((truth["kind"] == k).sum()) for k in ("star", "cluster", "association_star")}
    log.info("%s: %s, %d associations, %.3f pc/px at %.2f Mpc", name, counts, len(assoc_rows), pc_px, distance)
    return truth, assoc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", required=True, help="simulation.hst config as JSON (or a YAML/JSON file)")
    parser.add_argument("--target", required=True, help="target row as JSON: target, ra, dec, distance_mpc")
    parser.add_argument("--seed", type=int, default=None, help="master seed (default: the config's `seed`)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--psf-dir", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--truth-associations", required=True)
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    text = args.sim
    if not text.lstrip().startswith("{"):
        if not Path(text).exists():
            raise wfutils.InputError(f"--sim {text}: neither JSON nor an existing file")
        import yaml

        text = json.dumps(yaml.safe_load(Path(text).read_text()))
    cfg = json.loads(text)
    if args.seed is not None:
        cfg["seed"] = args.seed
    if "seed" not in cfg:
        raise wfutils.InputError("--sim lacks `seed` (give --seed)")
    simulate(
        cfg, json.loads(args.target), args.out_dir, args.psf_dir, args.truth, args.truth_associations, args.config_hash
    )


if __name__ == "__main__":
    wfutils.run_cli(main)
