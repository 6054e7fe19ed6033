"""Synthetic JWST imaging survey with known truth (the workflow's embedded default).

Sub-commands, each one Snakemake rule:

``sky``
    Draw the target's sky model (smooth galaxy emission, stars, clusters, clumps,
    background galaxies) and the per-visit pointing errors; write the external
    references a real survey has: an HST-like astrometric catalog, IRAC/WISE-like
    wide-field images with a true zero sky level, and wisp templates.
``exposures``
    Render every exposure of one filter as a ``jwst.datamodels.ImageModel``
    ``*_cal.fits`` file (MJy/sr, SCI/ERR/DQ/VAR_*), through the *true* pointing,
    while the header WCS carries the pointing error.  Injected effects (each
    switchable): 1/f stripes, background levels and offsets, MIRI coronagraph
    level, wisps, cosmic rays and snowballs, persistence, bad pixels, noise.
    Per-exposure truth arrays go to ``<truth-dir>/<name>_truth.fits`` and the
    scalars to a per-filter ECSV table. The NIRCam exposures named by ``--ramps``
    are written instead as ramps after the jump step (``*_ramp.fits`` with gain
    and read-noise files, scripts/simulate_ramps.py; their cosmic rays and
    snowballs arrive in the ramp, CEERS Sec. 3.1.1), for the workflow's Stage 1.
``calibrate``
    The simulated instrument's Stage 2 (CEERS Sec. 3.2): rate images (DN/s) made
    from those ramps become ``*_cal.fits`` files like the rendered ones.
``truth-mosaic``
    Evaluate the noiseless astrophysical sky on the mosaic grid of one filter.

Truth files are for judging the workflow only; nothing in the science path reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import yaml

import simulate_ramps
from wflib import survey_plan, wfutils

log = logging.getLogger("simulate_survey")

MJYSR_PER_JY_ARCSEC2 = 4.254517e10 / 1e6  # 1 sr = 4.2545e10 arcsec^2; Jy -> MJy
PAH_WEIGHT = {"F335M": 1.0, "F770W": 1.0, "F1130W": 0.8, "F360M": 0.1, "F1000W": 0.15}
ASTROMETRIC_REFERENCE_BAND = "F200W"


# --------------------------------------------------------------------------- spectra and PSFs
def band_wavelength(filter_name: str) -> float:
    """Pivot wavelength in micron from the JWST filter name (F200W -> 2.0, F1130W -> 11.3)."""
    return int(filter_name[1:-1]) / 100.0


def psf_fwhm_arcsec(filter_name: str, psf_cfg: dict) -> float:
    """Core FWHM of the analytic PSF: diffraction 1.03 lambda/D (D = 6.5 m) with a floor."""
    lam = band_wavelength(filter_name) * 1e-6
    diffraction = 1.03 * lam / 6.5 * 206264.806
    return max(diffraction, psf_cfg["min_fwhm_arcsec"])


def psf_components(filter_name: str, psf_cfg: dict) -> list[tuple[float, float]]:
    """Two-Gaussian PSF as (weight, sigma_arcsec) pairs: a diffraction core and broad wings."""
    sigma = psf_fwhm_arcsec(filter_name, psf_cfg) / 2.3548
    w = psf_cfg["wing_fraction"]
    return [(1.0 - w, sigma), (w, sigma * psf_cfg["wing_width"])]


def source_flux_ujy(sources: dict, filter_name: str) -> np.ndarray:
    """Band flux density (micro-Jy) of each source: power law in wavelength plus a PAH term."""
    lam = band_wavelength(filter_name)
    return (
        sources["flux_2um"]
        * (lam / 2.0) ** sources["alpha"]
        * (1.0 + sources["pah"] * PAH_WEIGHT.get(filter_name, 0.0))
    )


def smooth_amplitudes(model: dict, filter_name: str) -> tuple[float, float]:
    """(stellar, dust) surface-brightness amplitudes in MJy/sr of the smooth galaxy in a band."""
    lam = band_wavelength(filter_name)
    stellar = model["stellar_amp_2um"] * (lam / 2.0) ** -1.8
    dust = model["dust_amp"] * (PAH_WEIGHT.get(filter_name, 0.0) + 0.5 * (lam / 21.0) ** 1.5)
    return stellar, dust


# --------------------------------------------------------------------------- sky geometry helpers
def tangent_offsets(ra, dec, ra0, dec0):
    """Gnomonic offsets (xi east, eta north) in arcsec of (ra, dec) from (ra0, dec0), degrees in."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def tangent_to_radec(xi, eta, ra0, dec0):
    """Inverse gnomonic projection: offsets in arcsec -> (ra, dec) in degrees."""
    xi, eta = np.radians(np.asarray(xi) / 3600.0), np.radians(np.asarray(eta) / 3600.0)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(dec0) + np.where(rho > 0, eta * np.sin(c) * np.cos(dec0) / rho, 0.0))
    ra = ra0 + np.arctan2(xi * np.sin(c), rho * np.cos(dec0) * np.cos(c) - eta * np.sin(dec0) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def unit_vector(ra, dec):
    ra, dec = math.radians(ra), math.radians(dec)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])


def rotation_about(axis, angle_rad):
    """Rodrigues rotation matrix about a unit ``axis``."""
    axis = np.asarray(axis) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * k @ k


def pointing_error_matrix(ra_c, dec_c, east_arcsec, north_arcsec, rotation_deg):
    """Sky rotation that turns the true attitude into the (wrong) header attitude.

    Rotates by ``rotation_deg`` about the visit centre, then moves the centre by
    (east, north) arcsec: the header WCS maps every pixel to a position displaced
    by this amount from the truth.
    """
    u0 = unit_vector(ra_c, dec_c)
    spin = rotation_about(u0, math.radians(rotation_deg))
    ra1, dec1 = tangent_to_radec(east_arcsec, north_arcsec, ra_c, dec_c)
    u1 = unit_vector(float(ra1), float(dec1))
    axis = np.cross(u0, u1)
    if np.linalg.norm(axis) < 1e-15:
        return spin
    shift = rotation_about(axis, math.atan2(np.linalg.norm(axis), np.dot(u0, u1)))  # accurate for tiny angles
    return shift @ spin


# --------------------------------------------------------------------------- sky model
def survey_extent_arcsec(layout: dict, scale: float) -> float:
    """Half-size (arcsec) of the region the target's science pointings cover."""
    radius = 0.0
    for key, channel in (("nircam", "NRC_LW"), ("miri", "MIRI")):
        spec = layout.get(key)
        if not spec or not spec.get("filters"):
            continue
        field = survey_plan.instrument_field_size(channel, scale)
        step = survey_plan.tile_step(channel, scale, spec.get("tile_overlap", 0.12))
        tiles = survey_plan.tile_offsets(spec["tiles"][0], spec["tiles"][1], step)
        for tx, ty in tiles:
            radius = max(radius, math.hypot(abs(tx) + field[0] / 2, abs(ty) + field[1] / 2))
    return radius


def draw_sources(kind_cfg: dict, radius: float, rng, distance_mpc: float) -> dict:
    """Compact sources (stars, clusters, clumps, background galaxies) with their SED parameters."""
    area_arcmin2 = math.pi * (radius / 60.0) ** 2
    columns = {k: [] for k in ("kind", "xi", "eta", "sigma", "flux_2um", "alpha", "pah")}
    for kind, spec in kind_cfg["sources"].items():
        n = rng.poisson(spec["density_per_arcmin2"] * area_arcmin2)
        if n == 0:
            continue
        r = radius * np.sqrt(rng.uniform(0, 1, n)) if spec.get("distribution") != "arms" else None
        if r is None:
            r = rng.exponential(kind_cfg["disk"]["scale_fraction"] * radius, n)
            r = np.minimum(r, radius)
        phi = rng.uniform(0, 2 * np.pi, n)
        lo, hi = spec["flux_2um_ujy"]
        slope = spec.get("flux_slope", 1.5)  # dN/dF ~ F^-(slope+1)
        u = rng.uniform(0, 1, n)
        flux = lo * (1 - u * (1 - (lo / hi) ** slope)) ** (-1.0 / slope)
        if "size_pc" in spec:
            pc_per_arcsec = distance_mpc * 1e6 * math.pi / (180 * 3600)
            size_lo, size_hi = (s / pc_per_arcsec for s in spec["size_pc"])
        else:
            size_lo, size_hi = spec["size_arcsec"]
        columns["kind"] += [kind] * n
        columns["xi"] += list(r * np.cos(phi))
        columns["eta"] += list(r * np.sin(phi))
        columns["sigma"] += list(rng.uniform(size_lo, size_hi, n))
        columns["flux_2um"] += list(flux)
        columns["alpha"] += list(rng.normal(spec["alpha"][0], spec["alpha"][1], n))
        columns["pah"] += list(np.full(n, float(spec.get("pah", 0.0))))
    return {k: np.asarray(v) for k, v in columns.items()}


