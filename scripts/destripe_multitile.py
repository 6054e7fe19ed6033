"""Multi-exposure 1/f destriping of NIRCam exposures of one band (PHANGS-JWST, Williams et al. 2024, Sect. 3.6.2).

Single-exposure destriping (``destripe.py``) removes the stripes on small scales but cannot
tell large-scale "ripples" from real emission.  Real structure is fixed on the sky while the
stripes of different exposures are independent, so:

Pass 1
    For each exposure, the sigma-clipped median of all *other* overlapping exposures is built
    on a common sky grid and resampled onto the exposure.  The difference image holds no real
    sky, only this exposure's stripes (minus a diluted mix of the others'); its sigma-clipped
    row medians per amplifier (full-row fallback where more than 80% of an amplifier-row is
    masked) are subtracted.  ``iterations`` > 1 repeats this on the corrected exposures.
Pass 2 (``large_scale``)
    Stripes common to the overlapping exposures survive in their median.  The stacked
    (median) image of all corrected exposures is median-filtered along the axis perpendicular
    to the stripes at a large scale (default a tenth of the detector), its own stripes are
    estimated as the row medians of (stack - filtered stack) and removed, and each exposure
    then loses the full-row (not per-amplifier) clipped medians of its difference from this
    cleaned stack.

Our additions (parameters; the published behaviour is the default where it differs):

* ``match_resampling`` (off): the exposure is compared after the same two resamplings
  (detector -> grid -> detector) as the median of the others, so that interpolation
  smoothing of sources does not leave a sky-fixed residual; such residuals are common to
  all exposures and would otherwise accumulate, since nothing constrains them.
* ``joint`` (off): before pass 1, solve for every exposure's large-scale stripes at once by
  least squares (the "destriping" of map-making: data = sky + per-exposure offsets + noise,
  the sky eliminated as the weighted mean of the exposures on the grid; Kurki-Suonio et al.
  2009, A&A 506, 1511).  The offsets are per amplifier, linear between knots every
  ``joint_knot_rows`` rows; a ridge term (``joint_ridge`` times the mean knot weight) damps the
  patterns the overlaps barely constrain, and pixels whose residual from the sky is beyond
  ``mask_nsigma`` robust sigma (sources, resampling residuals) are dropped and the solve
  repeated (``joint_reweights``).  Pass 1's row medians of differences see an exposure's
  stripes where they overlap each other exposure separately; only the joint solve ties
  amplifiers and detectors together through their partial overlaps.
* ``consensus`` (off): subtract k/(k+1) of the difference for k overlapping others, which
  leaves the mean of the k+1 exposures instead of swapping an exposure's stripes for the
  others' (the full difference oscillates when iterated).  A pattern fixed to sky rows
  cannot be told from sky by any difference of exposures taken at one position angle: the
  mean of all exposures' stripes along each sky row is out of reach of pass 1 (``tests/
  bench/destripe.py`` reports this floor, ``overlap_floor``).

Inputs must be NIRCam exposures of one band whose background levels agree (run after level
matching; on the simulator, switch the per-exposure background offsets off) and whose WCSs
are aligned.  Outputs keep the input file names under ``--out-dir``.

Resampling: ``reproject="fast"`` (default) evaluates the exact WCS mapping on a coarse grid,
fits a cubic polynomial to it (checked to 0.01 pixel, else falls back) and interpolates the
data bilinearly with ``scipy.ndimage.map_coordinates``; ``reproject="interp"`` calls
``reproject.reproject_interp`` (bilinear) on every pixel, ~10x slower.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import destripe
from wflib import masks, wfutils

log = logging.getLogger("destripe_multitile")

DEFAULTS = {
    "clip_sigma": 3.0,
    "maxiters": 5,
    "fallback_fraction": 0.8,
    # outlier mask of the difference images (pjpipe: 3 sigma, 5 pixels, 7-pixel dilation)
    "mask_nsigma": 3.0,
    "mask_npixels": 5,
    "mask_dilate": 7,
    "iterations": 1,
    # joint least-squares pass before pass 1 (False: published)
    "joint": False,
    "joint_knot_rows": 16,
    "joint_ridge": 0.005,
    "joint_max_iterations": 80,
    "joint_reweights": 1,
    # scale the pass-1 difference by k/(k+1) for k overlapping others (False: published, full difference)
    "consensus": False,
    # compare the exposure resampled to the grid and back (True) or as observed (False, published)
    "match_resampling": False,
    "large_scale": True,
    # median-filter length of pass 2 in rows; None -> a tenth of the detector rows (odd)
    "large_scale_length": None,
    "reproject": "fast",
    "n_amplifiers": 4,
    "reference_border": 4,
}


@dataclass
class Exposure:
    """One exposure in memory: data with unusable pixels as NaN, its WCS and bounding box on the common grid."""

    name: str
    data: np.ndarray  # (ny, nx) float32, NaN where unusable
    usable: np.ndarray  # (ny, nx) bool
    wcs: object  # astropy WCS of the detector grid
    subarray: bool = False
    box: tuple = (0, 0, 0, 0)  # y0, y1, x0, x1 on the common grid


# --------------------------------------------------------------------------- geometry and resampling
def common_grid(wcs_list, shapes, margin: int = 2):
    """TAN grid with the orientation and pixel scale of the first exposure covering all footprints.

    The grid is the linear (CD) part of the first exposure's WCS, extended; detector rows of
    exposures taken at the same position angle stay grid rows.  Returns (wcs, shape, boxes)
    with one (y0, y1, x0, x1) box per exposure on the grid.
    """
    from astropy.wcs import WCS

    ref = wcs_list[0]
    grid = WCS(naxis=2)
    grid.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    grid.wcs.crval = ref.wcs.crval
    grid.wcs.cd = ref.pixel_scale_matrix
    grid.wcs.crpix = ref.wcs.crpix
    corners = []
    for wcs, (ny, nx) in zip(wcs_list, shapes, strict=True):
        edge = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [nx - 0.5, ny - 0.5], [-0.5, ny - 0.5]])
        corners.append(grid.wcs_world2pix(wcs.wcs_pix2world(edge, 0), 0))
    allc = np.concatenate(corners)
    xmin, ymin = np.floor(allc.min(axis=0)) - margin
    xmax, ymax = np.ceil(allc.max(axis=0)) + margin
    grid.wcs.crpix = [ref.wcs.crpix[0] - xmin, ref.wcs.crpix[1] - ymin]
    shape = (int(ymax - ymin) + 1, int(xmax - xmin) + 1)
    boxes = []
    for c in corners:
        c = c - [xmin, ymin]
        x0, y0 = np.maximum(np.floor(c.min(axis=0)).astype(int) - margin, 0)
        x1, y1 = np.minimum(np.ceil(c.max(axis=0)).astype(int) + margin + 1, [shape[1], shape[0]])
        boxes.append((int(y0), int(y1), int(x0), int(x1)))
    return grid, shape, boxes


@dataclass
class PixelMap:
    """Input-pixel coordinates of every pixel of an output grid, as a fitted polynomial.

    ``offset`` (y0, x0) places the output grid inside ``wcs_out`` (a cutout).  The exact world
    mapping is evaluated on a coarse grid every ``step`` pixels and fitted with a polynomial of
    ``degree`` in (x, y); if the fit misses by more than 0.01 pixel (or ``method`` is not
    "fast") the exact mapping is evaluated on every pixel when ``coords`` is called.
    """

    wcs_out: object
    shape_out: tuple
    wcs_in: object
    offset: tuple = (0, 0)
    step: int = 64
    degree: int = 3
    method: str = "fast"

    def __post_init__(self):
        self.coef = None
        if self.method != "fast":
            return
        ny, nx = self.shape_out
        # at least degree + 3 nodes per axis so that the fit is overdetermined
        gy = np.linspace(0, ny - 1, max(self.degree + 3, math.ceil((ny - 1) / self.step) + 1))
        gx = np.linspace(0, nx - 1, max(self.degree + 3, math.ceil((nx - 1) / self.step) + 1))
        cy, cx = np.meshgrid(gy, gx, indexing="ij")
        yin, xin = self.exact(cy, cx)
        self.scale = (max(ny - 1, 1), max(nx - 1, 1))
        self.terms = [(i, j) for i in range(self.degree + 1) for j in range(self.degree + 1 - i)]
        design = np.column_stack(
            [(cx.ravel() / self.scale[1]) ** i * (cy.ravel() / self.scale[0]) ** j for i, j in self.terms]
        )
        coef_y, *_ = np.linalg.lstsq(design, yin.ravel(), rcond=None)
        coef_x, *_ = np.linalg.lstsq(design, xin.ravel(), rcond=None)
        worst = max(np.abs(design @ coef_y - yin.ravel()).max(), np.abs(design @ coef_x - xin.ravel()).max())
        if worst > 0.01:
            log.info("polynomial pixel mapping off by %.3f pixel; evaluating the WCS on every pixel", worst)
        else:
            self.coef = (coef_y, coef_x)

    def exact(self, yy, xx):
        y0, x0 = self.offset
        world = self.wcs_out.wcs_pix2world(np.column_stack([xx.ravel() + x0, yy.ravel() + y0]), 0)
        pix = self.wcs_in.wcs_world2pix(world, 0)
        return pix[:, 1].reshape(yy.shape), pix[:, 0].reshape(yy.shape)

    def coords(self):
        """(y_in, x_in) float32 arrays of the output grid's shape."""
        ny, nx = self.shape_out
        if self.coef is None:
            yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
            y, x = self.exact(yy, xx)
            return y.astype(np.float32), x.astype(np.float32)
        ux = np.arange(nx) / self.scale[1]
        uy = np.arange(ny) / self.scale[0]
        out = []
        for coef in self.coef:
            total = np.zeros((ny, nx), np.float32)
            for j in range(self.degree + 1):
                # sum over i of a_ij x^i, times y^j: one full-size update per power of y
                poly = sum(c * ux**i for (i, jj), c in zip(self.terms, coef, strict=True) if jj == j)
                total += (uy**j).astype(np.float32)[:, None] * np.asarray(poly, np.float32)[None, :]
            out.append(total)
        return out[0], out[1]


