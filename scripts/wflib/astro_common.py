"""Point-source catalogues, catalogue matching and sky-frame WCS corrections for the astrometry steps.

Shared by ``align_relative.py`` (one shift per visit, PHANGS-JWST Sec. 3.3) and
``align_absolute.py`` (two-step match to an external catalogue on the mosaic and
"tweakback" to the exposures, PHANGS-JWST Sec. 3.8). Three layers:

* pure functions on numpy arrays: gnomonic tangent plane, a batched fit of a
  pixel-integrated Gaussian (PSF-fitted centroids and sizes), friends-of-friends
  merging, catalogue matching (``tweakwcs.XYXYMatch``) and linear fits
  (``tweakwcs.iter_linear_fit``), the :class:`SkyCorrection` model;
* detection on an image (photutils ``Background2D`` + ``DAOStarFinder``, then the fit;
  extended sources are rejected by their fitted FWHM);
* datamodel I/O: catalogue an exposure or a mosaic through its header WCS, and apply a
  sky correction to an exposure's gwcs (``tweakwcs.JWSTWCSCorrector``) or to a mosaic's
  gwcs (pixel affine), each verified numerically, then refresh the FITS SIP
  approximation and ``S_REGION``.

Tangent-plane coordinates are (xi, eta) in arcsec, xi towards east and eta towards
north; rotation angles are counted from east towards north.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

from wflib import wfutils

log = logging.getLogger("astro_common")

TELESCOPE_DIAMETER_M = 6.5
MIN_FWHM_ARCSEC = 0.03
RA_COLUMNS = ("ra", "raj2000", "ra_icrs", "ra_deg", "alpha_j2000", "x_world")
DEC_COLUMNS = ("dec", "dej2000", "decj2000", "dec_icrs", "dec_deg", "delta_j2000", "y_world")

# Default detection parameters; scripts overlay the config section (``--params``).
DETECTION_DEFAULTS = {
    "snr_min": 10.0,  # peak detection threshold and minimum fitted S/N
    "background_box_arcsec": 2.0,  # Background2D mesh (removes galaxy light)
    "max_fwhm_ratio": 1.4,  # point-like: fitted FWHM <= ratio x PSF FWHM (after pixel/drizzle broadening)
    "min_fwhm_ratio": 0.6,  # rejects hot pixels and cosmic rays
    "sharpness_range": [0.2, 1.0],  # DAOStarFinder
    "roundness_range": [-0.6, 0.6],  # DAOStarFinder
    "max_sources": 3000,  # brightest kept per image
    "fwhm_arcsec": None,  # override the diffraction estimate of the PSF FWHM
}


# --------------------------------------------------------------------------- small helpers
def merged_params(defaults: dict, *overrides: dict | None) -> dict:
    """``defaults`` updated with each override in turn (None values in an override are ignored)."""
    out = dict(defaults)
    for extra in overrides:
        for key, value in (extra or {}).items():
            if value is not None:
                out[key] = value
    return out


INSTRUMENTS = ("NIRCAM", "MIRI", "NIRISS", "NIRSPEC", "FGS")


def deep_update(base: dict, extra: dict | None) -> dict:
    """Copy of ``base`` with ``extra`` merged in, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _per_instrument(value):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _per_instrument(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(str(k).upper() in INSTRUMENTS for k in value)


def layered_params(defaults: dict, params: dict | None, instrument: str) -> dict:
    """Method parameters for one instrument, most specific last:

    script defaults < their ``per_instrument.<INSTRUMENT>`` < config section (``params``) < its
    ``per_instrument.<INSTRUMENT>``. A value written per instrument (``{NIRCAM: 10.0, MIRI: 20.0}``)
    resolves to this instrument's entry; a missing entry is an error naming the parameter.
    Unknown keys are logged and ignored.
    """
    params = dict(params or {})
    known = set(defaults) | {"enabled", "instruments", "anchor_on", "refcat_from"}  # rule-level keys
    unknown = sorted(set(params) - known)
    if unknown:
        log.warning("ignoring unknown parameter(s) %s (known: %s)", ", ".join(unknown), ", ".join(sorted(defaults)))
    base = {k: v for k, v in defaults.items() if k != "per_instrument"}
    merged = deep_update(base, (defaults.get("per_instrument") or {}).get(instrument))
    merged = deep_update(merged, {k: v for k, v in params.items() if k != "per_instrument"})
    merged = deep_update(merged, (params.get("per_instrument") or {}).get(instrument))

    def resolve(value, name):
        if _per_instrument(value):
            table = {str(k).upper(): v for k, v in value.items()}
            if instrument not in table:
                raise wfutils.InputError(f"parameter {name} has no value for {instrument} ({value})")
            return resolve(table[instrument], name)
        if isinstance(value, dict):
            return {k: resolve(v, f"{name}.{k}") for k, v in value.items()}
        return value

    return {k: resolve(v, k) for k, v in merged.items()}


def band_wavelength_um(filter_name: str) -> float:
    """Pivot wavelength (micron) from the JWST filter name: F200W -> 2.0, F1130W -> 11.3."""
    match = re.fullmatch(r"F(\d{3,4})[WMN]2?", filter_name.upper())
    if not match:
        raise wfutils.InputError(f"{filter_name!r} is not a JWST imaging filter name")
    return int(match.group(1)) / 100.0


def psf_fwhm_arcsec(filter_name: str) -> float:
    """PSF core FWHM: 1.03 lambda/D for the 6.5 m aperture (JWST imaging PSFs are near-diffraction limited).

    Within 3% of the published NIRCam and MIRI FWHM from F200W (0.065") to F2100W (0.67"); the
    shortest bands are sampling-limited, hence the floor.
    """
    lam = band_wavelength_um(filter_name) * 1e-6
    return max(1.03 * lam / TELESCOPE_DIAMETER_M * 206264.806, MIN_FWHM_ARCSEC)


def instrument_of_filter(filter_name: str) -> str:
    from wflib import survey_plan

    try:
        return survey_plan.instrument_of(filter_name)
    except ValueError as exc:
        raise wfutils.InputError(str(exc)) from None


def robust_mean(values, n_sigma: float = 3.0, iters: int = 5) -> tuple[float, float, int]:
    """Sigma-clipped (mean, std, n kept) of a 1-D array."""
    values = np.asarray(values, float)
    keep = np.isfinite(values)
    for _ in range(iters):
        if keep.sum() < 3:
            break
        mean, std = values[keep].mean(), values[keep].std()
        new = keep & (np.abs(values - mean) <= n_sigma * max(std, 1e-12))
        if new.sum() == keep.sum():
            break
        keep = new
    if not keep.any():
        return math.nan, math.nan, 0
    return float(values[keep].mean()), float(values[keep].std()), int(keep.sum())


# --------------------------------------------------------------------------- tangent plane
def to_tangent(ra, dec, ra0: float, dec0: float):
    """Gnomonic (xi east, eta north) offsets in arcsec of (ra, dec) from the tangent point, degrees in."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def from_tangent(xi, eta, ra0: float, dec0: float):
    """Inverse gnomonic projection: (xi, eta) arcsec -> (ra, dec) degrees."""
    xi = np.radians(np.asarray(xi, float) / 3600.0)
    eta = np.radians(np.asarray(eta, float) / 3600.0)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def mean_sky_position(ra, dec) -> tuple[float, float]:
    """Mean direction of a set of sky positions (degrees), safe across RA = 0."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).sum(axis=1)
    return math.degrees(math.atan2(v[1], v[0])) % 360.0, math.degrees(math.asin(v[2] / np.linalg.norm(v)))


@dataclass
class SkyCorrection:
    """A sky-frame correction: an affine map in the tangent plane at (ra0, dec0).

    ``p' = matrix @ (p - center) + center + shift`` with p = (xi, eta) in arcsec. Small rotations
    and shifts of the sky (pointing errors) are represented to better than 1e-6 arcsec over a
    few arcminutes.
    """

    ra0: float
    dec0: float
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    center: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, float).reshape(2, 2)
        self.shift = np.asarray(self.shift, float).reshape(2)
        self.center = np.asarray(self.center, float).reshape(2)

    @classmethod
    def translation(cls, ra0, dec0, east_arcsec, north_arcsec):
        return cls(ra0, dec0, np.eye(2), [east_arcsec, north_arcsec], [0.0, 0.0])

    @classmethod
    def rotation_shift(cls, ra0, dec0, rotation_deg, shift, center):
        t = math.radians(rotation_deg)
        return cls(ra0, dec0, [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], shift, center)

    @property
    def rotation_deg(self) -> float:
        """Rotation angle (degrees, east towards north) of the matrix."""
        return math.degrees(math.atan2(self.matrix[1, 0] - self.matrix[0, 1], self.matrix[0, 0] + self.matrix[1, 1]))

    @property
    def scale(self) -> float:
        return math.sqrt(abs(np.linalg.det(self.matrix)))

    def apply_tangent(self, xi, eta):
        p = np.stack([np.asarray(xi, float), np.asarray(eta, float)], axis=-1)
        q = (p - self.center) @ self.matrix.T + self.center + self.shift
        return q[..., 0], q[..., 1]

    def apply(self, ra, dec):
        """Corrected (ra, dec) in degrees."""
        xi, eta = to_tangent(ra, dec, self.ra0, self.dec0)
        return from_tangent(*self.apply_tangent(xi, eta), self.ra0, self.dec0)

    def offset_at(self, ra, dec):
        """(east, north) arcsec displacement the correction applies at (ra, dec)."""
        xi, eta = to_tangent(ra, dec, self.ra0, self.dec0)
        x2, y2 = self.apply_tangent(xi, eta)
        return x2 - xi, y2 - eta

    def as_dict(self) -> dict:
        return {
            "ra0": self.ra0,
            "dec0": self.dec0,
            "matrix": self.matrix.tolist(),
            "shift_arcsec": self.shift.tolist(),
            "center_arcsec": self.center.tolist(),
            "rotation_deg": self.rotation_deg,
            "scale": self.scale,
        }