def build_sky_model(target: dict, layout: dict, sim: dict) -> tuple[dict, dict]:
    """Sky model of one target: smooth components (dict) and compact sources (columns)."""
    rng = np.random.default_rng(zlib.crc32(f"{sim['seed']}:{target['target']}:sky".encode()))
    kind_cfg = sim["sky"][layout["sky"]]
    radius = survey_extent_arcsec(layout, sim["scale"])
    disk = kind_cfg["disk"]
    model = {
        "ra": target["ra"],
        "dec": target["dec"],
        "radius_arcsec": radius,
        "stellar_amp_2um": disk["stellar_amp_2um"],
        "dust_amp": disk["dust_amp"],
        "scale_length_arcsec": disk["scale_fraction"] * radius,
        "axis_ratio": disk["axis_ratio"],
        "position_angle_deg": disk["position_angle_deg"],
        "arm_pitch_deg": disk["arm_pitch_deg"],
        "arm_width_arcsec": disk["arm_width_fraction"] * radius,
        "arm_count": disk["arm_count"],
    }
    sources = draw_sources(kind_cfg, 1.2 * radius, rng, float(target.get("distance_mpc") or 10.0))
    sources["ra"], sources["dec"] = tangent_to_radec(sources["xi"], sources["eta"], target["ra"], target["dec"])
    sources["id"] = np.arange(1, len(sources["ra"]) + 1)
    return model, sources


def smooth_emission(model: dict, filter_name: str, xi, eta) -> np.ndarray:
    """Exponential disk plus logarithmic spiral arms (MJy/sr) at tangent offsets (arcsec).

    Structures are several arcsec wide, much broader than any JWST PSF, so they are not convolved.
    """
    stellar, dust = smooth_amplitudes(model, filter_name)
    if stellar == 0 and dust == 0:
        return np.zeros(np.shape(xi))
    pa = math.radians(model["position_angle_deg"])
    x = xi * math.cos(pa) - eta * math.sin(pa)
    y = (xi * math.sin(pa) + eta * math.cos(pa)) / model["axis_ratio"]
    r = np.hypot(x, y) + 1e-3
    disk = np.exp(-r / model["scale_length_arcsec"])
    m = model["arm_count"]
    phase = np.arctan2(y, x) - np.log(r / model["scale_length_arcsec"]) / math.tan(math.radians(model["arm_pitch_deg"]))
    delta = (phase + np.pi / m) % (2 * np.pi / m) - np.pi / m
    arms = np.exp(-0.5 * (r * delta / model["arm_width_arcsec"]) ** 2) * np.exp(-r / (2 * model["scale_length_arcsec"]))
    return stellar * disk + dust * (0.3 * disk + arms)


def source_half_size_pix(sigma_arcsec, psf, pixscale):
    """Half-width (pixels) of the stamp holding a source to 5 sigma of its widest PSF component."""
    widest = max(sig for _, sig in psf)
    return np.ceil(5 * np.sqrt(np.asarray(sigma_arcsec) ** 2 + widest**2) / pixscale).astype(int) + 1