def resample(data: np.ndarray, coords) -> np.ndarray:
    """Bilinear interpolation of ``data`` (NaN = no data) at (y, x) pixel coordinates; NaN outside."""
    from scipy.ndimage import map_coordinates

    yin, xin = coords
    ny, nx = data.shape
    out = map_coordinates(np.asarray(data, np.float32), [yin, xin], order=1, mode="constant", cval=np.nan)
    outside = (yin < -0.5) | (yin > ny - 0.5) | (xin < -0.5) | (xin > nx - 0.5)
    out[outside] = np.nan
    return out.astype(np.float32)


def reproject_exact(data, wcs_in, wcs_out, shape_out):
    """``reproject.reproject_interp`` (bilinear), the reference the fast path is checked against."""
    from reproject import reproject_interp

    return reproject_interp((data, wcs_in), wcs_out, shape_out=shape_out, order="bilinear", return_footprint=False)


# --------------------------------------------------------------------------- the two passes
def clipped_stack(values: np.ndarray, clip_sigma: float, maxiters: int) -> np.ndarray:
    """Per-pixel sigma-clipped median over the first axis of a (k, ny, nx) stack with NaNs.

    Written for the few (k < ~20) exposures that overlap a pixel: sort along the stack,
    take the median of the finite values, reject those further than ``clip_sigma`` standard
    deviations, repeat.
    """
    if values.shape[0] == 0:
        return np.full(values.shape[1:], np.nan, np.float32)
    v = np.sort(np.asarray(values, np.float32), axis=0)
    med = np.full(v.shape[1:], np.nan, np.float32)
    for _ in range(max(1, maxiters)):
        n = np.isfinite(v).sum(axis=0)
        lo = np.clip((n - 1) // 2, 0, v.shape[0] - 1)[None]
        hi = np.clip(n // 2, 0, v.shape[0] - 1)[None]
        med = 0.5 * (np.take_along_axis(v, lo, 0)[0] + np.take_along_axis(v, hi, 0)[0])
        med[n == 0] = np.nan
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels with one or no value
            std = np.nanstd(v, axis=0) if v.shape[0] > 1 else np.zeros_like(med)
            reject = np.abs(v - med[None]) > clip_sigma * std[None]
        if not reject.any():
            break
        v[reject] = np.nan
        v.sort(axis=0)
    return med.astype(np.float32)


def difference_mask(diff: np.ndarray, usable: np.ndarray, p) -> np.ndarray:
    """Positive and negative outliers of a difference image (residual sources, misalignment)."""
    pos = masks.threshold_mask(diff, usable, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"])
    neg = masks.threshold_mask(
        diff, usable & ~pos, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"], negative=True
    )
    return (pos | neg) & usable


def amp_row_model(diff, usable, p, subarray: bool, per_amplifier: bool = True):
    """Clipped row medians of a difference image (per amplifier with full-row fallback, or full rows).

    Returns the (ny, nx) model, zero mean over the usable pixels, zero outside the science region.
    """
    ny, nx = diff.shape
    region = destripe.science_region(diff.shape, int(p["reference_border"]), subarray)
    amps = destripe.amplifier_slices(nx, int(p["n_amplifiers"]), subarray or not per_amplifier)
    use = usable & region & np.isfinite(diff)
    use &= ~difference_mask(diff, use, p)
    level = np.median(diff[use]) if use.any() else 0.0
    profiles, _ = destripe.row_profiles(
        diff - level, use, amps, region, p["clip_sigma"], p["maxiters"], p["fallback_fraction"]
    )
    rows = np.zeros_like(profiles)
    rs = destripe._science_rows(region)
    for a in range(len(amps)):
        rows[a, rs] = masks.fill_gaps(profiles[a, rs])
    return destripe.finish_model(rows, np.zeros(nx), amps, region, usable & region)


def build_maps(exposures, grid, method):
    """Per exposure: (detector -> its box of the grid, grid box -> detector) pixel maps."""
    maps = []
    for exp in exposures:
        y0, y1, x0, x1 = exp.box
        forward = PixelMap(grid, (y1 - y0, x1 - x0), exp.wcs, offset=(y0, x0), method=method)
        backward = PixelMap(exp.wcs, exp.data.shape, grid, offset=(-y0, -x0), method=method)
        maps.append((forward, backward))
    return maps


def build_cutouts(exposures, maps):
    """Each exposure resampled onto its box of the common grid."""
    return [resample(exp.data, forward.coords()) for exp, (forward, _) in zip(exposures, maps, strict=True)]


def overlap(a, b):
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def median_of_others(i, exposures, cutouts, p) -> tuple[np.ndarray, np.ndarray]:
    """Clipped median of the other exposures on exposure ``i``'s box of the common grid, and their count."""
    box = exposures[i].box
    h, w = box[1] - box[0], box[3] - box[2]
    layers = []
    for j, exp in enumerate(exposures):
        if j == i:
            continue
        ov = overlap(box, exp.box)
        if ov is None:
            continue
        layer = np.full((h, w), np.nan, np.float32)
        layer[ov[0] - box[0] : ov[1] - box[0], ov[2] - box[2] : ov[3] - box[2]] = cutouts[j][
            ov[0] - exp.box[0] : ov[1] - exp.box[0], ov[2] - exp.box[2] : ov[3] - exp.box[2]
        ]
        if np.isfinite(layer).any():
            layers.append(layer)
    if not layers:
        return np.full((h, w), np.nan, np.float32), np.zeros((h, w), np.float32)
    stack = np.stack(layers)
    return clipped_stack(stack, p["clip_sigma"], p["maxiters"]), np.isfinite(stack).sum(axis=0).astype(np.float32)


def pass_one(exposures, maps, p):
    """Per-exposure models from the difference with the median of the other exposures."""
    cutouts = build_cutouts(exposures, maps)
    models = []
    for i, exp in enumerate(exposures):
        others, count = median_of_others(i, exposures, cutouts, p)
        back = maps[i][1].coords()
        # the exposure itself goes through the same two resamplings as the others, so that
        # interpolation smoothing of sources does not leave a sky-fixed residual in the difference
        own = resample(cutouts[i], back) if p["match_resampling"] else exp.data
        diff = own - resample(others, back)
        if p["consensus"]:
            # k others: removing k/(k+1) of the difference leaves the mean of all k+1 exposures,
            # which is all the overlap constrains (a pattern common to them looks like sky)
            k = resample(count, back)
            diff *= k / (k + 1.0)
        usable = exp.usable & np.isfinite(diff)
        model = amp_row_model(diff, usable, p, exp.subarray, per_amplifier=True)
        models.append(model)
        log.info(
            "pass 1 %d/%d %s: %.1f%% of pixels overlap other exposures, stripe model rms %.4g",
            i + 1,
            len(exposures),
            exp.name,
            100 * usable.sum() / max(exp.usable.sum(), 1),
            float(np.std(model[usable])) if usable.any() else 0.0,
        )
    return models


@dataclass
class JointPart:
    """One exposure on its grid box for the joint solve: data, weights and the knots each pixel reads."""

    data: np.ndarray  # float32, 0 where unusable
    weight: np.ndarray  # float32, 0 or 1
    k0: np.ndarray  # int32 index of the knot below (amplifier-major)
    k1: np.ndarray  # int32 index of the knot above
    frac: np.ndarray  # float32 weight of k1
    n_knots: int  # knots per amplifier
    n_amp: int

    def gather(self, knots: np.ndarray) -> np.ndarray:
        return (1.0 - self.frac) * knots[self.k0] + self.frac * knots[self.k1]

    def scatter(self, image: np.ndarray) -> np.ndarray:
        size = self.n_knots * self.n_amp
        low = np.bincount(self.k0.ravel(), ((1.0 - self.frac) * image).ravel(), minlength=size)
        return low + np.bincount(self.k1.ravel(), (self.frac * image).ravel(), minlength=size)


def joint_part(exp: Exposure, forward: PixelMap, p) -> JointPart:
    """Resample an exposure onto its grid box and index every grid pixel to its amplifier and row knots."""
    yin, xin = forward.coords()
    data = resample(exp.data, (yin, xin))
    ny, nx = exp.data.shape
    row, col = np.rint(yin).astype(np.int32), np.rint(xin).astype(np.int32)
    inside = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    row, col = np.clip(row, 0, ny - 1), np.clip(col, 0, nx - 1)
    ok = inside & np.isfinite(data) & exp.usable[row, col]
    n_amp = len(destripe.amplifier_slices(nx, int(p["n_amplifiers"]), exp.subarray))
    step = int(p["joint_knot_rows"])
    n_knots = (ny - 1) // step + 2
    pos = np.clip(yin, 0, ny - 1) / step
    k0 = np.floor(pos).astype(np.int32)
    amp_base = (col // (nx // n_amp)) * n_knots
    return JointPart(
        np.where(ok, data, 0.0).astype(np.float32),
        ok.astype(np.float32),
        (amp_base + k0).astype(np.int32),
        (amp_base + np.minimum(k0 + 1, n_knots - 1)).astype(np.int32),
        (pos - k0).astype(np.float32),
        n_knots,
        n_amp,
    )


def grid_mean(exposures, parts, shape, images) -> np.ndarray:
    """Weighted mean over the exposures of per-exposure images on their grid boxes (0 where no weight)."""
    total, weight = np.zeros(shape), np.zeros(shape)
    for exp, part, image in zip(exposures, parts, images, strict=True):
        y0, y1, x0, x1 = exp.box
        total[y0:y1, x0:x1] += part.weight * image
        weight[y0:y1, x0:x1] += part.weight
    return np.where(weight > 0, total / np.maximum(weight, 1e-12), 0.0)


def joint_sky(exposures, parts, shape, knots) -> np.ndarray:
    """The sky of the joint model: weighted mean over the exposures of (data - offsets)."""
    residuals = [part.data - part.gather(kn) for part, kn in zip(parts, knots, strict=True)]
    return grid_mean(exposures, parts, shape, residuals)


def joint_normal(exposures, parts, shape, knots, ridge) -> list[np.ndarray]:
    """Normal-equation operator on the knots with the sky eliminated, plus the ridge term."""
    offsets = [part.gather(kn) for part, kn in zip(parts, knots, strict=True)]
    mean = grid_mean(exposures, parts, shape, offsets)
    out = []
    for exp, part, kn, off in zip(exposures, parts, knots, offsets, strict=True):
        y0, y1, x0, x1 = exp.box
        out.append(part.scatter(part.weight * (off - mean[y0:y1, x0:x1])) + ridge * kn)
    return out


def solve_knots(exposures, parts, shape, p) -> list[np.ndarray]:
    """Preconditioned conjugate gradients for the knots minimising sum w (data - offset - sky)^2 + ridge |knots|^2."""
    zero = [np.zeros(part.n_knots * part.n_amp) for part in parts]
    sky = joint_sky(exposures, parts, shape, zero)
    rhs = []
    for exp, part in zip(exposures, parts, strict=True):
        y0, y1, x0, x1 = exp.box
        rhs.append(part.scatter(part.weight * (part.data - sky[y0:y1, x0:x1])))
    counts = [part.scatter(part.weight) for part in parts]
    positive = np.concatenate([c[c > 0] for c in counts])
    ridge = float(p["joint_ridge"]) * (float(positive.mean()) if positive.size else 1.0)
    precond = [c + ridge + 1e-12 for c in counts]

    def dot(u, v):
        return sum(float(np.dot(a, b)) for a, b in zip(u, v, strict=True))

    x = [z.copy() for z in zero]
    r = [b.copy() for b in rhs]
    z = [ri / m for ri, m in zip(r, precond, strict=True)]
    d = [zi.copy() for zi in z]
    rz = start = dot(r, z)
    done = 0
    # stop when the preconditioned residual norm is 1e-3 of the start: tighter changes the
    # bench's residual ratios by < 0.001 and costs 3-4 times the iterations
    while done < int(p["joint_max_iterations"]) and rz > 1e-6 * start:
        hd = joint_normal(exposures, parts, shape, d, ridge)
        alpha = rz / dot(d, hd)
        x = [xi + alpha * di for xi, di in zip(x, d, strict=True)]
        r = [ri - alpha * hi for ri, hi in zip(r, hd, strict=True)]
        z = [ri / m for ri, m in zip(r, precond, strict=True)]
        rz_new = dot(r, z)
        d = [zi + (rz_new / rz) * di for zi, di in zip(z, d, strict=True)]
        rz, done = rz_new, done + 1
    log.info("joint solve: %d conjugate-gradient iterations, residual %.1e of the start", done, rz / max(start, 1e-300))
    return x


def reject_residuals(exposures, parts, shape, knots, p) -> None:
    """Drop pixels whose residual from the joint sky is beyond ``mask_nsigma`` robust sigma (grown by 2 px)."""
    from scipy.ndimage import binary_dilation

    sky = joint_sky(exposures, parts, shape, knots)
    for exp, part, kn in zip(exposures, parts, knots, strict=True):
        y0, y1, x0, x1 = exp.box
        good = part.weight > 0
        if not good.any():
            continue
        resid = part.data - part.gather(kn) - sky[y0:y1, x0:x1]
        centre = np.median(resid[good])
        spread = 1.4826 * np.median(np.abs(resid[good] - centre))
        bad = binary_dilation(good & (np.abs(resid - centre) > p["mask_nsigma"] * spread), iterations=2)
        part.weight[bad] = 0.0


def joint_pass(exposures, shape, maps, p):
    """Large-scale stripes of all exposures from one least-squares solve (see ``joint`` above)."""
    parts = [joint_part(exp, forward, p) for exp, (forward, _) in zip(exposures, maps, strict=True)]
    knots = [np.zeros(part.n_knots * part.n_amp) for part in parts]
    for _ in range(int(p["joint_reweights"]) + 1):
        reject_residuals(exposures, parts, shape, knots, p)
        knots = solve_knots(exposures, parts, shape, p)
    models = []
    for exp, part, kn in zip(exposures, parts, knots, strict=True):
        ny, nx = exp.data.shape
        rows_at = np.arange(ny) / int(p["joint_knot_rows"])
        per_amp = kn.reshape(part.n_amp, part.n_knots)
        rows = np.stack([np.interp(rows_at, np.arange(part.n_knots), k) for k in per_amp])
        region = destripe.science_region(exp.data.shape, int(p["reference_border"]), exp.subarray)
        amps = destripe.amplifier_slices(nx, int(p["n_amplifiers"]), exp.subarray)
        model = destripe.finish_model(rows, np.zeros(nx), amps, region, exp.usable & region)
        models.append(model)
        log.info(
            "joint %s: stripe model rms %.4g", exp.name, float(np.std(model[exp.usable])) if exp.usable.any() else 0.0
        )
    return models


def stack_image(exposures, cutouts, shape, p, rows_per_chunk: int = 256) -> np.ndarray:
    """Clipped median of all exposures on the common grid, built in chunks of rows."""
    stack = np.full(shape, np.nan, np.float32)
    for r0 in range(0, shape[0], rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, shape[0])
        layers = []
        for exp, cut in zip(exposures, cutouts, strict=True):
            y0, y1, x0, x1 = exp.box
            a, b = max(r0, y0), min(r1, y1)
            if a >= b:
                continue
            layer = np.full((r1 - r0, shape[1]), np.nan, np.float32)
            layer[a - r0 : b - r0, x0:x1] = cut[a - y0 : b - y0]
            layers.append(layer)
        if layers:
            stack[r0:r1] = clipped_stack(np.stack(layers), p["clip_sigma"], p["maxiters"])
    return stack


def stripe_axis(exposures, grid) -> int | None:
    """Grid axis along which the stripes of every exposure vary (0: y, 1: x), None if orientations differ."""
    angles = []
    for exp in exposures:
        ny, nx = exp.data.shape
        p0 = grid.wcs_world2pix(exp.wcs.wcs_pix2world([[nx / 2, ny / 2], [nx / 2 + 100, ny / 2]], 0), 0)
        d = p0[1] - p0[0]
        angles.append(math.degrees(math.atan2(d[1], d[0])) % 180)
    angles = np.array(angles)
    dist0 = np.minimum(angles, 180 - angles)
    if np.all(dist0 < 10):
        return 0  # detector rows along grid x: stripes vary along y
    if np.all(np.abs(angles - 90) < 10):
        return 1
    return None


def smooth_along(image: np.ndarray, axis: int, length: int, max_window: int = 25) -> np.ndarray:
    """Running median of ``length`` pixels along ``axis`` (NaN gaps interpolated first, NaN kept).

    Long windows are evaluated on medians of blocks of ``length // max_window`` pixels along
    the axis and interpolated back: a large-scale smoothing does not need every pixel.
    """
    from scipy.ndimage import median_filter

    work = np.moveaxis(np.asarray(image, np.float32), axis, 0)
    n = work.shape[0]
    good = np.isfinite(work)
    col_ok = good.any(axis=0)
    idx = np.arange(n)
    filled = work.copy()
    for k in np.flatnonzero(col_ok & ~good.all(axis=0)):
        filled[~good[:, k], k] = np.interp(idx[~good[:, k]], idx[good[:, k]], work[good[:, k], k])
    filled[:, ~col_ok] = 0.0
    binning = max(1, int(length) // max_window)
    if binning > 1:
        nb = n // binning
        blocks = np.median(filled[: nb * binning].reshape(nb, binning, -1), axis=1)
        smooth_blocks = median_filter(blocks, size=(max(int(length) // binning, 1) | 1, 1), mode="reflect")
        centres = (np.arange(nb) + 0.5) * binning - 0.5
        out = np.empty_like(filled)
        for k in range(filled.shape[1]):
            out[:, k] = np.interp(idx, centres, smooth_blocks[:, k])
    else:
        out = median_filter(filled, size=(int(length) | 1, 1), mode="reflect")
    out = np.moveaxis(out, 0, axis)
    out[~np.isfinite(image)] = np.nan
    return out


def pass_two_length(n_rows: int, length=None) -> int:
    """Median-filter length (pixels) of pass 2: ``length``, or a tenth of the detector rows."""
    return length or max(3, n_rows // 10)


def pass_two(exposures, grid, shape, maps, p):
    """Large-scale pass: full-row medians of each exposure minus the stripe-cleaned stack."""
    axis = stripe_axis(exposures, grid)
    if axis is None:
        log.warning("exposures have different orientations; skipping the large-scale pass")
        return [np.zeros_like(e.data) for e in exposures]
    cutouts = build_cutouts(exposures, maps)
    stack = stack_image(exposures, cutouts, shape, p)
    length = pass_two_length(exposures[0].data.shape[0], p["large_scale_length"])
    smooth = smooth_along(stack, axis, length)
    log.info("pass 2: stack %s, median filter of %d pixels along grid axis %d", shape, length, axis)
    models = []
    for i, exp in enumerate(exposures):
        y0, y1, x0, x1 = exp.box
        back = maps[i][1].coords()
        s_i = resample(stack[y0:y1, x0:x1], back)
        sm_i = resample(smooth[y0:y1, x0:x1], back)
        usable = exp.usable & np.isfinite(s_i) & np.isfinite(sm_i)
        # the stack's own stripes, seen in this exposure's rows
        stack_stripes = amp_row_model(s_i - sm_i, usable, p, exp.subarray, per_amplifier=False)
        own = resample(cutouts[i], back) if p["match_resampling"] else exp.data
        diff = own - (s_i - stack_stripes)
        model = amp_row_model(diff, usable, p, exp.subarray, per_amplifier=False)
        models.append(model)
        log.info(
            "pass 2 %d/%d %s: stripe model rms %.4g", i + 1, len(exposures), exp.name, float(np.std(model[usable]))
        )
    return models


def destripe_exposures(exposures: list[Exposure], params: dict | None = None) -> list[np.ndarray]:
    """Multi-exposure stripe models (to subtract) for exposures of one band; see the module docstring."""
    p = resolve_params(params or {})
    grid, shape, boxes = common_grid([e.wcs for e in exposures], [e.data.shape for e in exposures])
    for exp, box in zip(exposures, boxes, strict=True):
        exp.box = box
    maps = build_maps(exposures, grid, p["reproject"])
    originals = [e.data.copy() for e in exposures]
    totals = [np.zeros_like(e.data) for e in exposures]
    try:
        if p["joint"]:
            for exp, total, model in zip(exposures, totals, joint_pass(exposures, shape, maps, p), strict=True):
                total += model
                exp.data = exp.data - model
        for iteration in range(int(p["iterations"])):
            models = pass_one(exposures, maps, p)
            for exp, total, model in zip(exposures, totals, models, strict=True):
                total += model
                exp.data = exp.data - model
            log.info("pass 1 iteration %d done", iteration + 1)
        if p["large_scale"]:
            models = pass_two(exposures, grid, shape, maps, p)
            for exp, total, model in zip(exposures, totals, models, strict=True):
                total += model
                exp.data = exp.data - model
    finally:
        for exp, orig in zip(exposures, originals, strict=True):
            exp.data = orig
    return totals


def resolve_params(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown destripe_multitile parameter(s): {', '.join(sorted(unknown))}")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None or k == "large_scale_length"}}
    if p["reproject"] not in ("fast", "interp"):
        raise wfutils.InputError(f"reproject must be 'fast' or 'interp', not {p['reproject']!r}")
    return p


# --------------------------------------------------------------------------- I/O
def detector_wcs(path, model):
    """Celestial FITS WCS of the SCI extension (the header approximation jwst writes), else from the gwcs."""
    from astropy.io import fits
    from astropy.wcs import WCS

    header = fits.getheader(path, "SCI")
    wcs = WCS(header)
    if wcs.has_celestial and wcs.naxis == 2:
        return wcs.celestial
    if model.meta.wcs is None:
        raise wfutils.InputError(f"{path}: no WCS in the SCI header or the datamodel")
    return WCS(model.meta.wcs.to_fits_sip())


def load_exposures(paths):
    """Open the inputs (NIRCam, one filter, same shape per detector) as Exposure objects."""
    exposures, filters = [], set()
    for path in paths:
        model = destripe.open_nircam_image(path)
        with model:
            data = np.asarray(model.data, np.float32)
            subarray = destripe.is_subarray(model)
            region = destripe.science_region(data.shape, DEFAULTS["reference_border"], subarray)
            usable = destripe.usable_pixels(data, model.dq, region)
            filters.add(model.meta.instrument.filter)
            wcs = detector_wcs(path, model)
        exposures.append(Exposure(Path(path).name, np.where(usable, data, np.nan), usable, wcs, subarray))
    if len(filters) > 1:
        raise wfutils.InputError(f"inputs mix filters {sorted(filters)}; give the exposures of one band")
    if len(exposures) < 2:
        raise wfutils.InputError("multi-exposure destriping needs at least two overlapping exposures")
    return exposures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="NIRCam exposures of one band and target (ImageModel FITS)")
    parser.add_argument("--out-dir", required=True, help="corrected exposures are written here, same file names")
    parser.add_argument("--params", default="{}", help="JSON dict of parameters (config section)")
    parser.add_argument("--joint", type=destripe.parse_bool, help="joint least-squares solve before pass 1 (false)")
    parser.add_argument("--iterations", type=int, help="pass-1 iterations (1)")
    parser.add_argument("--large-scale", type=destripe.parse_bool, help="run pass 2 (true)")
    parser.add_argument("--large-scale-length", type=int, help="pass-2 median filter length, pixels (rows/10)")
    parser.add_argument("--consensus", type=destripe.parse_bool, help="subtract k/(k+1) of the difference (false)")
    parser.add_argument(
        "--match-resampling", type=destripe.parse_bool, help="resample the exposure like the others (false)"
    )
    parser.add_argument("--fallback-fraction", type=float, help="masked amp-row fraction for the full-row fallback")
    parser.add_argument("--reproject", choices=("fast", "interp"), help="resampling (fast)")
    parser.add_argument("--noise-model-dir", help="also write each exposure's subtracted model (<name>_stripes.fits)")
    parser.add_argument("--qa-dir", help="also write a QA figure per exposure (<name>_multitile.png)")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise wfutils.InputError(f"--params is not valid JSON: {exc}") from exc
    cli_keys = (
        "joint",
        "iterations",
        "large_scale",
        "large_scale_length",
        "consensus",
        "match_resampling",
        "fallback_fraction",
        "reproject",
    )
    for key in cli_keys:
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    params = resolve_params(params)
    names = [Path(p).name for p in args.inputs]
    if len(set(names)) != len(names):
        raise wfutils.InputError("two inputs share a file name; outputs would overwrite each other")
    start = time.time()
    exposures = load_exposures(args.inputs)
    models = destripe_exposures(exposures, params)
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    out_dir = Path(args.out_dir)
    for path, model_array in zip(args.inputs, models, strict=True):
        with datamodels.open(path) as model:
            data = np.asarray(model.data, np.float32)
            good = np.isfinite(data)
            data[good] -= model_array[good]
            model.data = data
            wfutils.save_model(model, out_dir / Path(path).name, [path], args.config_hash, "destripe_multitile")
        stem = Path(path).name.removesuffix(".fits")
        if args.qa_dir:
            empty_mask = np.zeros(model_array.shape, np.uint8)
            result = destripe.StripeModel(model_array, empty_mask, np.zeros((1, 1)), np.zeros(1), {})
            destripe.qa_figure(
                data + model_array,
                result,
                f"{Path(path).name}: multi-exposure",
                Path(args.qa_dir) / f"{stem}_multitile.png",
            )
        if args.noise_model_dir:
            hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(model_array.astype(np.float32), name="STRIPES")])
            wfutils.write_hdulist(
                hdul,
                Path(args.noise_model_dir) / f"{stem}_stripes.fits",
                [path],
                args.config_hash,
                "destripe_multitile",
            )
    log.info("multi-exposure destriping of %d exposures took %.1f s", len(exposures), time.time() - start)


if __name__ == "__main__":
    wfutils.run_cli(main)
