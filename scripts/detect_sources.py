"""Point sources of the V-band image: DAOStarFinder plus PSF photometry (PHANGS-HST, Lee et al. 2022 Sec. 4.2).

Method. The V-band (F555W) drizzled image, minus a smooth background (photutils
``Background2D``, sigma-clipped medians in ``bkg_box_px`` boxes, sources masked), is searched
with ``DAOStarFinder`` (Gaussian kernel of FWHM 2.5 px; threshold ``nsigma`` x the sky noise map,
the paper's 3.5 sigma of DOLPHOT). Its detections start a PSF-fitting point-source catalog made
with photutils' ``PSFPhotometry`` (the role DOLPHOT plays in the paper, which is not available
here): positions and fluxes are fitted in V with the band's PSF model, sources closer than
``group_separation_px`` fitted simultaneously as DOLPHOT does (a fit that ends within
``duplicate_separation_px`` of a brighter one fitted the same light and is dropped), then fluxes
are fitted at those fixed positions in every other band, so V is the positional reference.
Like DOLPHOT, a second pass searches the V image minus the fitted PSFs for stars blended with
brighter ones (``residual_passes``); each is refitted together with its neighbours, as ALLSTAR
adds a star to a group (``residual_sources``), and they join the point-source catalog (the
association maps) but not the merged source list, whose cluster candidates are DAOStarFinder
detections and keep their first-pass fits.
``--dolphot CATALOG`` replaces this step by a DOLPHOT catalog (run on the V image as reference),
given either as DOLPHOT's own output -- the ``<name>.phot`` text file with ``<name>.phot.columns``
(or ``<name>.columns``) next to it, read by its column descriptions: global x, y, S/N,
sharpness, roundness, crowding, object type, and per filter ("..., WFC3_F555W") the normalized
count rate and its uncertainty -- or as a table (ECSV/FITS) already converted to columns ``x``,
``y`` (0-based pixels of the V image), ``flux_<BAND>``, ``flux_err_<BAND>`` and ``sharpness``.
DOLPHOT positions count from the lower-left pixel corner (its centre is 0.5, 0.5):
``dolphot_pixel_origin`` is subtracted. Raw DOLPHOT sources keep object types
``dolphot_object_types`` (1, 2: stars). Their sharpness is DOLPHOT's (0 for a perfect PSF),
not DAOFIND's; ``sharpness_kind`` in the table metadata says which.

The merged source list (``--sources``) holds every first-pass source at its fitted position
(the DAOStarFinder centroid where the fit failed or moved the source by more than
``max_fit_shift_px``) plus, with a DOLPHOT catalog, the DAOStarFinder detections more than
``match_radius_px`` from any DOLPHOT source (extended clusters DOLPHOT misses). A second search
with a wider kernel (``wide_fwhm_px``, ``find_extended``) adds the extended clusters the first one
misses (at their PSF-fitted positions, or centroids with DOLPHOT). Aperture photometry and
concentration indices are measured at these positions.

    python scripts/detect_sources.py --image F555W=V_drc.fits [--image F275W=...] ...
        --psf F555W=V_psf.fits ... --sources SOURCES.ecsv --pointsources POINTS.ecsv
        [--dolphot CATALOG] [--params JSON] [--log LOG]
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np

from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("detect_sources")

DEFAULTS = {
    "fwhm_px": 2.5,  # DAOStarFinder kernel (paper)
    "nsigma": 3.5,  # detection threshold in units of the ERR map
    "sharpness_range": [0.05, 1.0],  # loose: extended clusters are less sharp than stars
    "roundness_range": [-1.0, 1.0],
    "min_separation_px": 2.0,  # photutils 3.0 default (2.5 x FWHM = 6 px) drops neighbours 5-7 px apart
    # second search with a wider kernel for extended clusters the 2.5 px kernel misses (find_extended;
    # FWHM 4-7 px clusters at V S/N 10-20); its finds join the source list, not the point sources. 0: off
    "wide_fwhm_px": 5.0,
    "wide_nsigma": 5.0,
    "wide_separation_px": 3.0,  # a wide find this close to a 2.5-px detection is that source
    "bkg_box_px": 32,
    "bkg_filter_px": 3,
    "fit_shape_px": 5,
    "max_fit_shift_px": 1.0,
    "duplicate_separation_px": 1.0,  # PSF fits this close (0.6 V PSF FWHM) fitted the same light: one source
    # sources whose fitting boxes share pixels are fitted together (ALLSTAR/DOLPHOT-like): blended
    # association members keep their own light instead of the brightest fit absorbing it; 0: one by one
    "group_separation_px": 5.0,
    # DOLPHOT-like second pass: stars found in the V image minus the fitted PSFs (blended neighbours)
    "residual_passes": 2,  # 0: off
    "residual_fwhm_px": 1.7,  # kernel of the residual search: the V PSF core, not the 2.5 px of DAOFIND
    "residual_min_separation_px": 1.0,  # closer to a fitted source: its own fit residual, not a star
    "residual_roundness_range": [-2.0, 2.0],  # a neighbour's subtraction hole distorts a residual star
    # an extended cluster's light around its subtracted PSF fits worse than a star: on the simulated
    # galaxy (25 associations per scale) residual finds with qfit <= 1 are 98% stars, 1-1.25 68%
    "residual_qfit_max": 1.0,
    # finds fitting worse than that (up to this qfit) are kept only if, refitted with their
    # neighbours, they pass the test against an extended neighbour (residual_extended_test)
    "residual_qfit_loose": 2.0,
    "extended_test_radius_px": 2.5,  # 1.5 V PSF FWHM: a neighbour this close may be one extended source
    "extended_sigmas_px": [0.35, 0.7, 1.05, 1.4, 1.9, 2.5],  # Gaussian broadenings of the PSF (null models)
    "match_radius_px": 2.0,  # DOLPHOT <-> DAOStarFinder matching
    "border_px": 4,
    "dolphot_pixel_origin": 0.5,  # DOLPHOT x, y of the centre of the first pixel
    "dolphot_object_types": [1, 2],  # DOLPHOT object type: 1 bright star, 2 faint, 3 elongated, 4 hot, 5 extended
}
# DOLPHOT .columns descriptions -> our names (global columns; per-filter ones carry ", CAMERA_FILTER")
DOLPHOT_GLOBAL = {
    "Object X position": "x",
    "Object Y position": "y",
    "Signal-to-noise": "snr_dolphot",
    "Object sharpness": "sharpness",
    "Object roundness": "roundness",
    "Crowding": "crowding",
    "Object type": "object_type",
}
DOLPHOT_PER_FILTER = {
    "Normalized count rate": "flux",
    "Normalized count rate uncertainty": "flux_err",
    "Photometry quality flag": "dolphot_flag",
}


# --------------------------------------------------------------------------- pure functions
def smooth_background(sci: np.ndarray, box: int, filter_size: int, rms: bool = False):
    """Smooth background (diffuse galaxy light) from sigma-clipped box medians, sources masked;
    with ``rms`` also the background noise map (sigma-clipped box standard deviations)."""
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources as segment
    from photutils.segmentation import detect_threshold

    good = np.isfinite(sci)
    data = np.where(good, sci, 0.0)
    threshold = detect_threshold(data, n_sigma=2.0, mask=~good)
    seg = segment(data, threshold, n_pixels=5, mask=~good)
    mask = ~good
    if seg is not None:
        from scipy.ndimage import binary_dilation

        mask |= binary_dilation(seg.data > 0, iterations=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(
            data,
            box,
            mask=mask,
            filter_size=filter_size,
            sigma_clip=SigmaClip(sigma=3.0),
            bkg_estimator=MedianBackground(),
            exclude_percentile=90,
        )
    if rms:
        return np.asarray(bkg.background), np.asarray(bkg.background_rms)
    return np.asarray(bkg.background)


def find_sources(data: np.ndarray, noise: np.ndarray, params: dict):
    """DAOStarFinder detections (astropy Table) with threshold ``nsigma`` x the background noise map.

    The noise map is that of the sky (not the ERR map, which includes the sources' own Poisson
    noise and would raise the threshold on exactly the extended clusters DAOFIND finds hardest)."""
    err = noise
    from photutils.detection import DAOStarFinder

    good = np.isfinite(data) & np.isfinite(err)
    threshold = np.where(good, params["nsigma"] * np.nan_to_num(err, nan=np.nanmedian(err)), np.inf)
    finder = DAOStarFinder(
        threshold=threshold,
        fwhm=params["fwhm_px"],
        sharpness_range=tuple(params["sharpness_range"]),
        roundness_range=tuple(params["roundness_range"]),
        exclude_border=True,
        min_separation=params["min_separation_px"],
    )
    table = finder(np.where(good, data, 0.0), mask=~good)
    if table is None:
        from astropy.table import Table

        return Table(names=["x_centroid", "y_centroid", "sharpness", "roundness1", "roundness2", "flux"])
    ny, nx = data.shape
    b = params["border_px"]
    keep = (
        (table["x_centroid"] >= b)
        & (table["x_centroid"] < nx - b)
        & (table["y_centroid"] >= b)
        & (table["y_centroid"] < ny - b)
    )
    return table[keep]


def find_extended(data: np.ndarray, noise: np.ndarray, detections, params: dict):
    """Extended sources the ``fwhm_px`` search missed: DAOStarFinder with the ``wide_fwhm_px`` kernel
    at ``wide_nsigma``, keeping the finds farther than ``wide_separation_px`` from every detection.

    Our extension of the paper's single 2.5 px search (Lee et al. 2022 Sec. 4.2): a cluster of FWHM
    5 px puts too little of its light into a 2.5 px kernel to pass 3.5 sigma even where its 4 px
    aperture has S/N 15, and the candidate selection can only keep what was detected."""
    if not params["wide_fwhm_px"]:
        return detections[:0]
    # peaks closer than the wide kernel's FWHM are one source to it (two finds on one cluster otherwise)
    wide_fwhm = params["wide_fwhm_px"]
    wide = find_sources(
        data, noise, {**params, "fwhm_px": wide_fwhm, "nsigma": params["wide_nsigma"], "min_separation_px": wide_fwhm}
    )
    if not len(wide) or not len(detections):
        return wide
    far = (
        match_nearest(
            np.asarray(wide["x_centroid"], float),
            np.asarray(wide["y_centroid"], float),
            np.asarray(detections["x_centroid"], float),
            np.asarray(detections["y_centroid"], float),
            params["wide_separation_px"],
        )
        < 0
    )
    return wide[far]


def find_all_sources(data: np.ndarray, noise: np.ndarray, params: dict):
    """(x, y) of the ``fwhm_px`` detections followed by the extended finds (``find_extended``)."""
    narrow = find_sources(data, noise, params)
    wide = find_extended(data, noise, narrow, params)
    x = np.concatenate([np.asarray(t["x_centroid"], float) for t in (narrow, wide)])
    y = np.concatenate([np.asarray(t["y_centroid"], float) for t in (narrow, wide)])
    return x, y


def psf_model_from(psf_image: np.ndarray, oversample: int):
    from photutils.psf import ImagePSF

    return ImagePSF(psf_image / psf_image.sum() * oversample**2, oversampling=oversample)


def fit_psf(
    data, err, psf_model, x, y, fit_shape, fixed_positions=False, group_separation=0.0, max_shift=None, residual=False
):
    """PSF photometry at initial positions: (x_fit, y_fit, flux, flux_err, qfit, cfit, flags) arrays,
    with ``residual`` also the data minus the fitted PSFs (key ``residual``)."""
    from astropy.table import Table
    from photutils.psf import PSFPhotometry, SourceGrouper

    model = psf_model.copy()
    model.x_0.fixed = fixed_positions
    model.y_0.fixed = fixed_positions
    grouper = SourceGrouper(min_separation=group_separation) if group_separation > 0 else None
    phot = PSFPhotometry(
        model, fit_shape, grouper=grouper, aperture_radius=3.0, xy_bounds=None if fixed_positions else max_shift
    )
    good = np.isfinite(data) & np.isfinite(err) & (err > 0)
    init = Table({"x": np.asarray(x, float), "y": np.asarray(y, float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = phot(np.where(good, data, 0.0), mask=~good, error=np.where(good, err, 1.0), init_params=init)
    get = lambda name: np.asarray(res[name], dtype=float) if name in res.colnames else np.full(len(res), np.nan)
    out = {
        "x": get("x_fit"),
        "y": get("y_fit"),
        "flux": get("flux_fit"),
        "flux_err": get("flux_err"),
        "qfit": get("qfit"),
        "cfit": get("cfit"),
        "flags": np.asarray(res["flags"], dtype=int) if "flags" in res.colnames else np.zeros(len(res), int),
    }
    if residual:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["residual"] = np.where(good, phot.make_residual_image(np.where(good, data, 0.0)), np.nan)
    return out


def match_nearest(x1, y1, x2, y2, radius):
    """Index into (x2, y2) of the nearest neighbour of each (x1, y1) within ``radius`` (-1 if none)."""
    from scipy.spatial import cKDTree

    if len(x2) == 0:
        return np.full(len(x1), -1)
    dist, idx = cKDTree(np.column_stack([x2, y2])).query(np.column_stack([x1, y1]), distance_upper_bound=radius)
    return np.where(np.isfinite(dist), idx, -1)


# --------------------------------------------------------------------------- catalogue building
def psf_positions(sci, err, psf_model, x0, y0, params: dict, residual: bool = False):
    """V-band PSF fit with free positions from the detections (x0, y0): (x, y, ok, fit).

    Where the fit fails or moves a source by more than ``max_fit_shift_px`` the detection's
    position is kept (``ok`` False). The positions at which every source -- real or synthetic
    (``inject_clusters.py``) -- gets its aperture photometry and concentration indices.
    ``residual``: ``fit`` also holds the image minus all the fitted PSFs (key ``residual``)."""
    x0, y0 = np.asarray(x0, float), np.asarray(y0, float)
    fit = fit_psf(
        sci,
        err,
        psf_model,
        x0,
        y0,
        int(params["fit_shape_px"]),
        group_separation=params["group_separation_px"],
        max_shift=params["max_fit_shift_px"],
        residual=residual,
    )
    shift = np.hypot(fit["x"] - x0, fit["y"] - y0)
    ok = np.isfinite(fit["x"]) & np.isfinite(fit["flux"]) & (shift <= params["max_fit_shift_px"])
    return np.where(ok, fit["x"], x0), np.where(ok, fit["y"], y0), ok, fit


def distinct_sources(x, y, flux, separation: float) -> np.ndarray:
    """Mask keeping, of sources closer than ``separation`` px to each other, only the brightest.

    Each detection gets its own PSF fit (Lee et al. 2022 Sec. 4.2 use DOLPHOT, which lists every
    star once); two DAOStarFinder peaks on one extended cluster or blend can be pulled onto the
    same light, and the catalog would list that source twice (twice in the association maps)."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.ones(len(x), bool)
    if len(x) < 2:
        return keep
    tree = cKDTree(np.column_stack([x, y]))
    for i in np.argsort(-np.nan_to_num(np.asarray(flux, float), nan=-np.inf), kind="stable"):
        if keep[i]:
            keep[[j for j in tree.query_ball_point([x[i], y[i]], separation) if j != i]] = False
    return keep