def add_gaussian_sources(image, x, y, flux_ujy, sigma_arcsec, psf, pixscale):
    """Add PSF-convolved Gaussian sources to ``image`` in place, as pixel-averaged MJy/sr.

    Convolution is analytic (variances add) and each pixel gets the Gaussian integrated
    over its area (error functions), so undersampled PSFs keep their exact flux.
    """
    from scipy.special import erf

    ny, nx = image.shape
    halves = source_half_size_pix(sigma_arcsec, psf, pixscale)
    to_mjysr = 1e-6 * MJYSR_PER_JY_ARCSEC2 / pixscale**2
    for xc, yc, f, s, half in zip(x, y, flux_ujy, sigma_arcsec, halves, strict=True):
        x0, x1 = max(int(xc) - half, 0), min(int(xc) + half + 1, nx)
        y0, y1 = max(int(yc) - half, 0), min(int(yc) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        for weight, psf_sigma in psf:
            scale = math.sqrt(2.0) * math.sqrt(s * s + psf_sigma * psf_sigma) / pixscale
            fx = np.diff(erf((np.arange(x0, x1 + 1) - 0.5 - xc) / scale)) / 2
            fy = np.diff(erf((np.arange(y0, y1 + 1) - 0.5 - yc) / scale)) / 2
            image[y0:y1, x0:x1] += weight * f * to_mjysr * np.outer(fy, fx)


def render_sky(model, sources, filter_name, psf, shape, pixscale, pix_to_world, world_to_pix):
    """Noiseless astrophysical sky (MJy/sr) on a pixel grid given its world<->pixel transforms."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = pix_to_world(xx.astype(float), yy.astype(float))
    xi, eta = tangent_offsets(ra, dec, model["ra"], model["dec"])
    image = smooth_emission(model, filter_name, xi, eta)
    sx, sy = world_to_pix(sources["ra"], sources["dec"])
    margin = source_half_size_pix(sources["sigma"], psf, pixscale)
    keep = np.isfinite(sx) & np.isfinite(sy)
    keep &= (sx > -margin) & (sx < nx + margin) & (sy > -margin) & (sy < ny + margin)
    flux = source_flux_ujy(sources, filter_name)
    add_gaussian_sources(image, sx[keep], sy[keep], flux[keep], sources["sigma"][keep], psf, pixscale)
    return image


# --------------------------------------------------------------------------- pointing and WCS
def draw_pointing_errors(target: str, exposures, sim: dict) -> dict:
    """Per-visit pointing error: a target-wide absolute part plus a per-visit relative part."""
    cfg = sim["effects"]["pointing_errors"]
    rng = np.random.default_rng(zlib.crc32(f"{sim['seed']}:{target}:pointing".encode()))
    if not cfg["enabled"]:
        return {
            e.visit_id: {
                "east_arcsec": 0.0,
                "north_arcsec": 0.0,
                "rotation_deg": 0.0,
                "ra_center": e.point_ra,
                "dec_center": e.point_dec,
            }
            for e in exposures
        }
    angle = rng.uniform(0, 2 * np.pi)
    abs_east = cfg["absolute_shift_arcsec"] * math.cos(angle)
    abs_north = cfg["absolute_shift_arcsec"] * math.sin(angle)
    abs_rot = rng.uniform(-1, 1) * cfg["absolute_rotation_deg"]
    errors = {}
    for exp in exposures:
        if exp.visit_id in errors:
            continue
        shift = rng.uniform(*cfg["visit_shift_arcsec"])
        angle = rng.uniform(0, 2 * np.pi)
        ra_c, dec_c = visit_center(exp)
        errors[exp.visit_id] = {
            "east_arcsec": abs_east + shift * math.cos(angle),
            "north_arcsec": abs_north + shift * math.sin(angle),
            "rotation_deg": abs_rot + rng.uniform(-1, 1) * cfg["visit_rotation_deg"],
            "relative_east_arcsec": shift * math.cos(angle),
            "relative_north_arcsec": shift * math.sin(angle),
            "ra_center": ra_c,
            "dec_center": dec_c,
        }
    return errors


def true_attitude(exp):
    from pysiaf.utils import rotations

    return rotations.attitude(exp.point_v2, exp.point_v3, exp.point_ra, exp.point_dec, exp.pa_v3)


def visit_center(exp) -> tuple[float, float]:
    """Sky position of the instrument field centre for this exposure's true attitude."""
    from pysiaf.utils import rotations

    center = survey_plan.MIRI_V2V3_CENTER if exp.instrument == "MIRI" else survey_plan.NIRCAM_V2V3_CENTER
    ra, dec = rotations.pointing(true_attitude(exp), *center)
    return float(ra), float(dec)


def wcsinfo_for(attitude, exp, scale):
    """``meta.wcsinfo`` values of a detector for a given attitude matrix."""
    from pysiaf.utils import rotations

    v2, v3 = survey_plan.detector_v2v3(exp.detector, scale)
    ra, dec = rotations.pointing(attitude, v2, v3)
    geo = survey_plan.CHANNELS[exp.channel]
    return {
        "v2_ref": v2,
        "v3_ref": v3,
        "ra_ref": float(ra),
        "dec_ref": float(dec),
        "roll_ref": float(rotations.posangle(attitude, v2, v3)),
        "v3yangle": geo["v3yangle"],
        "vparity": geo["vparity"],
    }


def build_gwcs(model, channel, scale):
    """gwcs detector -> v2v3 -> world from an affine distortion of ``channel`` and ``meta.wcsinfo``."""
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models as am
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs
    from jwst.assign_wcs import pointing

    geo = survey_plan.CHANNELS[channel]
    ny, nx = survey_plan.detector_shape(channel, scale)
    info = model.meta.wcsinfo
    theta = math.radians(geo["v3yangle"])
    p = geo["vparity"]
    matrix = np.array([[p * math.cos(theta), math.sin(theta)], [-p * math.sin(theta), math.cos(theta)]])
    distortion = (
        (am.Shift(-(nx - 1) / 2) & am.Shift(-(ny - 1) / 2))
        | (am.Scale(geo["pixscale"]) & am.Scale(geo["pixscale"]))
        | am.AffineTransformation2D(matrix=matrix, translation=[info.v2_ref, info.v3_ref])
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world")
    wcs = gwcs_wcs.WCS([(detector, distortion), (v2v3, pointing.v23tosky(model)), (world, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def detector_model(exp, attitude, scale):
    """Empty ImageModel of ``exp``'s detector whose WCS follows the given attitude matrix."""
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel(survey_plan.detector_shape(exp.channel, scale))
    for key, value in wcsinfo_for(attitude, exp, scale).items():
        setattr(model.meta.wcsinfo, key, value)
    model.meta.wcs = build_gwcs(model, exp.channel, scale)
    return model


# --------------------------------------------------------------------------- detector effects
def pink_series(n: int, rng) -> np.ndarray:
    """Zero-mean, unit-RMS series with a 1/f power spectrum (equal power per octave)."""
    freqs = np.fft.rfftfreq(n)
    amplitude = np.zeros_like(freqs)
    amplitude[1:] = freqs[1:] ** -0.5
    spectrum = amplitude * (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size))
    series = np.fft.irfft(spectrum, n)
    series -= series.mean()
    return series / series.std()


def one_over_f_pattern(shape, row_rms, col_rms, rng, n_amp=4, common_fraction=0.5):
    """Per-amplifier row stripes (1/f along the slow axis) plus a weaker column component."""
    ny, nx = shape
    width = nx // n_amp
    common = pink_series(ny, rng)
    pattern = np.zeros(shape)
    for amp in range(n_amp):
        rows = math.sqrt(common_fraction) * common + math.sqrt(1 - common_fraction) * pink_series(ny, rng)
        pattern[:, amp * width : (amp + 1) * width] += row_rms * rows[:, None]
    pattern += col_rms * pink_series(nx, rng)[None, :]
    return pattern


def wisp_template(shape, detector: str) -> np.ndarray:
    """Unit-peak smooth arc, the shape of a NIRCam wisp (diffuse stray light on A3/A4/B3/B4)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx] / max(nx, ny)
    flip = detector.endswith("4") or detector.startswith("NRCB")
    cx, cy = (1.15, -0.25) if flip else (-0.15, -0.25)
    r = np.hypot(xx - cx, yy - cy)
    template = np.exp(-0.5 * ((r - 0.75) / 0.12) ** 2) * np.exp(-0.5 * ((yy - 0.45) / 0.3) ** 2)
    return template / template.max()


def cosmic_rays(shape, cfg, exptime, rng):
    """Cosmic-ray hits: flagged by the jump step (JUMP_DET mask) and a few unflagged residuals."""
    ny, nx = shape
    n_hits = rng.poisson(cfg["hit_fraction_per_1000s"] * ny * nx * exptime / 1000.0)
    ys, xs = rng.integers(0, ny, n_hits), rng.integers(0, nx, n_hits)
    jump = np.zeros(shape, bool)
    jump[ys, xs] = True
    residual = np.zeros(shape)
    unflagged = rng.uniform(0, 1, n_hits) < cfg["unflagged_fraction"]
    residual[ys[unflagged], xs[unflagged]] = rng.uniform(*cfg["residual_mjysr"], unflagged.sum())
    jump[ys[unflagged], xs[unflagged]] = False
    return residual, jump


def snowballs(shape, cfg, exptime, rng):
    """Snowballs: flagged saturated cores with unflagged diffuse wings (CEERS Sec. 3.1)."""
    ny, nx = shape
    expected = cfg["per_fullframe_900s"] * (ny * nx) / 2048**2 * exptime / 900.0
    n = rng.poisson(expected)
    halo = np.zeros(shape)
    core = np.zeros(shape, bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    events = []
    for _ in range(n):
        xc, yc = rng.uniform(0, nx), rng.uniform(0, ny)
        r_core = rng.uniform(*cfg["core_radius_px"])
        amp = rng.uniform(*cfg["halo_mjysr"])
        r = np.hypot(xx - xc, yy - yc)
        core |= r <= r_core
        wing = (r > r_core) & (r <= cfg["halo_extent"] * r_core)
        halo[wing] += amp * np.exp(-(r[wing] - r_core) / r_core)
        events.append((float(xc), float(yc), float(r_core), float(amp)))
    return halo, core, events


def disk_mask(shape, x, y, radius):
    ny, nx = shape
    yy, xx = np.ogrid[0:ny, 0:nx]
    return (xx - x) ** 2 + (yy - y) ** 2 <= radius**2


# --------------------------------------------------------------------------- exposure rendering
class ExposureRenderer:
    """Renders the exposures of one target from its sky model, plan and pointing errors."""

    def __init__(self, target, model, sources, plan, errors, sim, wisp_templates):
        self.target, self.model, self.sources = target, model, sources
        self.plan = {e.name: e for e in plan}
        self.previous = survey_plan.previous_on_detector(plan)
        self.errors, self.sim, self.wisps = errors, sim, wisp_templates
        self.scale = sim["scale"]
        self.effects = sim["effects"]
        self._true_wcs = {}

    def rng_for(self, name, purpose):
        return np.random.default_rng(zlib.crc32(f"{self.sim['seed']}:{self.target}:{name}:{purpose}".encode()))

    def channel_cfg(self, exp):
        return self.sim["detectors"][exp.channel]

    def header_attitude(self, exp):
        err = self.errors[exp.visit_id]
        rot = pointing_error_matrix(
            err["ra_center"], err["dec_center"], err["east_arcsec"], err["north_arcsec"], err["rotation_deg"]
        )
        return rot @ true_attitude(exp)

    def new_model(self, exp, attitude):
        return detector_model(exp, attitude, self.scale)

    def true_wcs(self, exp):
        """The WCS the pixels are rendered with (cached: persistence looks back at earlier exposures)."""
        if exp.name not in self._true_wcs:
            self._true_wcs[exp.name] = self.new_model(exp, true_attitude(exp)).meta.wcs
        return self._true_wcs[exp.name]

    def saturation_mjysr(self, exp):
        det = self.channel_cfg(exp)
        return det["full_well_e"] / (det["gain"] * exp.exptime) * det["photmjsr"]

    def render_noiseless(self, exp):
        """Astrophysical sky on the detector through the TRUE WCS."""
        wcs = self.true_wcs(exp)
        geo = survey_plan.CHANNELS[exp.channel]
        psf = psf_components(exp.filter, self.sim["psf"])
        return render_sky(
            self.model,
            self.sources,
            exp.filter,
            psf,
            survey_plan.detector_shape(exp.channel, self.scale),
            geo["pixscale"],
            lambda x, y: wcs(x, y),
            lambda ra, dec: wcs.invert(ra, dec, with_bounding_box=False),
        )

    def background(self, exp):
        """Zodiacal/thermal background (MJy/sr) plus a per-exposure offset."""
        cfg = self.effects["background"]
        if not cfg["enabled"]:
            return 0.0, 0.0
        lam = band_wavelength(exp.filter)
        if exp.instrument == "MIRI":
            level = cfg["miri_7p7um_mjysr"] * (lam / 7.7) ** 3
            sigma = cfg["miri_offset_rms_mjysr"]
        else:
            level = cfg["nircam_2um_mjysr"] * (lam / 2.0)
            sigma = cfg["nircam_offset_rms_mjysr"]
        offset = float(self.rng_for(exp.name, "background").normal(0.0, sigma))
        return float(level), offset

    def persistence_events(self, exp):
        """(x, y, radius_px, age_s) of saturated footprints left by earlier exposures on this detector.

        Two sources: stars that saturated in the preceding exposures (any filter) within
        ``window_s``, and a bright target of a previous program observed before the first one.
        """
        cfg = self.effects["persistence"]
        events = []
        prev_name = self.previous[exp.name]
        while prev_name is not None:
            prev = self.plan[prev_name]
            age = (exp.start_mjd - prev.start_mjd) * 86400.0 - prev.exptime
            if age > cfg["window_s"]:
                break
            events += self.saturated_stars(prev, age)
            prev_name = self.previous[prev_name]
        first = self.first_on_detector(exp.detector)
        age0 = (exp.start_mjd - first.start_mjd) * 86400.0 + cfg["previous_program_gap_s"]
        if age0 <= cfg["window_s"]:
            events += [(x, y, r, age0) for x, y, r in self.previous_program_blobs(exp)]
        return events

    def first_on_detector(self, detector):
        return min((e for e in self.plan.values() if e.detector == detector), key=lambda e: e.start_mjd)

    def previous_program_blobs(self, exp):
        """(x, y, radius_px) of the bright target a previous program saturated on ``exp``'s detector; its
        exposure ended ``previous_program_gap_s`` before the survey's first one on that detector."""
        cfg = self.effects["persistence"]
        if not cfg["enabled"]:
            return []
        rng = self.rng_for(exp.detector, "previous-program")
        ny, nx = survey_plan.detector_shape(exp.channel, self.scale)
        return [
            (rng.uniform(0, nx), rng.uniform(0, ny), rng.uniform(*cfg["blob_radius_px"]))
            for _ in range(cfg["previous_program_blobs"])
        ]

    def previous_program_exposure(self, detector):
        """The previous program's exposure on ``detector`` that left the injected blobs, as a cal file
        would hold it (ImageModel): the blobs at the saturation level, flagged SATURATED in DQ, the
        rest empty sky; it ends ``previous_program_gap_s`` before the survey's first exposure there
        and lasts as long. History for the persistence step only (never a science exposure)."""
        import dataclasses

        from stdatamodels.jwst.datamodels import dqflags

        cfg = self.effects["persistence"]
        first = self.first_on_detector(detector)
        program = PREVIOUS_PROGRAM
        exp = dataclasses.replace(
            first,
            name=survey_plan.exposure_name(program, 1, 1, 2, 1, 1, 1, detector),
            target="previous-program",
            role="history",
            program=program,
            observation=1,
            visit=1,
            exposure_number=1,
            start_mjd=first.start_mjd - (cfg["previous_program_gap_s"] + first.exptime) / 86400.0,
        )
        shape = survey_plan.detector_shape(exp.channel, self.scale)
        model = self.new_model(exp, true_attitude(first))
        data = np.zeros(shape, np.float32)
        dq = np.zeros(shape, np.uint32)
        for x, y, radius in self.previous_program_blobs(first):
            blob = disk_mask(shape, x, y, radius)
            data[blob] = self.saturation_mjysr(exp)
            dq[blob] |= dqflags.pixel["SATURATED"]
        model.data = data
        model.dq = dq | self.detector_dq(exp, shape)  # SCI and DQ only: all the persistence step reads
        self.fill_metadata(model, exp)
        model.meta.target.proposer_name = model.meta.target.catalog_name = "previous-program"
        return model, exp

    def saturated_stars(self, prev, age):
        """Footprints of stars that saturated in exposure ``prev``; they persist at the same pixels."""
        stars = self.sources["kind"] == "star"
        if not stars.any():
            return []
        x, y = self.true_wcs(prev).invert(self.sources["ra"][stars], self.sources["dec"][stars])
        weight, sigma = psf_components(prev.filter, self.sim["psf"])[0]
        peak = (
            weight
            * source_flux_ujy(self.sources, prev.filter)[stars]
            * 1e-6
            / (2 * math.pi * sigma**2)
            * MJYSR_PER_JY_ARCSEC2
        )
        sat = self.saturation_mjysr(prev)
        pixscale = survey_plan.CHANNELS[prev.channel]["pixscale"]
        ny, nx = survey_plan.detector_shape(prev.channel, self.scale)
        events = []
        for xs, ys, pk in zip(x, y, peak, strict=True):
            if np.isfinite(xs) and 0 <= xs < nx and 0 <= ys < ny and pk > sat:
                radius = sigma / pixscale * math.sqrt(2 * math.log(pk / sat)) + 0.5
                events.append((float(xs), float(ys), float(radius), age))
        return events

    def signal_and_effects(self, exp, rng, ramp_events: bool):
        """(sky + background, DQ, sum of the additive artefacts, truth arrays, truth scalars) of one exposure,
        MJy/sr; with ``ramp_events`` the cosmic rays and snowballs are left to the ramp."""
        sky = self.render_noiseless(exp)
        truth = {"SKY": sky}
        scalars = {"exposure": exp.name, "filter": exp.filter, "detector": exp.detector, "visit_id": exp.visit_id}
        truth["BKG"] = self.background_image(exp, sky.shape, rng, scalars)
        dq = np.zeros(sky.shape, np.uint32)
        extra = self.additive_effects(exp, sky.shape, dq, truth, scalars, ramp_events)
        return sky + truth["BKG"], dq, extra, truth, scalars

    def render(self, exp):
        """Return (ImageModel, truth arrays dict, truth scalars dict) for one exposure."""
        rng = self.rng_for(exp.name, "noise")
        signal, dq, extra, truth, scalars = self.signal_and_effects(exp, rng, ramp_events=False)
        science, variances = self.noisy_signal(exp, signal, rng)
        unusable = self.flag_unusable(exp, signal, dq)
        model = self.new_model(exp, self.header_attitude(exp))
        model.data = np.where(unusable, np.nan, science + extra).astype(np.float32)
        model.dq = dq
        for name, var in variances.items():
            setattr(model, name, np.where(unusable, np.nan, var).astype(np.float32))
        model.err = np.sqrt(model.var_poisson + model.var_rnoise + model.var_flat).astype(np.float32)
        self.fill_metadata(model, exp)
        truth["DQ_TRUE_BAD"] = unusable.astype(np.uint8)
        return model, truth, scalars

    def render_ramp(self, exp):
        """Return (RampModel after the jump step, ramp dict of simulate_ramps, truth arrays, truth scalars).

        CEERS Sec. 3.1.1: the exposure's signal and artefacts (as in ``render``, times the flat) become
        a count rate whose ramp collects the cosmic rays and snowballs; the jump step flags their
        cores and leaves the snowball wings. The ramp carries the header of the exposure (pointing
        with its error in ``meta.wcsinfo``) and the detector's DQ (bad and reference pixels).
        """
        if exp.instrument != "NIRCAM":
            raise wfutils.InputError(f"{exp.name}: ramps are simulated for NIRCam exposures only")
        signal, dq, extra, truth, scalars = self.signal_and_effects(exp, self.rng_for(exp.name, "noise"), True)
        rate = (signal * self.detector_flat(exp, signal.shape) + extra) / self.channel_cfg(exp)["photmjsr"]
        ramp = simulate_ramps.simulate_ramp(rate, self.ramp_params(exp), self.rng_for(exp.name, "ramp"))
        truth["DQ_TRUE_BAD"] = self.flag_unusable(exp, signal, dq).astype(np.uint8)
        scalars["snowballs"] = len(ramp["events"])
        header = self.new_model(exp, self.header_attitude(exp))
        self.exposure_metadata(header, exp)
        model = simulate_ramps.ramp_model(ramp, exp.detector, header, self.detector_dq(exp, signal.shape))
        return model, ramp, truth, scalars

    def ramp_params(self, exp):
        """simulate_ramps parameters of an exposure: ``simulation.ramps`` with a readout spanning the
        exposure time, the channel's gain and full well, and the rates of ``effects`` (0 when off;
        CEERS Sec. 3.1.1 sees ~25-30 snowballs per detector in ~900 s)."""
        det, fx = self.channel_cfg(exp), self.effects
        params = {
            **self.sim.get("ramps", {}),
            "gain": det["gain"],
            "saturation_dn": det["full_well_e"] / det["gain"] if fx["saturation"]["enabled"] else math.inf,
            "snowballs_per_fullframe_900s": (
                fx["snowballs"]["per_fullframe_900s"] if fx["snowballs"]["enabled"] else 0.0
            ),
            "cosmic_rays_per_pixel_per_1000s": (
                fx["cosmic_rays"]["hit_fraction_per_1000s"] if fx["cosmic_rays"]["enabled"] else 0.0
            ),
        }
        return simulate_ramps.readout_spanning(exp.exptime, params)

    def background_image(self, exp, shape, rng, scalars):
        """Background level plus per-exposure offset, plus the extra level of the MIRI Lyot region."""
        level, offset = self.background(exp)
        bkg = np.full(shape, level + offset)
        scalars.update(background_mjysr=level, offset_mjysr=offset, lyot_offset_mjysr=0.0)
        if exp.instrument == "MIRI" and self.effects["background"]["enabled"]:
            lyot_offset = self.effects["background"]["lyot_extra_mjysr"] * (1 + 0.2 * rng.standard_normal())
            bkg[region_mask(shape, self.sim["miri_regions"]["lyot"])] += lyot_offset
            scalars["lyot_offset_mjysr"] = float(lyot_offset)
        return bkg

    def additive_effects(self, exp, shape, dq, truth, scalars, ramp_events=False):
        """Sum of the enabled additive artefacts; each one's truth goes to ``truth``, flags to ``dq``.

        ``ramp_events``: cosmic rays and snowballs are not painted here (the ramp collects them).
        """
        from stdatamodels.jwst.datamodels import dqflags

        nircam = exp.instrument == "NIRCAM"
        extra = np.zeros(shape)
        if nircam and self.effects["one_over_f"]["enabled"]:
            cfg = self.effects["one_over_f"]
            rms = cfg["row_rms_mjysr"][exp.channel]
            truth["STRIPES"] = one_over_f_pattern(
                shape, rms, cfg["column_fraction"] * rms, self.rng_for(exp.name, "1/f")
            )
        wisp = self.wisps.get((exp.detector, exp.filter))
        if wisp is not None and self.effects["wisps"]["enabled"]:
            scalars["wisp_scale"] = float(self.rng_for(exp.name, "wisp").uniform(*self.effects["wisps"]["scale_range"]))
            truth["WISP"] = scalars["wisp_scale"] * wisp
        if nircam and self.effects["persistence"]["enabled"]:
            truth["PERSIST"] = self.persistence_image(exp, shape)
            scalars["persistence_pixels"] = int((truth["PERSIST"] > 0).sum())
        if self.effects["cosmic_rays"]["enabled"] and not ramp_events:
            truth["CR"], jump = cosmic_rays(
                shape, self.effects["cosmic_rays"], exp.exptime, self.rng_for(exp.name, "cr")
            )
            dq[jump] |= dqflags.pixel["JUMP_DET"]
        if nircam and self.effects["snowballs"]["enabled"] and not ramp_events:
            rng = self.rng_for(exp.name, "snowball")
            truth["SNOWBALL"], core, events = snowballs(shape, self.effects["snowballs"], exp.exptime, rng)
            dq[core] |= dqflags.pixel["JUMP_DET"]
            scalars["snowballs"] = len(events)
        for name in ("STRIPES", "WISP", "PERSIST", "CR", "SNOWBALL"):
            if name in truth:
                extra += truth[name]
        return extra

    def persistence_image(self, exp, shape):
        cfg = self.effects["persistence"]
        persist = np.zeros(shape)
        for x, y, radius, age in self.persistence_events(exp):
            persist[disk_mask(shape, x, y, radius)] += cfg["amplitude_mjysr"] * math.exp(-age / cfg["decay_s"])
        return persist

    def noisy_signal(self, exp, signal, rng):
        """Signal times the detector flat plus Gaussian noise with exactly the VAR_POISSON + VAR_RNOISE variance."""
        det = self.channel_cfg(exp)
        positive = np.clip(signal, 0, None)
        variances = {
            "var_poisson": positive * det["photmjsr"] / (det["gain"] * exp.exptime),
            "var_rnoise": np.full(
                signal.shape, (det["photmjsr"] * det["read_noise_e"] / (det["gain"] * exp.exptime)) ** 2
            ),
            "var_flat": (det["flat_error"] * positive) ** 2,
        }
        flat = self.detector_flat(exp, signal.shape)
        if not self.effects["noise"]["enabled"]:
            return signal, variances
        noise = rng.standard_normal(signal.shape) * np.sqrt(variances["var_poisson"] + variances["var_rnoise"])
        return signal * flat + noise, variances

    def detector_flat(self, exp, shape):
        """Pixel-to-pixel response left after flat-fielding (1 + ``flat_error`` x N(0, 1)), fixed per detector."""
        return 1.0 + self.channel_cfg(exp)["flat_error"] * self.rng_for(exp.detector, "flat").standard_normal(shape)

    def flag_unusable(self, exp, signal, dq):
        """Saturation, bad pixels, reference pixels and (MIRI) non-science regions; returns DO_NOT_USE."""
        from stdatamodels.jwst.datamodels import dqflags

        flags = dqflags.pixel
        if self.effects["saturation"]["enabled"]:
            sat = self.saturation_mjysr(exp)
            dq[signal > sat] |= flags["SATURATED"]
            dq[signal > self.effects["saturation"]["unusable_factor"] * sat] |= flags["DO_NOT_USE"] | flags["DEAD"]
        dq |= self.detector_dq(exp, signal.shape)
        return (dq & flags["DO_NOT_USE"]) > 0

    def detector_dq(self, exp, shape):
        """DQ of the detector itself (a CRDS mask's part): bad pixels, reference pixels, (MIRI) non-science regions."""
        from stdatamodels.jwst.datamodels import dqflags

        flags = dqflags.pixel
        dq = np.zeros(shape, np.uint32)
        if self.effects["bad_pixels"]["enabled"]:
            dead = (
                self.rng_for(exp.detector, "bad-pixels").uniform(0, 1, shape) < self.effects["bad_pixels"]["fraction"]
            )
            dq[dead] |= flags["DO_NOT_USE"] | flags["DEAD"]
        if exp.instrument == "NIRCAM":
            border = np.ones(shape, bool)
            b = survey_plan.REFERENCE_BORDER
            border[b:-b, b:-b] = False
            dq[border] |= flags["DO_NOT_USE"] | flags["REFERENCE_PIXEL"]
        else:
            regions = self.sim["miri_regions"]
            nonsci = ~(region_mask(shape, regions["lyot"]) | region_mask(shape, regions["imager"]))
            dq[nonsci] |= flags["DO_NOT_USE"] | flags["NON_SCIENCE"]
            dq[:, :4] |= flags["DO_NOT_USE"] | flags["REFERENCE_PIXEL"]
            dq[:, -4:] |= flags["DO_NOT_USE"] | flags["REFERENCE_PIXEL"]
        return dq

    def fill_metadata(self, model, exp):
        """Instrument, observation, exposure and photometry metadata as Stage 2 writes them."""
        self.exposure_metadata(model, exp)
        stage2_metadata(model, exp.channel, self.channel_cfg(exp))

    def exposure_metadata(self, model, exp):
        """Instrument, exposure, observation, target, dither and subarray metadata (an uncal file's header)."""
        from astropy.time import Time

        geo = survey_plan.CHANNELS[exp.channel]
        ny, nx = model.data.shape
        meta = model.meta
        meta.telescope = "JWST"
        meta.instrument.name = exp.instrument
        meta.instrument.detector = exp.detector
        meta.instrument.filter = exp.filter
        meta.instrument.pupil = exp.pupil if exp.instrument == "NIRCAM" else None
        if exp.instrument == "NIRCAM":
            meta.instrument.channel = "SHORT" if exp.channel == "NRC_SW" else "LONG"
            meta.instrument.module = exp.detector[3]
        meta.exposure.type = geo["exp_type"]
        meta.exposure.start_time = exp.start_mjd
        meta.exposure.mid_time = exp.start_mjd + exp.exptime / 2 / 86400
        meta.exposure.end_time = exp.start_mjd + exp.exptime / 86400
        meta.exposure.exposure_time = exp.exptime
        meta.exposure.effective_exposure_time = exp.exptime
        meta.exposure.measurement_time = exp.exptime
        meta.exposure.duration = exp.exptime
        meta.exposure.readpatt = "MEDIUM8" if exp.instrument == "NIRCAM" else "FASTR1"
        meta.exposure.nints = 1
        meta.exposure.ngroups = 8
        meta.exposure.nframes = 1
        meta.exposure.groupgap = 0
        start = Time(exp.start_mjd, format="mjd")
        meta.observation.date = start.strftime("%Y-%m-%d")
        meta.observation.time = start.strftime("%H:%M:%S.%f")[:12]
        meta.observation.program_number = f"{exp.program:05d}"
        meta.observation.observation_number = f"{exp.observation:03d}"
        meta.observation.visit_number = f"{exp.visit:03d}"
        meta.observation.visit_group = f"{exp.visit_group:02d}"
        meta.observation.sequence_id = str(exp.sequence)
        meta.observation.activity_id = f"{exp.activity:02d}"
        meta.observation.exposure_number = f"{exp.exposure_number:05d}"
        meta.observation.obs_id = exp.name.rsplit("_", 1)[0]
        meta.observation.visit_id = exp.visit_id
        meta.target.proposer_name = self.target
        meta.target.catalog_name = self.target
        meta.target.ra = self.model["ra"]
        meta.target.dec = self.model["dec"]
        meta.dither.primary_type = "FULLBOX" if exp.instrument == "NIRCAM" else "4-POINT-SETS"
        meta.dither.position_number = exp.dither
        meta.dither.total_points = exp.n_dithers
        meta.subarray.name = "FULL"
        meta.subarray.xstart, meta.subarray.ystart = 1, 1
        meta.subarray.xsize, meta.subarray.ysize = nx, ny
        meta.subarray.fastaxis, meta.subarray.slowaxis = 1, 2


def stage2_metadata(model, channel, det):
    """Units, photometry and calibration steps as Stage 2 writes them (CEERS Sec. 3.2), S_REGION and the
    FITS WCS of the gwcs in ``model.meta.wcs``; ``det``: the channel's ``simulation.detectors`` entry."""
    from jwst.assign_wcs.util import update_fits_wcsinfo, update_s_region_imaging

    geo = survey_plan.CHANNELS[channel]
    meta = model.meta
    meta.bunit_data = "MJy/sr"
    meta.bunit_err = "MJy/sr"
    area_arcsec2 = geo["pixscale"] ** 2
    meta.photometry.pixelarea_arcsecsq = area_arcsec2
    meta.photometry.pixelarea_steradians = area_arcsec2 / 4.254517e10
    meta.photometry.conversion_megajanskys = det["photmjsr"]
    meta.velocity_aberration.scale_factor = 1.0
    for step in ("assign_wcs", "flat_field", "photom", "resample"):
        setattr(meta.cal_step, step, "COMPLETE" if step != "resample" else "SKIPPED")
    meta.calibration_software_name = "jwst-mosaic-simulator"
    update_s_region_imaging(model)
    update_fits_wcsinfo(model)


def calibrate_rate(rate, sim: dict):
    """The simulated instrument's Stage 2 of a rate image made from a simulated ramp (CEERS Sec. 3.2).

    assign_wcs: the gwcs of the pointing in ``meta.wcsinfo`` (which carries the pointing error, as
    the rendered cal files' headers do); flat_field: nothing left to divide (the simulated flat error
    is what a real flat leaves); photom: DN/s x PHOTMJSR, variances x PHOTMJSR^2 and VAR_FLAT as in
    ``noisy_signal``; DO_NOT_USE pixels become NaN, as in the rendered cal files. Returns an ImageModel.
    """
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    channel = survey_plan.channel_of(rate.meta.instrument.filter)
    det = sim["detectors"][channel]
    k = det["photmjsr"]
    unusable = (rate.dq & dqflags.pixel["DO_NOT_USE"]) > 0
    data = np.where(unusable, np.nan, rate.data * k)
    variances = {
        "var_poisson": rate.var_poisson * k**2,
        "var_rnoise": rate.var_rnoise * k**2,
        "var_flat": (det["flat_error"] * np.clip(data, 0, None)) ** 2,
    }
    model = datamodels.ImageModel(data=data.astype(np.float32), dq=rate.dq)
    model.update(rate)
    for name, var in variances.items():
        setattr(model, name, np.where(unusable, np.nan, var).astype(np.float32))
    model.err = np.sqrt(model.var_poisson + model.var_rnoise + model.var_flat).astype(np.float32)
    model.meta.wcs = build_gwcs(model, channel, sim["scale"])
    stage2_metadata(model, channel, det)
    return model


def region_mask(shape, fractions):
    """Boolean mask of a detector region given as [x0, x1, y0, y1] fractions of the detector."""
    ny, nx = shape
    x0, x1, y0, y1 = fractions
    mask = np.zeros(shape, bool)
    mask[int(round(y0 * ny)) : int(round(y1 * ny)), int(round(x0 * nx)) : int(round(x1 * nx))] = True
    return mask


# --------------------------------------------------------------------------- external references
def write_refcat(sources, sim, path, rng, cfg_hash):
    """HST-like astrometric catalog: stars and compact clusters with positional errors."""
    from astropy.table import Table

    cfg = sim["references"]["refcat"]
    flux = source_flux_ujy(sources, "F080W")
    mag = -2.5 * np.log10(np.clip(flux, 1e-6, None) * 1e-6 / 3631.0)
    keep = np.isin(sources["kind"], cfg["kinds"]) & (mag < cfg["mag_limit"])
    err = cfg["position_error_mas"] / 3600e3
    dec = sources["dec"][keep] + rng.normal(0, err, keep.sum())
    ra = sources["ra"][keep] + rng.normal(0, err, keep.sum()) / np.cos(np.radians(dec))
    table = Table(
        {"ra": ra, "dec": dec, "mag": mag[keep], "pos_err_mas": np.full(keep.sum(), cfg["position_error_mas"])}
    )
    table.meta.update({"description": "synthetic HST-like astrometric reference catalog", "config_hash": cfg_hash})
    wfutils.write_text("\n".join(table_lines(table)) + "\n", path)


def table_lines(table):
    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return buf.getvalue().splitlines()


def celestial_wcs(ra, dec, pixscale, shape, crpix=None):
    """North-up TAN WCS with ``pixscale`` arcsec pixels centred on (ra, dec)."""
    from astropy.wcs import WCS

    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2] if crpix is None else [crpix[0] + 1, crpix[1] + 1]
    wcs.wcs.cdelt = [-pixscale / 3600.0, pixscale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def write_widefield(model, sources, spec, path, rng, inputs, cfg_hash):
    """IRAC/WISE-like image: the sky of a proxy band at low resolution, true zero level, MJy/sr."""
    from astropy.io import fits
    from scipy.ndimage import gaussian_filter

    size = 2.4 * model["radius_arcsec"]
    n = int(math.ceil(size / spec["pixscale_arcsec"]))
    wcs = celestial_wcs(model["ra"], model["dec"], spec["pixscale_arcsec"], (n, n))
    oversample = 3
    fine = celestial_wcs(
        model["ra"], model["dec"], spec["pixscale_arcsec"] / oversample, (n * oversample, n * oversample)
    )
    yy, xx = np.mgrid[0 : n * oversample, 0 : n * oversample]
    ra, dec = fine.pixel_to_world_values(xx, yy)
    xi, eta = tangent_offsets(ra, dec, model["ra"], model["dec"])
    smooth = smooth_emission(model, spec["proxy_band"], xi, eta)
    sigma_fine = spec["fwhm_arcsec"] / 2.3548 / (spec["pixscale_arcsec"] / oversample)
    smooth = (
        gaussian_filter(smooth, sigma_fine, mode="constant").reshape(n, oversample, n, oversample).mean(axis=(1, 3))
    )
    image = smooth
    x, y = wcs.world_to_pixel_values(sources["ra"], sources["dec"])
    add_gaussian_sources(
        image,
        x,
        y,
        source_flux_ujy(sources, spec["proxy_band"]),
        sources["sigma"],
        [(1.0, spec["fwhm_arcsec"] / 2.3548)],
        spec["pixscale_arcsec"],
    )
    image = spec["flux_ratio"] * image + rng.normal(0, spec["noise_mjysr"], image.shape)
    header = wcs.to_header()
    header["BUNIT"] = "MJy/sr"
    header["TELESCOP"] = spec["telescope"]
    header["BAND"] = spec["name"]
    header["FWHM"] = (spec["fwhm_arcsec"], "PSF FWHM in arcsec")
    header["PROXY"] = (spec["proxy_band"], "JWST band whose sky this image traces")
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image.astype(np.float32), header, name="SCI")])
    wfutils.write_hdulist(hdul, path, inputs, cfg_hash, "simulate_sky")


def write_wisp_template(template, detector, filter_name, path, inputs, cfg_hash):
    """Wisp template in MJy/sr, as the published NIRCam templates are distributed (one per detector/filter)."""
    from astropy.io import fits

    header = fits.Header({"DETECTOR": detector, "FILTER": filter_name, "BUNIT": "MJy/sr"})
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(template.astype(np.float32), header, name="SCI")])
    wfutils.write_hdulist(hdul, path, inputs, cfg_hash, "simulate_exposures")