# --------------------------------------------------------------------------- PSF-fitted centroids
def _integrated_gaussian(u, sigma):
    """Pixel-integrated unit Gaussian and its derivatives w.r.t. the centre and sigma.

    ``u`` = pixel centre minus source centre (pixels). Returns (g, dg/dcentre, dg/dsigma).
    """
    from scipy.special import erf

    s = sigma[..., None]
    a, b = u + 0.5, u - 0.5
    root2s = math.sqrt(2.0) * s
    g = 0.5 * (erf(a / root2s) - erf(b / root2s))
    pa = np.exp(-0.5 * (a / s) ** 2) / (math.sqrt(2 * math.pi) * s)
    pb = np.exp(-0.5 * (b / s) ** 2) / (math.sqrt(2 * math.pi) * s)
    return g, -(pa - pb), -(a * pa - b * pb) / s


def fit_gaussian_prf(image, weight, x0, y0, fwhm0, half_size: int, n_iter: int = 30) -> dict:
    """Batched Levenberg-Marquardt fit of a pixel-integrated circular Gaussian plus a constant.

    PSF-fitted centroids (PHANGS-JWST Sec. 4.3.2 recommends PSF fitting over moments): the
    model integrated over each pixel is unbiased for undersampled cores, and the fitted FWHM
    separates point sources from extended ones. ``image`` and ``weight`` (1/variance, 0 for bad
    pixels) are 2-D; (x0, y0) first guesses in pixels (0-based, pixel centres at integers).
    Returns arrays x, y, fwhm, flux, background, flux_err, chi2 (reduced), ok.
    """
    x0, y0 = np.asarray(x0, float), np.asarray(y0, float)
    n = x0.size
    ny, nx = image.shape
    k = 2 * half_size + 1
    offs = np.arange(-half_size, half_size + 1)
    ix, iy = np.round(x0).astype(int), np.round(y0).astype(int)
    xs = ix[:, None] + offs[None, :]
    ys = iy[:, None] + offs[None, :]
    inside = (xs[:, None, :] >= 0) & (xs[:, None, :] < nx) & (ys[:, :, None] >= 0) & (ys[:, :, None] < ny)
    cx, cy = np.clip(xs, 0, nx - 1), np.clip(ys, 0, ny - 1)
    data = image[cy[:, :, None], cx[:, None, :]]
    w = np.where(inside, weight[cy[:, :, None], cx[:, None, :]], 0.0)
    w = np.where(np.isfinite(data) & np.isfinite(w), w, 0.0)
    data = np.where(w > 0, data, 0.0)
    data, w = data.reshape(n, k * k), w.reshape(n, k * k)
    gx_pix = np.broadcast_to(xs[:, None, :], (n, k, k)).reshape(n, k * k).astype(float)
    gy_pix = np.broadcast_to(ys[:, :, None], (n, k, k)).reshape(n, k * k).astype(float)

    sigma0 = np.full(n, fwhm0 / 2.3548) if np.ndim(fwhm0) == 0 else np.asarray(fwhm0, float) / 2.3548
    edge = np.minimum(data[:, :k].mean(axis=1), data[:, -k:].mean(axis=1)) if k > 2 else np.zeros(n)
    p = np.stack([x0, y0, sigma0, np.clip(data.sum(axis=1) - edge * k * k, 1e-30, None), edge], axis=1)

    def model_and_jacobian(par):
        gx, dgx, sgx = _integrated_gaussian(gx_pix - par[:, 0:1], par[:, 2])
        gy, dgy, sgy = _integrated_gaussian(gy_pix - par[:, 1:2], par[:, 2])
        flux = par[:, 3:4]
        model = flux * gx * gy + par[:, 4:5]
        jac = np.stack([flux * dgx * gy, flux * gx * dgy, flux * (sgx * gy + gx * sgy), gx * gy, np.ones_like(gx)], -1)
        return model, jac

    def chi2_of(par):
        model, _ = model_and_jacobian(par)
        return (w * (data - model) ** 2).sum(axis=1)

    lam = np.full(n, 1e-3)
    chi2 = chi2_of(p)
    for _ in range(n_iter):
        model, jac = model_and_jacobian(p)
        r = data - model
        jw = jac * w[..., None]
        a = np.einsum("npi,npj->nij", jw, jac)
        g = np.einsum("npi,np->ni", jw, r)
        diag = np.einsum("nii->ni", a)
        a_damped = a + lam[:, None, None] * np.einsum("ni,ij->nij", diag + 1e-12, np.eye(5))
        try:
            step = np.linalg.solve(a_damped, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.array([np.linalg.lstsq(m, v, rcond=None)[0] for m, v in zip(a_damped, g, strict=True)])
        trial = p + step
        trial[:, 2] = np.clip(trial[:, 2], 0.2, 4.0 * half_size)
        trial[:, 0] = np.clip(trial[:, 0], ix - half_size, ix + half_size)
        trial[:, 1] = np.clip(trial[:, 1], iy - half_size, iy + half_size)
        new_chi2 = chi2_of(trial)
        better = np.isfinite(new_chi2) & (new_chi2 <= chi2)
        p = np.where(better[:, None], trial, p)
        chi2 = np.where(better, new_chi2, chi2)
        lam = np.where(better, lam * 0.3, lam * 10.0)
        if np.all(lam > 1e8):
            break
    _, jac = model_and_jacobian(p)
    a = np.einsum("npi,npj->nij", jac * w[..., None], jac)
    with np.errstate(invalid="ignore", divide="ignore"):
        try:
            cov = np.linalg.inv(a)
            flux_err = np.sqrt(np.abs(cov[:, 3, 3]))
            pos_err = np.sqrt(np.abs(cov[:, 0, 0] + cov[:, 1, 1]))
        except np.linalg.LinAlgError:
            flux_err = np.full(n, np.nan)
            pos_err = np.full(n, np.nan)
        dof = np.maximum((w > 0).sum(axis=1) - 5, 1)
        red_chi2 = chi2 / dof
    ok = (
        np.isfinite(p).all(axis=1)
        & (np.abs(p[:, 0] - ix) < half_size)
        & (np.abs(p[:, 1] - iy) < half_size)
        & ((w > 0).sum(axis=1) >= 0.6 * k * k)
        & (p[:, 3] > 0)
    )
    return {
        "x": p[:, 0],
        "y": p[:, 1],
        "fwhm": 2.3548 * p[:, 2],
        "flux": p[:, 3],
        "background": p[:, 4],
        "flux_err": flux_err,
        "pos_err": pos_err,
        "chi2": red_chi2,
        "ok": ok,
    }


def find_sources(data, err, bad, fwhm_pix: float, params: dict):
    """Detect compact sources and fit their centroids and sizes (pixels, 0-based).

    Background2D removes the smooth galaxy light; DAOStarFinder (threshold ``snr_min`` times the
    median error, sharpness and roundness ranges) finds peaks; :func:`fit_gaussian_prf` measures
    each one. Returns an astropy Table (x, y, flux, snr, fwhm_pix, point_like) sorted by flux,
    all fitted sources (extended ones flagged ``point_like = False``).
    """
    from astropy.table import Table
    from photutils.background import Background2D, MedianBackground
    from photutils.detection import DAOStarFinder

    params = merged_params(DETECTION_DEFAULTS, params)
    data = np.asarray(data, float)
    bad = np.asarray(bad, bool) | ~np.isfinite(data)
    err = np.asarray(err, float)
    bad |= ~np.isfinite(err) | (err <= 0)
    empty = Table(names=("x", "y", "flux", "snr", "fwhm_pix", "pos_err_pix", "point_like"), dtype=[float] * 6 + [bool])
    if bad.all():
        return empty
    ny, nx = data.shape
    box = int(
        np.clip(round(params["background_box_arcsec"] / params["pixel_scale_arcsec"]), 8, max(8, min(ny, nx) // 2))
    )
    box = max(box, int(4 * fwhm_pix))
    filled = np.where(bad, np.nanmedian(data[~bad]), data)
    try:
        bkg = Background2D(filled, box, mask=bad, bkg_estimator=MedianBackground(), exclude_percentile=50.0)
        background = bkg.background
    except ValueError:  # too few unmasked pixels for a mesh: a constant level
        background = np.full_like(data, np.nanmedian(data[~bad]))
    image = np.where(bad, 0.0, data - background)
    noise = float(np.median(err[~bad]))
    finder = DAOStarFinder(
        params["snr_min"] * noise,
        max(fwhm_pix, 1.0),
        exclude_border=True,
        sharpness_range=tuple(params["sharpness_range"]),
        roundness_range=tuple(params["roundness_range"]),
        n_brightest=int(params["max_sources"]),
    )
    peaks = finder(image, mask=bad)
    if peaks is None or len(peaks) == 0:
        return empty
    half = int(max(2, math.ceil(1.5 * fwhm_pix)))
    weight = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, err) ** 2)
    fit = fit_gaussian_prf(image, weight, peaks["x_centroid"], peaks["y_centroid"], fwhm_pix, half)
    snr = fit["flux"] / fit["flux_err"]
    good = (
        fit["ok"] & np.isfinite(snr) & (snr >= params["snr_min"]) & (fit["fwhm"] >= params["min_fwhm_ratio"] * fwhm_pix)
    )
    point = good & (fit["fwhm"] <= params["max_fwhm_ratio"] * fwhm_pix)
    table = Table(
        {
            "x": fit["x"][good],
            "y": fit["y"][good],
            "flux": fit["flux"][good],
            "snr": snr[good],
            "fwhm_pix": fit["fwhm"][good],
            "pos_err_pix": fit["pos_err"][good],
            "point_like": point[good],
        }
    )
    table.sort("flux", reverse=True)
    return table


# --------------------------------------------------------------------------- datamodel I/O
def open_model(path):
    """Open an imaging datamodel (exposure or mosaic) with a clear error for anything else."""
    from stdatamodels.jwst import datamodels

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    try:
        model = datamodels.open(str(path))
    except Exception as exc:  # stdatamodels raises many types for foreign files
        raise wfutils.InputError(f"{path}: not a JWST datamodel ({type(exc).__name__}: {exc})") from exc
    if model.meta.wcs is None or model.data.ndim != 2:
        raise wfutils.InputError(f"{path}: not a 2-D image with a gwcs (meta.wcs)")
    if not model.meta.instrument.filter:
        raise wfutils.InputError(f"{path}: header has no FILTER")
    return model


def is_mosaic(model) -> bool:
    """A drizzled product (no V2/V3 frame in its gwcs) rather than a detector exposure."""
    return "v2v3" not in model.meta.wcs.available_frames


def visit_key(model) -> str:
    """Visit id (program + observation + visit): all exposures of a visit share a guide star."""
    obs = model.meta.observation
    if obs.visit_id:
        return str(obs.visit_id)
    if not (obs.program_number and obs.observation_number and obs.visit_number):
        raise wfutils.InputError(f"{model.meta.filename}: no program/observation/visit numbers in the header")
    return f"{int(obs.program_number):05d}{int(obs.observation_number):03d}{int(obs.visit_number):03d}"


def exposure_key(model) -> str:
    """One exposure (all detectors read out together): visit + visit group, sequence, activity, number."""
    obs = model.meta.observation
    return (
        f"{visit_key(model)}_{int(obs.visit_group or 0):02d}{int(obs.sequence_id or 0):1d}"
        f"{int(obs.activity_id or 0):02d}_{int(obs.exposure_number or 0):05d}"
    )


def pixel_scale_arcsec(model) -> float:
    """Pixel scale (arcsec) at the image centre from the gwcs."""
    ny, nx = model.data.shape
    x, y = np.array([nx / 2, nx / 2 + 1, nx / 2]), np.array([ny / 2, ny / 2, ny / 2 + 1])
    ra, dec = model.meta.wcs(x, y, with_bounding_box=False)
    xi, eta = to_tangent(ra, dec, ra[0], dec[0])
    return float(math.sqrt(abs((xi[1] - xi[0]) * (eta[2] - eta[0]) - (xi[2] - xi[0]) * (eta[1] - eta[0]))))


def usable_mask(model):
    """Pixels to ignore: NaN, DO_NOT_USE, or (mosaics) zero weight."""
    bad = ~np.isfinite(model.data)
    if model.hasattr("dq") and model.dq is not None and model.dq.shape == model.data.shape and model.dq.any():
        bad |= (model.dq & 1) > 0
    if model.hasattr("wht") and model.wht is not None and model.wht.shape == model.data.shape and model.wht.any():
        bad |= ~(model.wht > 0)
    return bad


def catalog_model(model, params: dict | None = None, fwhm_arcsec: float | None = None):
    """Sources of one image with their header-WCS sky positions (columns ra, dec added)."""
    params = merged_params(DETECTION_DEFAULTS, params)
    filt = model.meta.instrument.filter
    scale = pixel_scale_arcsec(model)
    fwhm = fwhm_arcsec or params.get("fwhm_arcsec") or psf_fwhm_arcsec(filt)
    # drizzled images: the PSF is broadened by the output pixel; an undersampled core still spans ~1.2 pixels
    fwhm_pix = math.hypot(fwhm / scale, 1.0 if is_mosaic(model) else 0.0)
    fwhm_pix = max(fwhm_pix, 1.2)
    err = model.err if model.hasattr("err") and model.err is not None and model.err.shape == model.data.shape else None
    if err is None or not np.isfinite(err).any() or not (err > 0).any():
        raise wfutils.InputError(f"{model.meta.filename}: no usable ERR array for source detection")
    table = find_sources(model.data, err, usable_mask(model), fwhm_pix, {**params, "pixel_scale_arcsec": scale})
    if len(table):
        ra, dec = model.meta.wcs(table["x"], table["y"], with_bounding_box=False)
        table["ra"], table["dec"] = ra, dec
    else:
        table["ra"], table["dec"] = np.zeros(0), np.zeros(0)
    table["fwhm_arcsec"] = table["fwhm_pix"] * scale
    table["pos_err_mas"] = table["pos_err_pix"] * scale * 1e3
    table.meta.update({"filter": filt, "pixel_scale": scale, "psf_fwhm_pix": fwhm_pix, "file": model.meta.filename})
    return table


def footprint(model) -> np.ndarray:
    """(4, 2) sky corners (ra, dec) of an image from its gwcs (bounding box or full array)."""
    ny, nx = model.data.shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = model.meta.wcs(x, y, with_bounding_box=False)
    return np.stack([ra, dec], axis=1)


def inside_footprints(xi, eta, polygons_tp, margin: float = 0.0) -> np.ndarray:
    """Boolean: (xi, eta) inside any of the tangent-plane polygons (each (N, 2)), grown by ``margin``."""
    from matplotlib.path import Path as MplPath

    xi, eta = np.asarray(xi, float), np.asarray(eta, float)
    inside = np.zeros(xi.shape, bool)
    pts = np.stack([xi, eta], axis=1)
    for poly in polygons_tp:
        path = MplPath(poly)
        # matplotlib's radius grows the path for counter-clockwise polygons and shrinks it for clockwise ones
        signed = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
        inside |= path.contains_points(pts, radius=margin if signed > 0 else -margin)
    return inside


# --------------------------------------------------------------------------- WCS corrections
def _sample_pixels(shape, n: int = 9):
    ny, nx = shape
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, n), np.linspace(0, nx - 1, n), indexing="ij")
    return xx.ravel(), yy.ravel()