def psf_values(psf_model, px, py, x0, y0, derivatives=False):
    """Unit-flux PSF at pixels (px, py) of a source at (x0, y0); with ``derivatives`` also d/dx0, d/dy0."""
    osx, osy = float(psf_model.oversampling[1]), float(psf_model.oversampling[0])
    xi = osx * (np.asarray(px, float) - x0) + psf_model.origin[0]
    yi = osy * (np.asarray(py, float) - y0) + psf_model.origin[1]
    ny, nx = psf_model.data.shape
    inside = (xi >= 0) & (xi <= nx - 1) & (yi >= 0) & (yi <= ny - 1)
    spline = psf_model.interpolator
    value = np.where(inside, spline(xi, yi, grid=False), 0.0)
    if not derivatives:
        return value
    dx = np.where(inside, -osx * spline(xi, yi, dx=1, grid=False), 0.0)
    dy = np.where(inside, -osy * spline(xi, yi, dy=1, grid=False), 0.0)
    return value, dx, dy


def render_psfs(shape, psf_model, x, y, flux) -> np.ndarray:
    """Image of the PSFs of sources (x, y, flux), each over the model's extent (photutils
    ``make_model_image``), so a fit's model can be put back into its residual; non-finite fits are skipped."""
    from astropy.table import Table
    from photutils.datasets import make_model_image

    x, y, flux = (np.atleast_1d(np.asarray(a, float)) for a in (x, y, flux))
    half = int(np.ceil((psf_model.data.shape[0] / float(psf_model.oversampling[0]) - 1) / 2))
    with np.errstate(invalid="ignore"):  # the model box must overlap the image
        good = np.isfinite(flux) & (np.abs(x - (shape[1] - 1) / 2) < shape[1] / 2 + half)
        good &= np.abs(y - (shape[0] - 1) / 2) < shape[0] / 2 + half
    if not good.any():
        return np.zeros(shape)
    size = 2 * half + 1
    sources = Table({"x_0": x[good], "y_0": y[good], "flux": flux[good]})
    return make_model_image(shape, psf_model, sources, model_shape=(size, size))