def wisp_file_name(detector, filter_name):
    return f"wisp_{detector.lower()}_{filter_name.lower()}.fits"


def wisp_targets(plan, sim, filter_name=None):
    """(detector, filter) pairs of the plan that get wisps (optionally of one filter)."""
    cfg = sim["effects"]["wisps"]
    return sorted(
        {
            (e.detector, e.filter)
            for e in plan
            if e.detector in cfg["detectors"] and e.filter in cfg["amplitude_mjysr"] and filter_name in (None, e.filter)
        }
    )


# --------------------------------------------------------------------------- truth I/O
def sources_table(sources):
    from astropy.table import Table

    return Table({k: sources[k] for k in ("id", "kind", "ra", "dec", "xi", "eta", "sigma", "flux_2um", "alpha", "pah")})


def read_sky(sky_dir):
    from astropy.table import Table

    sky_dir = Path(sky_dir)
    truth = json.loads((sky_dir / "sky_truth.json").read_text())
    table = Table.read(sky_dir / "sky_sources.ecsv", format="ascii.ecsv")
    sources = {name: np.asarray(table[name]) for name in table.colnames}
    return truth, sources


def write_truth_arrays(truth, path, exp, inputs, cfg_hash):
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()]
    hdus[0].header["EXPOSURE"] = exp.name
    for name, array in truth.items():
        dtype = np.uint8 if array.dtype == np.uint8 else np.float32
        hdus.append(fits.ImageHDU(array.astype(dtype), name=name))
    wfutils.write_hdulist(fits.HDUList(hdus), path, inputs, cfg_hash, "simulate_exposures")