def _sky_distance_arcsec(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1)))) * 3600.0


def _fit_affine(src, dst):
    """Least-squares 2-D affine dst = M @ src + t; returns (M, t, max residual)."""
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    resid = dst - design @ coef
    return coef[:2].T, coef[2], float(np.max(np.hypot(resid[:, 0], resid[:, 1])))


def correct_exposure_wcs(model, correction: SkyCorrection, tolerance_arcsec: float = 1e-5) -> float:
    """Apply a sky correction to a detector exposure's gwcs through ``tweakwcs.JWSTWCSCorrector``.

    The correction (defined in any tangent plane) is re-expressed as an affine map in the
    exposure's own V2/V3 tangent plane by sampling the detector and fitting; the corrected gwcs
    is then compared with ``correction`` applied to the old one on the same pixels. Returns the
    worst deviation (arcsec); raises if it exceeds ``tolerance_arcsec``.
    """
    from tweakwcs.correctors import JWSTWCSCorrector

    x, y = _sample_pixels(model.data.shape)
    ra, dec = model.meta.wcs(x, y, with_bounding_box=False)
    ra_t, dec_t = correction.apply(ra, dec)
    wcs = model.meta.wcs
    info = model.meta.wcsinfo
    for _ in range(3):
        corrector = JWSTWCSCorrector(wcs, {"v2_ref": info.v2_ref, "v3_ref": info.v3_ref, "roll_ref": info.roll_ref})
        tp_now = np.column_stack(corrector.det_to_tanp(x, y))
        tp_target = np.column_stack(corrector.world_to_tanp(ra_t, dec_t))
        matrix, shift, _ = _fit_affine(tp_now, tp_target)
        corrector.set_correction(matrix=matrix, shift=shift)
        wcs = corrector.wcs
        ra_c, dec_c = wcs(x, y, with_bounding_box=False)
        worst = float(np.max(_sky_distance_arcsec(ra_c, dec_c, ra_t, dec_t)))
        if worst <= tolerance_arcsec:
            break
    if worst > tolerance_arcsec:
        raise wfutils.InputError(
            f"{model.meta.filename}: corrected WCS deviates by {worst * 1e3:.3f} mas from the requested correction"
        )
    wcs.bounding_box = model.meta.wcs.bounding_box
    model.meta.wcs = wcs
    _refresh_fits_wcs(model)
    return worst