def box_pixels(data, err, x, y, fit_shape: int):
    """(px, py) of the usable pixels of the ``fit_shape`` box centred on each source (list per source)."""
    h = fit_shape // 2
    out = []
    for xs, ys in zip(x, y, strict=True):
        ix, iy = int(round(xs)), int(round(ys))
        yy, xx = np.mgrid[
            max(iy - h, 0) : min(iy + h + 1, data.shape[0]), max(ix - h, 0) : min(ix + h + 1, data.shape[1])
        ]
        xx, yy = xx.ravel(), yy.ravel()
        good = np.isfinite(data[yy, xx]) & np.isfinite(err[yy, xx]) & (err[yy, xx] > 0)
        out.append((xx[good], yy[good]))
    return out


def fit_group(data, err, models, x, y, flux, fit_shape: int, max_shift: float, pixels=None):
    """Least-squares fit of sources (x, y, flux; one PSF model each) over the union of their
    ``fit_shape`` boxes, positions bounded to ``max_shift`` px from the start (analytic Jacobian);
    ``pixels``: (px, py, values) to fit instead.

    Returns (x, y, flux, flux_err, qfit, chi2, n_pixels); qfit as photutils': the sum of the
    absolute residuals in a source's own box over its flux (NaN with ``pixels``)."""
    from scipy.optimize import least_squares

    n = len(x)
    if pixels is None:
        boxes = box_pixels(data, err, x, y, fit_shape)
        allpix = np.unique(np.concatenate([py * data.shape[1] + px for px, py in boxes]))
        py, px = np.divmod(allpix, data.shape[1])
        d = data[py, px]
    else:
        boxes = []
        px, py, d = pixels
    w = 1.0 / err[py, px]
    p0 = np.column_stack([x, y, flux]).astype(float).ravel()
    lo, hi = p0 - max_shift, p0 + max_shift
    lo[2::3], hi[2::3] = -np.inf, np.inf
    p0 = np.clip(p0, lo, hi)

    last = {}

    def model_and_jac(p):  # one spline evaluation serves the residuals and the Jacobian at p
        if last.get("p") is None or not np.array_equal(last["p"], p):
            q = p.reshape(n, 3)
            model, jac = np.zeros(len(d)), np.zeros((len(d), 3 * n))
            for k in range(n):
                v, dx, dy = psf_values(models[k], px, py, q[k, 0], q[k, 1], derivatives=True)
                model += q[k, 2] * v
                jac[:, 3 * k], jac[:, 3 * k + 1], jac[:, 3 * k + 2] = -q[k, 2] * dx * w, -q[k, 2] * dy * w, -v * w
            last.update(p=p.copy(), fun=(d - model) * w, jac=jac)
        return last

    res = least_squares(
        lambda p: model_and_jac(p)["fun"], p0, jac=lambda p: model_and_jac(p)["jac"], bounds=(lo, hi), method="trf"
    )
    p = res.x.reshape(n, 3)
    jw = res.jac
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.linalg.pinv(jw.T @ jw)
    flux_err = np.sqrt(np.clip(np.diag(cov)[2::3], 0, None))
    qfit = np.full(n, np.nan)
    for k, (bx, by) in enumerate(boxes):
        model = sum(p[j, 2] * psf_values(models[j], bx, by, p[j, 0], p[j, 1]) for j in range(n))
        with np.errstate(divide="ignore", invalid="ignore"):
            qfit[k] = np.abs(data[by, bx] - model).sum() / p[k, 2]
    return p[:, 0], p[:, 1], p[:, 2], flux_err, qfit, float(np.sum(res.fun**2)), len(d)