# --------------------------------------------------------------------------- commands
def load_sim_config(text_or_path: str) -> dict:
    """Simulation config from a JSON string or a workflow YAML config file (its ``simulation``)."""
    path = Path(text_or_path)
    if not text_or_path.lstrip().startswith("{") and path.exists():
        data = yaml.safe_load(path.read_text())
        return data.get("simulation", data)
    return json.loads(text_or_path)


def target_plan(target, sim):
    layout = sim["layouts"][target["layout"]]
    return survey_plan.plan_target(
        target["target"], target["ra"], target["dec"], layout, sim["scale"], program=target["program"]
    )


def command_sky(args):
    sim = load_sim_config(args.sim)
    target = json.loads(args.target)
    layout = sim["layouts"][target["layout"]]
    plan = target_plan(target, sim)
    model, sources = build_sky_model(target, layout, sim)
    errors = draw_pointing_errors(target["target"], plan, sim)
    out = Path(args.out_dir)
    cfg_hash = wfutils.config_hash(sim)
    truth = {
        "target": target,
        "sky_model": model,
        "pointing_errors": errors,
        "scale": sim["scale"],
        "seed": sim["seed"],
        "effects": sim["effects"],
    }
    wfutils.write_text(json.dumps(truth, indent=1, default=float), out / "sky_truth.json")
    wfutils.write_text("\n".join(table_lines(sources_table(sources))) + "\n", out / "sky_sources.ecsv")
    rng = np.random.default_rng(zlib.crc32(f"{sim['seed']}:{target['target']}:references".encode()))
    refs = Path(args.references_dir)
    write_refcat(sources, sim, refs / f"{target['target']}_refcat.ecsv", rng, cfg_hash)
    for spec in sim["references"]["widefield"]:
        write_widefield(
            model, sources, spec, refs / f"{target['target']}_{spec['name'].lower()}.fits", rng, [], cfg_hash
        )
    log.info(
        "sky model of %s: %d compact sources, radius %.1f arcsec, %d visits",
        target["target"],
        len(sources["ra"]),
        model["radius_arcsec"],
        len(errors),
    )