def correct_mosaic_wcs(model, correction: SkyCorrection, tolerance_arcsec: float = 1e-5) -> float:
    """Apply a sky correction to a drizzled mosaic: a pixel-space affine prepended to its gwcs.

    Exact for a TAN grid up to second-order terms (< 1e-7 arcsec here), verified on sample pixels.
    """
    import gwcs
    from astropy.modeling.models import AffineTransformation2D

    old = model.meta.wcs
    x, y = _sample_pixels(model.data.shape)
    ra, dec = old(x, y, with_bounding_box=False)
    ra_t, dec_t = correction.apply(ra, dec)
    xp, yp = old.invert(ra_t, dec_t, with_bounding_box=False)
    matrix, shift, _ = _fit_affine(np.column_stack([x, y]), np.column_stack([xp, yp]))
    affine = AffineTransformation2D(matrix=matrix, translation=shift)
    affine.inverse = AffineTransformation2D(matrix=np.linalg.inv(matrix), translation=-np.linalg.inv(matrix) @ shift)
    new = gwcs.WCS(
        forward_transform=affine | old.forward_transform, input_frame=old.input_frame, output_frame=old.output_frame
    )
    new.bounding_box = old.bounding_box
    ra_c, dec_c = new(x, y, with_bounding_box=False)
    worst = float(np.max(_sky_distance_arcsec(ra_c, dec_c, ra_t, dec_t)))
    if worst > tolerance_arcsec:
        raise wfutils.InputError(
            f"{model.meta.filename}: corrected mosaic WCS deviates by {worst * 1e3:.3f} mas from the correction"
        )
    model.meta.wcs = new
    _refresh_fits_wcs(model)
    return worst