def fit_groups(data, err, psf_model, x, y, flux, params: dict):
    """``fit_group`` over the groups of sources whose fitting boxes share pixels (photutils
    ``SourceGrouper`` at ``group_separation_px``): dict of arrays x, y, flux, flux_err, qfit."""
    from photutils.psf import SourceGrouper

    x, y, flux = (np.asarray(a, float) for a in (x, y, flux))
    out = {k: np.full(len(x), np.nan) for k in ("x", "y", "flux", "flux_err", "qfit")}
    if not len(x):
        return out
    groups = SourceGrouper(min_separation=params["group_separation_px"])(x, y) if len(x) > 1 else np.ones(1, int)
    for g in np.unique(groups):
        idx = np.where(groups == g)[0]
        fit = fit_group(
            data,
            err,
            [psf_model] * len(idx),
            x[idx],
            y[idx],
            flux[idx],
            int(params["fit_shape_px"]),
            params["max_fit_shift_px"],
        )
        for key, value in zip(("x", "y", "flux", "flux_err", "qfit"), fit[:5], strict=True):
            out[key][idx] = value
    return out


def broadened_psfs(psf_model, sigmas_px):
    """The PSF convolved with Gaussians of ``sigmas_px`` (px): round extended-source models."""
    from photutils.psf import ImagePSF
    from scipy.ndimage import gaussian_filter

    os_ = int(psf_model.oversampling[0])
    out = []
    for s in sigmas_px:
        image = gaussian_filter(psf_model.data, s * os_, mode="constant")
        out.append(ImagePSF(image * psf_model.data.sum() / image.sum(), oversampling=os_))
    return out


def extended_test_pvalue(residual, err, psf_model, extended, neighbour, candidate, params: dict) -> float:
    """p-value of a candidate star next to a neighbour against the neighbour being one extended source.

    Nested least-squares models of the pair's light (``residual`` of their joint fit plus their
    PSFs) over the union of their fitting boxes: H0 the neighbour alone, as the PSF or a
    broadened PSF (``extended``), H1 that plus the candidate as a PSF (3 more parameters), each
    at its best broadening. The extra-sum-of-squares F test, F = (dchi2 / 3) / (chi2_1 / dof)
    with F(3, dof) (e.g. Bevington & Robinson, Data Reduction and Error Analysis, Sec. 11.4),
    scales the gain by H1's own residual scatter, so crowding or a mismatched profile does not
    make a piece of a cluster's light significant. Limitation: the heavy wings of bright EFF
    clusters (slope ~2) differ from any broadened PSF, and a PSF there can pass the test.
    ``neighbour``, ``candidate``: (x, y, flux)."""
    from scipy.stats import f as f_dist

    nx, ny, nf = neighbour
    cx, cy, cf = candidate
    fit_shape, max_shift = int(params["fit_shape_px"]), params["max_fit_shift_px"]
    boxes = box_pixels(residual, err, [nx, cx], [ny, cy], fit_shape)
    allpix = np.unique(np.concatenate([py * residual.shape[1] + px for px, py in boxes]))
    py, px = np.divmod(allpix, residual.shape[1])
    d = residual[py, px] + nf * psf_values(psf_model, px, py, nx, ny) + cf * psf_values(psf_model, px, py, cx, cy)
    dof = len(d) - 7
    if dof < 1:
        return 0.0
    total = max(nf + cf, 1e-12)
    lx, ly = (max(nf, 0) * nx + max(cf, 0) * cx) / total, (max(nf, 0) * ny + max(cf, 0) * cy) / total
    chi0 = chi1 = np.inf
    for model in [psf_model, *extended]:
        chi0 = min(chi0, fit_group(residual, err, [model], [lx], [ly], [total], 0, max_shift, (px, py, d))[5])
        fit1 = fit_group(residual, err, [model, psf_model], [nx, cx], [ny, cy], [nf, cf], 0, max_shift, (px, py, d))
        chi1 = min(chi1, fit1[5])
    if not chi1 > 0:
        return 0.0
    return float(f_dist.sf(max(chi0 - chi1, 0.0) / 3.0 / (chi1 / dof), 3, dof))