def command_exposures(args):
    from astropy.table import Table

    sim = load_sim_config(args.sim)
    target = json.loads(args.target)
    truth, sources = read_sky(args.sky_dir)
    plan = target_plan(target, sim)
    wisps = {}
    for detector, filt in wisp_targets(plan, sim, args.filter):
        shape = survey_plan.detector_shape(survey_plan.channel_of(filt), sim["scale"])
        wisps[(detector, filt)] = sim["effects"]["wisps"]["amplitude_mjysr"][filt] * wisp_template(shape, detector)
        write_wisp_template(
            wisps[(detector, filt)],
            detector,
            filt,
            Path(args.wisp_dir) / wisp_file_name(detector, filt),
            [],
            wfutils.config_hash(sim),
        )
    renderer = ExposureRenderer(
        target["target"], truth["sky_model"], sources, plan, truth["pointing_errors"], sim, wisps
    )
    selected = [e for e in plan if e.filter == args.filter]
    unknown = sorted(set(args.ramps) - {e.name for e in selected})
    if unknown:
        raise wfutils.InputError(f"--ramps: {', '.join(unknown)} not among the {args.filter} exposures of the plan")
    if args.ramps and not args.ramp_dir:
        raise wfutils.InputError("--ramps needs --ramp-dir")
    cfg_hash = wfutils.config_hash(sim)
    inputs = [str(Path(args.sky_dir) / "sky_truth.json")]
    rows = []
    for i, exp in enumerate(selected, start=1):
        if exp.name in args.ramps:
            model, ramp, truth_arrays, scalars = renderer.render_ramp(exp)
            simulate_ramps.write_ramp(ramp, args.ramp_dir, exp.name, model, cfg_hash, args.truth_dir, inputs)
        else:
            model, truth_arrays, scalars = renderer.render(exp)
            cal = Path(args.out_dir) / f"{exp.name}_cal.fits"
            wfutils.save_model(model, cal, inputs, cfg_hash, "simulate_exposures")
        write_truth_arrays(truth_arrays, Path(args.truth_dir) / f"{exp.name}_truth.fits", exp, inputs, cfg_hash)
        rows.append(scalars)
        kind = "ramp" if exp.name in args.ramps else "cal"
        log.info("rendered %d/%d %s (%s, %s, %s)", i, len(selected), exp.name, exp.filter, exp.role, kind)
    table = Table(rows=[[r.get(k, np.nan) for k in TRUTH_COLUMNS] for r in rows], names=TRUTH_COLUMNS)
    wfutils.write_text("\n".join(table_lines(table)) + "\n", args.truth_table)