def _refresh_fits_wcs(model) -> None:
    """Refresh the FITS (SIP) approximation and S_REGION from the corrected gwcs, as TweakRegStep does."""
    from jwst.assign_wcs.util import update_fits_wcsinfo, update_s_region_imaging

    update_s_region_imaging(model)
    try:
        update_fits_wcsinfo(model, max_pix_error=0.001, max_inv_pix_error=0.001, npoints=16)
    except (ValueError, RuntimeError) as exc:
        raise wfutils.InputError(f"{model.meta.filename}: FITS WCS approximation failed ({exc})") from exc


# --------------------------------------------------------------------------- catalogues and matching
def merge_positions(xi, eta, member, radius: float):
    """Friends-of-friends merge of detections from several images (one source per group).

    ``member`` labels the image of each detection; groups with two detections from the same
    image (confused) are dropped. Returns (group index per detection, -1 if dropped) and the
    number of groups.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    xi, eta, member = np.asarray(xi, float), np.asarray(eta, float), np.asarray(member)
    n = xi.size
    if n == 0:
        return np.zeros(0, int), 0
    pairs = cKDTree(np.column_stack([xi, eta])).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    n_groups, labels = connected_components(graph, directed=False)
    counts = np.bincount(labels, minlength=n_groups)
    _, member_code = np.unique(member, return_inverse=True)
    pairs_unique = np.unique(labels.astype(np.int64) * (member_code.max() + 1) + member_code)
    unique_members = np.bincount(pairs_unique // (member_code.max() + 1), minlength=n_groups)
    confused = unique_members < counts
    labels = np.where(confused[labels], -1, labels)
    return labels, n_groups


def merged_catalog(table, member_column: str, radius_arcsec: float, min_count: int, ra0: float, dec0: float):
    """Average the tangent-plane positions of detections of one source in several images.

    ``table`` has ra, dec, flux, fwhm_arcsec, point_like and ``member_column``. Keeps sources seen
    in at least ``min_count`` images; returns a Table with xi, eta, ra, dec, flux, fwhm_arcsec,
    point_like (all detections point-like), n, scatter_mas.
    """
    from astropy.table import Table

    xi, eta = to_tangent(table["ra"], table["dec"], ra0, dec0)
    labels, n_groups = merge_positions(xi, eta, np.asarray(table[member_column]), radius_arcsec)
    keep = labels >= 0
    if not keep.any():
        return Table(names=("xi", "eta", "ra", "dec", "flux", "fwhm_arcsec", "point_like", "n", "scatter_mas"))
    lab = labels[keep]
    uniq, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)

    def mean_of(values):
        return np.bincount(inverse, weights=np.asarray(values, float)[keep]) / counts

    mx, my = mean_of(xi), mean_of(eta)
    scatter = np.sqrt(np.bincount(inverse, weights=(xi[keep] - mx[inverse]) ** 2 + (eta[keep] - my[inverse]) ** 2))
    scatter = scatter / np.sqrt(np.maximum(counts - 1, 1))
    point = np.bincount(inverse, weights=np.asarray(table["point_like"], float)[keep]) == counts
    ra, dec = from_tangent(mx, my, ra0, dec0)
    out = Table(
        {
            "xi": mx,
            "eta": my,
            "ra": ra,
            "dec": dec,
            "flux": mean_of(table["flux"]),
            "fwhm_arcsec": mean_of(table["fwhm_arcsec"]),
            "point_like": point,
            "n": counts,
            "scatter_mas": scatter * 1e3,
        }
    )
    out = out[out["n"] >= min_count]
    out.sort("flux", reverse=True)
    return out


def match_xy(ref_xy, img_xy, searchrad, tolerance, separation, pscale, offset=None):
    """Match two tangent-plane position lists with ``tweakwcs.XYXYMatch``, one-to-one.

    With ``offset`` None, a 2-D histogram of all pair differences within ``searchrad`` finds the
    offset first (bins of ``pscale``); otherwise ``offset`` = (image - reference) is used.
    xyxymatch pairs each entry of its reference list with the closest entry of its input list, so
    the shorter list is passed as the reference (a dense list against a sparse one would
    otherwise overflow xyxymatch's output); duplicate pairings keep the closest.
    Returns (ref indices, image indices).
    """
    from astropy.table import Table
    from tweakwcs import MatchSourceConfusionError, XYXYMatch

    ref_xy, img_xy = np.asarray(ref_xy, float).reshape(-1, 2), np.asarray(img_xy, float).reshape(-1, 2)
    none = np.zeros(0, int), np.zeros(0, int)
    if len(ref_xy) == 0 or len(img_xy) == 0:
        return none
    swap = len(ref_xy) > len(img_xy)
    a_xy, b_xy = (img_xy, ref_xy) if swap else (ref_xy, img_xy)  # a: xyxymatch reference, b: its input
    kwargs = {"searchrad": searchrad, "separation": separation, "tolerance": tolerance}
    if offset is None:
        matcher = XYXYMatch(use2dhist=True, **kwargs)
    else:
        sign = -1.0 if swap else 1.0
        matcher = XYXYMatch(use2dhist=False, xoffset=sign * float(offset[0]), yoffset=sign * float(offset[1]), **kwargs)
    a_tab = Table({"TPx": a_xy[:, 0], "TPy": a_xy[:, 1]})
    b_tab = Table({"TPx": b_xy[:, 0], "TPy": b_xy[:, 1]})
    try:
        ai, bi = matcher(a_tab, b_tab, tp_pscale=pscale, tp_units="arcsec")
    except MatchSourceConfusionError:
        return none
    ai, bi = np.asarray(ai, int), np.asarray(bi, int)
    if len(ai) == 0:
        return none
    # one-to-one: where an entry is used twice, keep the pair closest to the median offset
    d = b_xy[bi] - a_xy[ai]
    dist = np.hypot(*(d - np.median(d, axis=0)).T)
    order = np.argsort(dist)
    ai, bi = ai[order], bi[order]
    _, first_a = np.unique(ai, return_index=True)
    keep = np.zeros(len(ai), bool)
    keep[first_a] = True
    _, first_b = np.unique(np.where(keep, bi, -1 - np.arange(len(bi))), return_index=True)
    keep2 = np.zeros(len(ai), bool)
    keep2[first_b] = True
    keep &= keep2
    ai, bi = ai[keep], bi[keep]
    return (bi, ai) if swap else (ai, bi)


def apply_fit(fit: dict, xy):
    """Positions (N, 2) moved by a ``tweakwcs.iter_linear_fit`` result: F (xy - c) + s + c."""
    xy = np.asarray(xy, float)
    c = np.asarray(fit["center"], float)
    return (xy - c) @ np.asarray(fit["matrix"], float).T + np.asarray(fit["shift"], float) + c


def two_step_match(
    ref_xy, img_xy, wide: dict, strict: dict, pscale: float, fitgeom: str = "rshift", min_matches: int = 3
) -> dict:
    """Wide 2-D-histogram search fitting a shift, then strict matching fitting ``fitgeom``.

    PHANGS-JWST Sec. 3.8: a wide search area with a loose tolerance and a shift-only fit finds
    the offset (up to arcseconds); the image positions moved by it are matched again with a
    small search radius and strict tolerance and fitted allowing rotation, then re-matched with
    each of the ``refine_tolerances`` on the moved positions. ``wide``/``strict`` hold searchrad,
    tolerance, separation (arcsec), nclip, sigma; ``strict`` also refine_tolerances. The fit maps
    original image positions onto the reference: ``ref ~ F (img - c) + c + s``. Returns a dict
    with ``ok``, ``fit``, matched indices ``ref_idx``/``img_idx`` (clipped ones removed),
    ``n_wide``, ``n_strict``, ``wide_offset`` (image minus reference) and ``reason`` on failure.
    """
    from tweakwcs import iter_linear_fit

    ref_xy, img_xy = np.asarray(ref_xy, float), np.asarray(img_xy, float)
    result = {"ok": False, "n_wide": 0, "n_strict": 0, "reason": "", "wide_offset": np.full(2, np.nan)}
    ri, ii = match_xy(ref_xy, img_xy, wide["searchrad"], wide["tolerance"], wide["separation"], pscale)
    result["n_wide"] = len(ri)
    if len(ri) < min_matches:
        result["reason"] = f'{len(ri)} matches in the wide search (radius {wide["searchrad"]}")'
        return result
    fit = iter_linear_fit(
        ref_xy[ri], img_xy[ii], fitgeom="shift", nclip=wide.get("nclip", 3), sigma=wide.get("sigma", 3.0)
    )
    result["wide_offset"] = -np.asarray(fit["shift"], float)
    moved = apply_fit(fit, img_xy)
    tolerances = [None, *strict.get("refine_tolerances", [])]
    for step, tol in enumerate(tolerances):
        if tol is None:
            ri, ii = match_xy(ref_xy, moved, strict["searchrad"], strict["tolerance"], strict["separation"], pscale)
        else:
            ri, ii = match_xy(ref_xy, moved, tol, tol, strict["separation"], pscale, offset=(0.0, 0.0))
        if len(ri) < min_matches:
            if step == 0:
                result["reason"] = f'{len(ri)} matches in the strict step (tolerance {strict["tolerance"]}")'
                return result
            break
        geom = fitgeom if len(ri) > 3 else "shift"
        new_fit = iter_linear_fit(
            ref_xy[ri], img_xy[ii], fitgeom=geom, nclip=strict.get("nclip", 3), sigma=strict.get("sigma", 3.0)
        )
        fit, used = new_fit, (ri, ii)
        moved = apply_fit(fit, img_xy)
    ri, ii = used
    mask = np.asarray(fit["fitmask"], bool)
    result.update(ok=True, fit=fit, ref_idx=ri[mask], img_idx=ii[mask], n_strict=int(mask.sum()))
    return result


# --------------------------------------------------------------------------- reference catalogues
def find_column(colnames, candidates, path, what):
    lower = {c.lower(): c for c in colnames}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    raise wfutils.InputError(
        f"{path}: no {what} column (looked for {', '.join(candidates)}; the catalogue has {', '.join(colnames)})"
    )


def apply_selection(table, select: dict | None, path) -> np.ndarray:
    """Boolean mask of rows passing cuts ``{column: [min, max]}``; ``"A-B"`` selects a colour A minus B.

    ``null`` bounds are open. Unknown columns are an error naming the catalogue.
    """
    keep = np.ones(len(table), bool)
    lower = {c.lower(): c for c in table.colnames}
    for key, bounds in (select or {}).items():
        parts = [p.strip() for p in re.split(r"(?<!^)\s*-\s*(?=[A-Za-z])", key)]
        cols = []
        for part in parts:
            if part.lower() not in lower:
                raise wfutils.InputError(
                    f"{path}: selection column {part!r} not in the catalogue ({', '.join(table.colnames)})"
                )
            cols.append(lower[part.lower()])
        values = np.asarray(table[cols[0]], float)
        if len(cols) == 2:
            values = values - np.asarray(table[cols[1]], float)
        lo, hi = (bounds + [None, None])[:2] if isinstance(bounds, list) else (bounds, None)
        if lo is not None:
            keep &= values >= lo
        if hi is not None:
            keep &= values <= hi
    return keep


def _degrees(column) -> np.ndarray:
    """A table column of angles as float degrees (a unit, if present, is honoured)."""
    if getattr(column, "unit", None) is not None:
        import astropy.units as u

        return u.Quantity(column).to_value(u.deg)
    return np.asarray(column, float)


def read_reference_catalog(path, select: dict | None = None, ra_column=None, dec_column=None):
    """External astrometric catalogue (ECSV or FITS) as a Table with float ``ra``/``dec`` in degrees.

    Column names are found case-insensitively (ra/dec, RAJ2000/DEJ2000, ...); selection cuts from
    the config are applied (magnitude or colour ranges, or e.g. a size limit).
    """
    from astropy.table import Table

    try:
        fmt = "ascii.ecsv" if str(path).endswith((".ecsv", ".ecsv.gz")) else None
        table = Table.read(str(path), format=fmt) if fmt else Table.read(str(path))
    except FileNotFoundError:
        raise wfutils.InputError(f"{path}: reference catalogue does not exist") from None
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise wfutils.InputError(f"{path}: unreadable reference catalogue ({type(exc).__name__}: {exc})") from exc
    ra_col = ra_column or find_column(table.colnames, RA_COLUMNS, path, "RA")
    dec_col = dec_column or find_column(table.colnames, DEC_COLUMNS, path, "Dec")
    for col in (ra_col, dec_col):
        if col not in table.colnames:
            raise wfutils.InputError(f"{path}: column {col!r} not in the catalogue ({', '.join(table.colnames)})")
    try:
        ra, dec = (_degrees(table[col]) for col in (ra_col, dec_col))
    except (TypeError, ValueError) as exc:
        raise wfutils.InputError(f"{path}: columns {ra_col}/{dec_col} are not numeric angles ({exc})") from exc
    ok = np.isfinite(ra) & np.isfinite(dec) & (dec >= -90) & (dec <= 90)
    if not ok.any():
        raise wfutils.InputError(f"{path}: no finite positions in columns {ra_col}/{dec_col}")
    keep = ok & apply_selection(table, select, path)
    out = table[keep]
    out["ra"] = ra[keep]
    out["dec"] = dec[keep]
    out.meta["n_read"] = len(table)
    out.meta["path"] = str(path)
    return out


def table_lines(table) -> list[str]:
    """ECSV text of a table, as lines (written with ``wfutils.write_text``)."""
    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return buf.getvalue().splitlines()


# --------------------------------------------------------------------------- QA
def scatterball(panels: list[dict], path, title: str) -> None:
    """RA/Dec offset scatter per band (PHANGS-JWST Figs. 12-13) written atomically as PNG.

    Each panel: band, d_ra_mas, d_dec_mas (measured minus reference), fwhm_mas, pixel_mas, label.
    The PSF FWHM circle, the pixel square and the sigma-clipped mean offset are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(panels), 1)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.3 * nrow), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        dra, ddec = np.asarray(panel["d_ra_mas"], float), np.asarray(panel["d_dec_mas"], float)
        lim = 0.75 * max(panel["fwhm_mas"], panel["pixel_mas"])
        ax.scatter(dra, ddec, s=6, alpha=0.3, color="k", lw=0)
        ax.add_patch(plt.Circle((0, 0), panel["fwhm_mas"] / 2, fill=False, ls=":", color="r"))
        half = panel["pixel_mas"] / 2
        ax.add_patch(plt.Rectangle((-half, -half), 2 * half, 2 * half, fill=False, lw=2.5, color="0.6"))
        ax.axhline(0, color="k", ls="--", lw=0.6)
        ax.axvline(0, color="k", ls="--", lw=0.6)
        mra, _, _ = robust_mean(dra)
        mdec, _, nk = robust_mean(ddec)
        ax.set_xlim(lim, -lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{panel['band']} {panel.get('label', '')}".strip(), fontsize=9)
        ax.text(
            0.03,
            0.03,
            f'N={len(dra)}\n<dRA>={mra / 1e3:+.4f}"\n<dDec>={mdec / 1e3:+.4f}"',
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
        )
        ax.set_xlabel("dRA cos(Dec) [mas]", fontsize=8)
        ax.set_ylabel("dDec [mas]", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def residual_stats(d_ra_mas, d_dec_mas) -> dict:
    """Sigma-clipped mean offsets and RMS (mas) of measured-minus-reference positions."""
    d_ra_mas, d_dec_mas = np.asarray(d_ra_mas, float), np.asarray(d_dec_mas, float)
    mra, sra, _ = robust_mean(d_ra_mas)
    mdec, sdec, n_kept = robust_mean(d_dec_mas)
    total = np.hypot(d_ra_mas, d_dec_mas)
    return {
        "n": int(d_ra_mas.size),
        "n_clipped_mean": n_kept,
        "mean_ra_mas": mra,
        "mean_dec_mas": mdec,
        "std_ra_mas": sra,
        "std_dec_mas": sdec,
        "rms_mas": float(np.sqrt(np.mean(total**2))) if total.size else math.nan,
        "median_abs_mas": float(np.median(total)) if total.size else math.nan,
    }