def initial_fluxes(image, psf_model, x, y, fit_shape: int):
    """Flux estimates: the light in each source's ``fit_shape`` box over the PSF's share of that box."""
    out = np.zeros(len(x))
    for k, (bx, by) in enumerate(box_pixels(image, np.ones_like(image), x, y, fit_shape)):
        share = psf_values(psf_model, bx, by, x[k], y[k]).sum()
        out[k] = image[by, bx].sum() / share if share > 0 else 0.0
    return out


def residual_sources(residual, noise, err, psf_model, known: dict, params: dict, extended=None):
    """Stars in the V image minus the fitted PSFs, refitted with their neighbours (ALLSTAR-like).

    DOLPHOT's iterative search (Dolphin 2000; the point-source catalog of Lee et al. 2022
    Sec. 4.2): a blended neighbour closer than DAOFIND's 2.5 px kernel separates from a brighter
    star once that star's PSF is subtracted. The residual is searched with a kernel of the V PSF
    core (``residual_fwhm_px``) at the same ``nsigma`` threshold, with a wider roundness range
    (the subtraction hole of a neighbour makes a star look asymmetric), and each find is
    PSF-fitted on the residual. Finds with ``qfit`` up to ``residual_qfit_loose`` are fitted again
    together with the known sources within ``group_separation_px`` (``known["refit"]``) on the
    image minus all other fits, as ALLSTAR refits a group when a star is added (Stetson 1987):
    the neighbours' PSFs had absorbed part of the new star's light. A find is kept if this joint
    fit ends within ``max_fit_shift_px`` of its first fit with positive flux, ``qfit`` at most
    ``residual_qfit_max`` and no source within ``duplicate_separation_px``. A find whose first
    fit was worse than ``residual_qfit_max`` (the light an extended cluster leaves around its
    subtracted PSF fits worse than a star) must also reject, at the detection significance
    (``nsigma``, one-sided Gaussian), the hypothesis that it and its nearest neighbour within
    ``extended_test_radius_px`` are one extended source (``extended_test_pvalue``). The group is
    then refitted without the rejected finds. ``known``: arrays x, y, flux, flux_err, qfit (the
    fits subtracted in ``residual``) and refit (bool).

    Returns (detections, joint fits of the new stars {x, y, flux, flux_err, qfit}, ``known`` with
    the neighbours' refits, residual after them)."""
    from scipy.spatial import cKDTree
    from scipy.stats import norm

    search = {**params, "fwhm_px": params["residual_fwhm_px"], "roundness_range": params["residual_roundness_range"]}
    fit_shape = int(params["fit_shape_px"])
    kx, ky = np.asarray(known["x"], float), np.asarray(known["y"], float)
    empty = {key: np.zeros(0) for key in ("x", "y", "flux", "flux_err", "qfit")}
    found = find_sources(residual, noise, search)
    x0, y0 = np.asarray(found["x_centroid"], float), np.asarray(found["y_centroid"], float)
    new = match_nearest(x0, y0, kx, ky, params["residual_min_separation_px"]) < 0
    found, x0, y0 = found[new], x0[new], y0[new]
    if not len(found):
        return found, empty, known, residual
    fit = fit_groups(residual, err, psf_model, x0, y0, initial_fluxes(residual, psf_model, x0, y0, fit_shape), params)
    keep = np.isfinite(fit["flux"]) & (fit["flux"] > 0) & (fit["qfit"] <= params["residual_qfit_loose"])
    keep &= match_nearest(fit["x"], fit["y"], kx, ky, params["residual_min_separation_px"]) < 0
    keep &= distinct_sources(fit["x"], fit["y"], np.where(keep, fit["flux"], np.nan), params["duplicate_separation_px"])
    found, fit = found[keep], {key: value[keep] for key, value in fit.items()}
    if not len(found):
        return found, empty, known, residual
    strict = fit["qfit"] <= params["residual_qfit_max"]
    near = cKDTree(np.column_stack([fit["x"], fit["y"]])).query(np.column_stack([kx, ky]))[0]
    nb = np.where(np.asarray(known["refit"], bool) & (near <= params["group_separation_px"]))[0]
    data = residual + render_psfs(residual.shape, psf_model, kx[nb], ky[nb], known["flux"][nb])
    others = np.ones(len(kx), bool)
    others[nb] = False

    def joint(use):
        return fit_groups(
            data,
            err,
            psf_model,
            np.concatenate([kx[nb], fit["x"][use]]),
            np.concatenate([ky[nb], fit["y"][use]]),
            np.concatenate([known["flux"][nb], fit["flux"][use]]),
            params,
        )

    j = joint(np.ones(len(found), bool))
    n = len(nb)
    cx, cy, cf = j["x"][n:], j["y"][n:], j["flux"][n:]
    everyone = cKDTree(np.column_stack([np.concatenate([kx[others], j["x"]]), np.concatenate([ky[others], j["y"]])]))
    dist, idx = everyone.query(np.column_stack([cx, cy]), k=2)
    accept = np.isfinite(cf) & (cf > 0) & (j["qfit"][n:] <= params["residual_qfit_max"])
    accept &= (dist[:, 1] >= params["duplicate_separation_px"]) & (
        np.hypot(cx - fit["x"], cy - fit["y"]) <= params["max_fit_shift_px"]
    )
    test = np.where(accept & ~strict)[0]
    if len(test):
        extended = broadened_psfs(psf_model, params["extended_sigmas_px"]) if extended is None else extended
        after = data - render_psfs(residual.shape, psf_model, j["x"], j["y"], j["flux"])
        tree = cKDTree(np.column_stack([j["x"], j["y"]]))
        p_max = norm.sf(params["nsigma"])
        for i in test:
            d2, i2 = tree.query([cx[i], cy[i]], k=2)
            if d2[1] > params["extended_test_radius_px"]:
                continue
            pair = (j["x"][i2[1]], j["y"][i2[1]], j["flux"][i2[1]]), (cx[i], cy[i], cf[i])
            accept[i] = extended_test_pvalue(after, err, psf_model, extended, *pair, params) <= p_max
    if not accept.all():
        j = joint(accept)
    found = found[accept]
    known = {key: np.array(value, copy=True) for key, value in known.items()}
    for key in ("x", "y", "flux", "flux_err", "qfit"):
        known[key][nb] = j[key][:n]
    stars = {key: value[n:] for key, value in j.items()}
    residual = data - render_psfs(residual.shape, psf_model, j["x"], j["y"], j["flux"])
    return found, stars, known, residual