# program number of the simulated previous program (its exposures: history for the persistence step)
PREVIOUS_PROGRAM = 99999
HISTORY_CARDS = [("HISTONLY", True, "preceding program: persistence history, not science")]


def history_file_name(detector: str) -> str:
    """File of the previous program's exposure on ``detector`` (``history`` command)."""
    return f"preceding_{detector.lower()}_cal.fits"


def command_history(args):
    """The previous program's exposure on each NIRCam detector of the plan (``effects.persistence``:
    ``previous_program_blobs``) -> ``<out-dir>/preceding_<detector>_cal.fits``."""
    sim = load_sim_config(args.sim)
    target = json.loads(args.target)
    truth, sources = read_sky(args.sky_dir)
    plan = target_plan(target, sim)
    renderer = ExposureRenderer(target["target"], truth["sky_model"], sources, plan, truth["pointing_errors"], sim, {})
    detectors = sorted({e.detector for e in plan if e.instrument == "NIRCAM"})
    cfg_hash = wfutils.config_hash(sim)
    for detector in detectors:
        model, exp = renderer.previous_program_exposure(detector)
        path = Path(args.out_dir) / history_file_name(detector)
        wfutils.save_model(model, path, [str(Path(args.sky_dir) / "sky_truth.json")], cfg_hash, "simulate_history",
                           HISTORY_CARDS)  # fmt: skip
        n_saturated = int((model.data > 0).sum())
        log.info("previous program on %s: %s, %d saturated pixels", detector, path.name, n_saturated)


