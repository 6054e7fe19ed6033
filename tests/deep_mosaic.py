"""Synthetic deep-field mosaics with known truth for the finishing tests and benchmark.

Sources are drawn and rendered by the simulator's own functions (``simulate_survey.draw_sources``,
``add_gaussian_sources`` with the band's two-Gaussian PSF) from the workflow's deep-field sky
(``simulation.sky.deep`` in config/config.yaml: the counts of real deep fields, N(>1 uJy) ~ 30
galaxies per arcmin^2, N(>0.01 uJy) ~ 600). Noise is drizzle-like (white noise smoothed by a
2x2 box, renormalised). The injected background is a plane plus a wisp-like arc
(``simulate_survey.wisp_template``), returned separately.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

import simulate_survey as sim

REPO = Path(__file__).resolve().parent.parent

SIMULATION = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulation"]
PSF_CFG = SIMULATION["psf"]
DEEP_SKY = SIMULATION["sky"]["deep"]


def injected_background(shape, gradient=0.010, wisp=0.010, pedestal=0.002) -> np.ndarray:
    """Plane (``gradient`` MJy/sr corner to corner) + wisp-like arc of peak ``wisp`` + a pedestal."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    plane = gradient * (0.6 * xx / nx + 0.4 * yy / ny)
    return (pedestal + plane + wisp * sim.wisp_template(shape, "NRCA3")).astype(np.float32)


def make_deep_mosaic(
    shape=(1024, 1024),
    pixel_scale=0.03,
    band="F200W",
    seed=1,
    noise=0.0025,
    population=DEEP_SKY,
    gap=True,
    extra_sources=None,
):
    """Dict with sci (sky + noise, no background), truth (noiseless sky), err, valid, sources, psf."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    half = 0.5 * math.hypot(nx, ny) * pixel_scale
    sources = sim.draw_sources(population, half, rng, 10.0)
    x = nx / 2 + sources["xi"] / pixel_scale
    y = ny / 2 + sources["eta"] / pixel_scale
    inside = (x > -20) & (x < nx + 20) & (y > -20) & (y < ny + 20)
    flux = sim.source_flux_ujy({**sources, "pah": np.zeros_like(sources["xi"])}, band)
    table = {
        "x": x[inside],
        "y": y[inside],
        "flux_ujy": flux[inside],
        "sigma_arcsec": sources["sigma"][inside],
        "kind": sources["kind"][inside],
    }
    if extra_sources:
        for key in table:
            table[key] = np.concatenate([table[key], np.asarray(extra_sources[key])])
    psf = sim.psf_components(band, PSF_CFG)
    truth = np.zeros(shape)
    sim.add_gaussian_sources(truth, table["x"], table["y"], table["flux_ujy"], table["sigma_arcsec"], psf, pixel_scale)
    white = rng.standard_normal((ny + 1, nx + 1))
    correlated = 0.25 * (white[:-1, :-1] + white[1:, :-1] + white[:-1, 1:] + white[1:, 1:])
    correlated *= noise / correlated.std()
    valid = np.ones(shape, bool)
    if gap:
        valid[:, int(0.48 * nx) : int(0.50 * nx)] = False  # a detector gap
        valid[: int(0.05 * ny), : int(0.2 * nx)] = False  # a corner off the footprint
    sci = np.where(valid, truth + correlated, np.nan).astype(np.float32)
    err = np.where(valid, noise, np.nan).astype(np.float32)
    return {
        "sci": sci,
        "truth": truth.astype(np.float32),
        "err": err,
        "valid": valid,
        "sources": table,
        "psf": psf,
        "pixel_scale": pixel_scale,
        "noise": noise,
    }


def write_mosaic(path, sci, err, valid, pixel_scale, band="F200W"):
    """An i2d-like ImageModel FITS (SCI, ERR, CON, WHT, VAR_*) with a TAN WCS in the SCI header."""
    from stdatamodels.jwst import datamodels

    ny, nx = sci.shape
    model = datamodels.ImageModel(sci.shape)
    model.data = sci.astype(np.float32)
    model.err = err.astype(np.float32)
    model.wht = np.where(valid, 1.0, 0.0).astype(np.float32)
    model.con = np.where(valid, 1, 0).astype(np.int32)[None]
    var = np.where(valid, err.astype(np.float64) ** 2, np.nan).astype(np.float32)
    model.var_rnoise = var
    model.var_poisson = np.where(valid, 0.0, np.nan).astype(np.float32)
    model.var_flat = np.where(valid, 0.0, np.nan).astype(np.float32)
    model.meta.bunit_data = "MJy/sr"
    model.meta.bunit_err = "MJy/sr"
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.filter = band
    model.meta.instrument.detector = "MULTIPLE"
    model.meta.telescope = "JWST"
    model.meta.photometry.pixelarea_arcsecsq = pixel_scale**2
    model.meta.photometry.pixelarea_steradians = pixel_scale**2 / 4.254517e10
    w = model.meta.wcsinfo
    w.ctype1, w.ctype2 = "RA---TAN", "DEC--TAN"
    w.crval1, w.crval2 = 214.825, 52.825
    w.crpix1, w.crpix2 = (nx + 1) / 2, (ny + 1) / 2
    w.cdelt1, w.cdelt2 = -pixel_scale / 3600, pixel_scale / 3600
    w.cunit1, w.cunit2 = "deg", "deg"
    w.pc1_1, w.pc1_2, w.pc2_1, w.pc2_2 = 1.0, 0.0, 0.0, 1.0
    model.save(str(path))
    model.close()
    return path