def point_source_catalog(images: dict, psfs: dict, detections, params: dict, noise=None, first_pass=None):
    """PSF photometry: free positions in V, fixed positions in the other bands (a Table).

    Column ``psf_pass`` is 1 for the DAOStarFinder detections and k + 1 for the stars found in
    the residual of pass k (``residual_sources``, ``residual_passes`` times; needs the sky
    ``noise`` map), whose joint fits also update their neighbours' V fits. ``first_pass``: a dict
    that receives the pass-1 x, y, psf_ok and qfit before those updates."""
    from astropy.table import Table

    sci, err = images[cc.V_BAND]
    fit_shape = int(params["fit_shape_px"])
    x0, y0 = detections["x_centroid"], detections["y_centroid"]
    n_passes = int(params["residual_passes"]) if noise is not None else 0
    # the residual of the (grouped) fit itself: a blend's members were fitted together, and two
    # fits on one light shared it, so their PSFs subtract that light once
    x, y, ok, v = psf_positions(sci, err, psfs[cc.V_BAND], x0, y0, params, residual=n_passes > 0)
    residual = v.pop("residual", None)
    keep = distinct_sources(x, y, v["flux"], params["duplicate_separation_px"])
    if not keep.all():
        log.info(
            "%d PSF fits within %.1f px of a brighter one dropped (one source)",
            int((~keep).sum()),
            params["duplicate_separation_px"],
        )
    detections, x, y, ok = detections[keep], x[keep], y[keep], ok[keep]
    v = {key: value[keep] for key, value in v.items()}
    if first_pass is not None:
        first_pass.update(x=x.copy(), y=y.copy(), psf_ok=ok.copy(), qfit=v["qfit"].copy())
    sharp, round2 = np.asarray(detections["sharpness"], float), np.asarray(detections["roundness2"], float)
    passes = np.ones(len(x), int)
    # the fits subtracted in the residual; sources whose fit failed or moved too far stay fixed
    known = {"x": v["x"], "y": v["y"], "flux": v["flux"], "flux_err": v["flux_err"], "qfit": v["qfit"], "refit": ok}
    extended = broadened_psfs(psfs[cc.V_BAND], params["extended_sigmas_px"]) if n_passes else None
    for k in range(1, n_passes + 1):
        found, new, known, residual = residual_sources(residual, noise, err, psfs[cc.V_BAND], known, params, extended)
        log.info("residual search %d (FWHM %.1f px): %d more stars", k, params["residual_fwhm_px"], len(found))
        if not len(found):
            break
        known = {
            key: np.concatenate([value, new[key] if key != "refit" else np.ones(len(found), bool)])
            for key, value in known.items()
        }
        sharp = np.concatenate([sharp, np.asarray(found["sharpness"], float)])
        round2 = np.concatenate([round2, np.asarray(found["roundness2"], float)])
        passes = np.concatenate([passes, np.full(len(found), k + 1)])
        for key in ("cfit", "flags"):
            v[key] = np.concatenate([v[key], np.full(len(found), np.nan if key == "cfit" else 0, v[key].dtype)])
    if n_passes:  # sources whose first fit was ok may have been refitted (bounded as that fit)
        n1 = len(x)
        x = np.concatenate([np.where(ok, known["x"][:n1], x), known["x"][n1:]])
        y = np.concatenate([np.where(ok, known["y"][:n1], y), known["y"][n1:]])
        ok = np.concatenate([ok, np.ones(len(x) - n1, bool)])
        v.update({key: known[key] for key in ("flux", "flux_err", "qfit")})
    table = Table()
    table["x"], table["y"] = x, y
    table["psf_ok"] = ok
    table["psf_pass"] = passes
    table["sharpness"], table["roundness"] = sharp, round2
    table["qfit"], table["cfit"], table["psf_flags"] = v["qfit"], v["cfit"], v["flags"]
    for band, (bsci, berr) in images.items():
        if band == cc.V_BAND:
            flux, flux_err = v["flux"], v["flux_err"]
        else:
            fit = fit_psf(bsci, berr, psfs[band], table["x"], table["y"], fit_shape, fixed_positions=True)
            flux, flux_err = fit["flux"], fit["flux_err"]
        table[f"flux_{band}"] = flux
        table[f"flux_err_{band}"] = flux_err
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"snr_{band}"] = flux / flux_err
        log.info(
            "PSF photometry %s: %d sources, %d with S/N >= 5",
            band,
            len(table),
            int(np.sum(np.nan_to_num(table[f"snr_{band}"]) >= 5)),
        )
    return table