TRUTH_COLUMNS = [
    "exposure",
    "filter",
    "detector",
    "visit_id",
    "background_mjysr",
    "offset_mjysr",
    "lyot_offset_mjysr",
    "wisp_scale",
    "persistence_pixels",
    "snowballs",
]


def command_calibrate(args):
    """Rate images (``<name>_rate.fits``, from simulated ramps) -> ``<out-dir>/<name>_cal.fits``."""
    from stdatamodels.jwst import datamodels

    sim = load_sim_config(args.sim)
    for path in args.rates:
        with datamodels.ImageModel(path) as rate:
            model = calibrate_rate(rate, sim)
        out = Path(args.out_dir) / f"{Path(path).name.removesuffix('_rate.fits')}_cal.fits"
        wfutils.save_model(model, out, [path], wfutils.config_hash(sim), "simulate_stage2")
        log.info("calibrated %s -> %s", Path(path).name, out.name)


def command_truth_mosaic(args):
    from astropy.io import fits

    sim = load_sim_config(args.sim)
    truth, sources = read_sky(args.sky_dir)
    grid = json.loads(Path(args.grid).read_text())
    spec = grid["filters"][args.filter]
    shape = tuple(spec["shape"])
    wcs = celestial_wcs(grid["crval"][0], grid["crval"][1], spec["pixel_scale"], shape, crpix=spec["crpix"])
    psf = psf_components(args.filter, sim["psf"])
    image = render_sky(
        truth["sky_model"],
        sources,
        args.filter,
        psf,
        shape,
        spec["pixel_scale"],
        wcs.pixel_to_world_values,
        wcs.world_to_pixel_values,
    )
    header = wcs.to_header()
    header["BUNIT"] = "MJy/sr"
    header["FILTER"] = args.filter
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image.astype(np.float32), header, name="SCI")])
    wfutils.write_hdulist(
        hdul,
        args.out,
        [args.grid, str(Path(args.sky_dir) / "sky_truth.json")],
        wfutils.config_hash(sim),
        "simulate_truth_mosaic",
    )
    log.info("truth mosaic %s %s: shape %s", truth["target"]["target"], args.filter, shape)


def command_truth_table(args):
    from astropy.table import Table, vstack

    tables = [Table.read(p, format="ascii.ecsv") for p in args.tables]
    merged = vstack(tables) if tables else Table(names=TRUTH_COLUMNS)
    merged.sort("exposure")
    wfutils.write_text("\n".join(table_lines(merged)) + "\n", args.out)


def simulate_target(root, sim: dict, target: dict, filters, log_file=None, reuse: bool = False) -> None:
    """Sky, references and the exposures of ``filters`` for one target under ``root``.

    Layout: ``truth/`` (sky truth, per-filter truth tables ``<band>.ecsv``), ``truth/exp/``
    (per-exposure truth), ``refs/`` (references, ``refs/wisps/``), ``cal/`` (exposures), ``history/``
    (the previous program's exposures, ``command_history``).
    The same calls as the Snakemake rules, for tests and benchmarks. With ``reuse`` the sky and
    every band whose truth table exists already are kept (benchmarks rerun in one directory).
    """
    root = Path(root)
    log = ["--log", str(log_file)] if log_file else []
    common = ["--sim", json.dumps(sim), "--target", json.dumps(target)]
    if not (reuse and (root / "truth" / "sky_truth.json").exists()):
        main([*log, "sky", *common, "--out-dir", str(root / "truth"), "--references-dir", str(root / "refs")])
    persistence = sim["effects"]["persistence"]
    if persistence["enabled"] and persistence["previous_program_blobs"] and not (reuse and (root / "history").is_dir()):
        main([*log, "history", *common, "--sky-dir", str(root / "truth"), "--out-dir", str(root / "history")])
    for band in filters:
        if reuse and (root / "truth" / f"{band}.ecsv").exists():
            continue
        main(
            [
                *log,
                "exposures",
                *common,
                "--filter",
                band,
                "--sky-dir",
                str(root / "truth"),
                "--out-dir",
                str(root / "cal"),
                "--truth-dir",
                str(root / "truth" / "exp"),
                "--wisp-dir",
                str(root / "refs" / "wisps"),
                "--truth-table",
                str(root / "truth" / f"{band}.ecsv"),
            ]
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="log file (default: stderr)")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sim", required=True, help="simulation config: JSON string or workflow config YAML")
    common.add_argument("--target", help="target row as JSON: target, ra, dec, layout, program, distance_mpc")
    p = sub.add_parser("sky", parents=[common], help="sky model, pointing errors, references")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--references-dir", required=True)
    p = sub.add_parser("exposures", parents=[common], help="render all exposures of one filter")
    p.add_argument("--filter", required=True)
    p.add_argument("--sky-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--truth-table", required=True)
    p.add_argument("--wisp-dir", required=True, help="where the wisp templates of this filter go")
    p.add_argument("--ramps", nargs="*", default=[], help="exposures written as ramps instead of cal files")
    p.add_argument("--ramp-dir", help="where the ramps and their gain and read-noise files go")
    p = sub.add_parser("history", parents=[common], help="previous program's exposures (persistence history)")
    p.add_argument("--sky-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p = sub.add_parser("calibrate", parents=[common], help="simulated Stage 2: rate (DN/s) -> cal (MJy/sr)")
    p.add_argument("rates", nargs="+", help="rate images <name>_rate.fits")
    p.add_argument("--out-dir", required=True)
    p = sub.add_parser("truth-mosaic", parents=[common], help="noiseless sky on a mosaic grid")
    p.add_argument("--filter", required=True)
    p.add_argument("--sky-dir", required=True)
    p.add_argument("--grid", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("truth-table", help="merge the per-filter truth tables of a target")
    p.add_argument("tables", nargs="+")
    p.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    wfutils.setup_logging(args.log)
    commands = {
        "sky": command_sky,
        "exposures": command_exposures,
        "history": command_history,
        "calibrate": command_calibrate,
        "truth-mosaic": command_truth_mosaic,
        "truth-table": command_truth_table,
    }
    commands[args.command](args)


if __name__ == "__main__":
    wfutils.run_cli(main)