def dolphot_columns_file(path):
    """The ``.columns`` file of a raw DOLPHOT output (``<name>.columns`` or ``<name>.phot.columns``), or None."""
    from pathlib import Path

    path = Path(path)
    for candidate in (Path(f"{path}.columns"), path.with_suffix(".columns")):
        if candidate.exists():
            return candidate
    return None


def parse_dolphot_columns(text: str, bands) -> dict:
    """{our column name: 0-based index} from the text of a DOLPHOT ``.columns`` file.

    Lines read "N. Description" (global) or "N. Description, CAMERA_FILTER" (combined photometry of
    a filter); lines of single exposures ("..., image (CAMERA_FILTER, exptime)") are skipped."""
    import re

    index = {}
    for line in text.splitlines():
        number, sep, desc = line.strip().partition(". ")
        if not sep or not number.isdigit():
            continue
        quantity, _, tag = desc.rpartition(", ")
        filt = re.fullmatch(r"[A-Za-z0-9]+_(F\d{3,4}[A-Za-z0-9]*)", tag.strip())
        if filt and "(" not in quantity:  # combined photometry of a filter
            band = filt.group(1).upper()
            if band in bands and quantity.strip() in DOLPHOT_PER_FILTER:
                index[f"{DOLPHOT_PER_FILTER[quantity.strip()]}_{band}"] = int(number) - 1
        elif not re.search(r"_F\d{3,4}", desc):  # global (single exposures name their filter in brackets)
            for prefix, name in DOLPHOT_GLOBAL.items():
                if desc.startswith(prefix) and name not in index:
                    index[name] = int(number) - 1
    return index


def read_dolphot_phot(path, columns_path, bands, params):
    """Table of a raw DOLPHOT photometry file: 0-based positions, fluxes (e-/s) per band, quality columns."""
    from astropy.table import Table

    index = parse_dolphot_columns(columns_path.read_text(), bands)
    required = ["x", "y", "sharpness", "object_type", f"flux_{cc.V_BAND}", f"flux_err_{cc.V_BAND}"]
    missing = [c for c in required if c not in index]
    if missing:
        raise wfutils.InputError(f"{columns_path}: no DOLPHOT column for {', '.join(missing)}")
    try:
        data = np.atleast_2d(np.loadtxt(path, dtype=float, ndmin=2))
    except ValueError as exc:
        raise wfutils.InputError(f"{path}: not a DOLPHOT photometry file ({exc})") from None
    if data.size and data.shape[1] <= max(index.values()):
        raise wfutils.InputError(
            f"{path}: {data.shape[1]} columns, but {columns_path} describes {max(index.values()) + 1}"
        )
    table = Table({name: data[:, j] if data.size else np.zeros(0) for name, j in index.items()})
    table["x"] = table["x"] - params["dolphot_pixel_origin"]
    table["y"] = table["y"] - params["dolphot_pixel_origin"]
    table["object_type"] = np.asarray(table["object_type"]).astype(int)
    keep = np.isin(table["object_type"], params["dolphot_object_types"])
    log.info(
        "DOLPHOT %s: %d sources, %d of object type %s",
        path,
        len(table),
        int(keep.sum()),
        params["dolphot_object_types"],
    )
    return table[keep]


def dolphot_catalog(path, bands, params=None):
    """A DOLPHOT catalog: raw ``.phot`` output (with its ``.columns`` file) or a converted table."""
    params = {**DEFAULTS, **(params or {})}
    columns_path = dolphot_columns_file(path)
    if columns_path is not None:
        from pathlib import Path

        if not Path(path).exists():
            raise wfutils.InputError(f"{path}: DOLPHOT photometry file does not exist")
        table = read_dolphot_phot(path, columns_path, bands, params)
    else:
        required = ["x", "y", "sharpness", f"flux_{cc.V_BAND}", f"flux_err_{cc.V_BAND}"]
        table = cc.read_table(path, required)
    for band in bands:
        if f"flux_{band}" in table.colnames:
            with np.errstate(divide="ignore", invalid="ignore"):
                table[f"snr_{band}"] = np.asarray(table[f"flux_{band}"], float) / np.asarray(
                    table[f"flux_err_{band}"], float
                )
    if "qfit" not in table.colnames:
        table["qfit"] = np.nan
    table["psf_ok"] = True
    table.meta["sharpness_kind"] = "dolphot"
    return table


def extended_positions(images: dict, psfs: dict, extended, params: dict, fit: bool):
    """(x, y, sharpness, qfit) of the extended finds: V-band PSF-fitted positions as every other
    source gets (``psf_positions``; the DAOStarFinder centroid where that fails) when ``fit``."""
    x = np.asarray(extended["x_centroid"], float)
    y = np.asarray(extended["y_centroid"], float)
    sharp = np.asarray(extended["sharpness"], float)
    qfit = np.full(len(x), np.nan)
    if fit and len(x):
        sci, err = images[cc.V_BAND]
        x, y, ok, res = psf_positions(sci, err, psfs[cc.V_BAND], x, y, params)
        qfit = np.where(ok, res["qfit"], np.nan)
    return x, y, sharp, qfit


def merged_sources(points, detections, params, from_dolphot: bool, extended=None):
    """Source list for aperture photometry: point sources plus unmatched DAOStarFinder detections,
    plus the ``extended`` (x, y, sharpness, qfit) finds farther than ``match_radius_px`` from those."""
    from astropy.table import Table

    x = np.asarray(points["x"], float)
    y = np.asarray(points["y"], float)
    origin = np.full(len(x), "dolphot" if from_dolphot else "psf", dtype="<U7")
    if not from_dolphot:
        origin[~np.asarray(points["psf_ok"], bool)] = "dao"
    sharp = np.asarray(points["sharpness"], float)
    qfit = np.asarray(points["qfit"], float)
    if from_dolphot and len(detections):
        dx, dy = np.asarray(detections["x_centroid"], float), np.asarray(detections["y_centroid"], float)
        unmatched = match_nearest(dx, dy, x, y, params["match_radius_px"]) < 0
        x, y = np.concatenate([x, dx[unmatched]]), np.concatenate([y, dy[unmatched]])
        origin = np.concatenate([origin, np.full(int(unmatched.sum()), "dao", dtype="<U7")])
        sharp = np.concatenate([sharp, np.asarray(detections["sharpness"], float)[unmatched]])
        qfit = np.concatenate([qfit, np.full(int(unmatched.sum()), np.nan)])
        log.info("merged %d DOLPHOT sources and %d DAOStarFinder-only detections", len(points), int(unmatched.sum()))
    if extended is not None and len(extended[0]):
        wx, wy, wsharp, wqfit = extended
        unmatched = match_nearest(wx, wy, x, y, params["match_radius_px"]) < 0
        x, y = np.concatenate([x, wx[unmatched]]), np.concatenate([y, wy[unmatched]])
        origin = np.concatenate([origin, np.full(int(unmatched.sum()), "wide", dtype="<U7")])
        sharp = np.concatenate([sharp, wsharp[unmatched]])
        qfit = np.concatenate([qfit, wqfit[unmatched]])
        log.info("merged %d extended sources of the wide search", int(unmatched.sum()))
    table = Table()
    table["id"] = np.arange(1, len(x) + 1)
    table["x"], table["y"], table["origin"], table["sharpness"], table["qfit"] = x, y, origin, sharp, qfit
    table["ps_id"] = np.concatenate([np.asarray(points["id"], int), np.zeros(len(x) - len(points), int)])
    return table


def detect(images: dict, psfs: dict, params: dict, dolphot=None):
    """(merged sources, point sources) Tables from the images {band: (sci, err)} and PSF models."""
    sci, err = images[cc.V_BAND]
    bkg, noise = smooth_background(sci, int(params["bkg_box_px"]), int(params["bkg_filter_px"]), rms=True)
    noise = np.where(np.isfinite(err), np.minimum(noise, err), noise)  # never above the ERR map
    sub = {
        band: (
            s
            - (
                bkg
                if band == cc.V_BAND
                else smooth_background(s, int(params["bkg_box_px"]), int(params["bkg_filter_px"]))
            ),
            e,
        )
        for band, (s, e) in images.items()
    }
    detections = find_sources(sub[cc.V_BAND][0], noise, params)
    log.info(
        "DAOStarFinder (FWHM %.1f px, %.1f sigma): %d detections", params["fwhm_px"], params["nsigma"], len(detections)
    )
    extended = find_extended(sub[cc.V_BAND][0], noise, detections, params)
    if params["wide_fwhm_px"]:
        log.info(
            "wide search (FWHM %.1f px, %.1f sigma): %d extended sources the first search missed",
            params["wide_fwhm_px"],
            params["wide_nsigma"],
            len(extended),
        )
    first_pass = {}
    if dolphot is not None:
        points = dolphot_catalog(dolphot, list(images), params)
    else:
        points = point_source_catalog(sub, psfs, detections, params, noise=noise, first_pass=first_pass)
        points.meta["sharpness_kind"] = "daofind"
    points["id"] = np.arange(1, len(points) + 1)
    points["origin"] = "dolphot" if dolphot is not None else "psf"
    first = points if dolphot is not None else points[np.asarray(points["psf_pass"]) == 1]
    if first_pass:  # the source list keeps the first-pass fits (the residual stars' refits move only points)
        first = first.copy()
        for key, value in first_pass.items():
            first[key] = value
    wide = extended_positions(sub, psfs, extended, params, fit=dolphot is None)
    return merged_sources(first, detections, params, dolphot is not None, wide), points


# --------------------------------------------------------------------------- I/O and entry point
def parse_band_paths(items, what):
    out = {}
    for item in items or []:
        band, sep, path = item.partition("=")
        if not sep:
            raise wfutils.InputError(f"--{what} {item!r} is not BAND=PATH")
        out[band.strip().upper()] = path
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", required=True, help="BAND=DRC file (F555W required)")
    parser.add_argument("--psf", action="append", default=[], help="BAND=PSF model FITS (OVERSAMP card)")
    parser.add_argument("--dolphot", help="DOLPHOT catalog (table with x, y, flux_<BAND>, ...) instead of PSF fitting")
    parser.add_argument("--sources", required=True, help="merged source list (ECSV)")
    parser.add_argument("--pointsources", required=True, help="point-source catalog (ECSV; .fits also written)")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    paths = parse_band_paths(args.image, "image")
    if cc.V_BAND not in paths:
        raise wfutils.InputError(f"--image {cc.V_BAND}=... (the V band) is required")
    psf_paths = parse_band_paths(args.psf, "psf")
    if args.dolphot is None:
        missing = [b for b in paths if b not in psf_paths]
        if missing:
            raise wfutils.InputError(f"no --psf for band(s) {', '.join(missing)} (or give --dolphot)")
    images = {b: cc.read_drc(p, b)[:2] for b, p in paths.items()}
    shapes = {b: im[0].shape for b, im in images.items()}
    if len(set(shapes.values())) > 1:
        raise wfutils.InputError(f"images are not on one pixel grid: shapes {shapes}")
    psfs = {b: psf_model_from(cc.read_psf_image(p), cc.OVERSAMPLE) for b, p in psf_paths.items()}
    sources, points = detect(images, psfs, params, args.dolphot)
    inputs = list(paths.values()) + list(psf_paths.values())
    cc.write_table(sources, args.sources, inputs, "detect_sources")
    cc.write_table(points, args.pointsources, inputs, "detect_sources")
    if args.pointsources.endswith(".ecsv"):
        cc.write_table(points, args.pointsources[: -len(".ecsv")] + ".fits", inputs, "detect_sources")
    log.info("%d sources (%d point sources) written", len(sources), len(points))


if __name__ == "__main__":
    wfutils.run_cli(main)
