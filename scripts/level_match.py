"""Level matching of overlapping images by weighted least squares (PHANGS-JWST Sec. 3.5).

Method. Every image is reprojected once onto a common north-up TAN grid (``reproject``,
native pixel scale). For every pair of images that overlap, the per-pixel differences in
the overlap are taken *including source pixels* (the overlaps of a nearby galaxy are full
of emission; there is no blank sky to clip to, which is why jwst's ``skymatch`` leaves
jumps), and their sigma-clipped median and RMS are measured. Untrustworthy pairs are
rejected (the Montage-like cuts of Sec. 3.5): overlap smaller than ``min_overlap_fraction``
of the mean overlap, overlap shorter than ``min_axis_fraction`` of the image along both
axes, difference RMS more than ``max_rms_sigma`` standard deviations above the mean RMS of
the other pairs. One offset per image (optionally a plane: offset + x/y slopes) then
minimises sum_pairs w_ij (x_i - x_j - d_ij)^2 with w_ij = n_ij/rms_ij^2 (the inverse variance of
the pair's median; ``weighting: rms`` gives the paper's 1/rms_ij^2): a real sparse linear
solve (``scipy.sparse.linalg.lsqr`` on the weighted design matrix), with the gauge fixed by
zero mean or by a reference image. A disconnected overlap graph is split into its
connected components, each solved on its own (with a warning).

Two stages (Sec. 3.5): first the dithers within a visit (stage ``visit``), then the stacks
- the median of each visit's matched dithers - against each other across the mosaic (stage
``mosaic``). By default (``group_by: visit_detector_part``) stage 1 matches the dithers of
each detector and detector part of a visit separately: the NIRCam short-wavelength chips of
one exposure and the MIRI imager and coronagraph copies from ``miri_lyot_split.py`` become
separate stacks, which the mosaic stage ties together through all their overlaps (with
each other across the chip gaps / dither offsets, and with the other visits). A thin
strip is then one weighted pair among many instead of the only link inside a visit.
A stage-1 group that falls apart into several overlap components gives one stack each.

Command line (one band; all images of the band in one call)::

    python scripts/level_match.py --out-dir DIR --report offsets.json [--qa-png graph.png]
        [--params JSON] [--log LOG] INPUT_cal.fits ...

writes ``DIR/<input file name>`` (level-matched copies: SCI minus the offset, other arrays
unchanged), the JSON report (offsets, per-stage pair statistics, rejected pairs and why,
components, formal errors) and a QA PNG of the overlap graphs coloured by pair residual.
``--params`` takes a JSON object with any of the keys of ``DEFAULTS``. Offsets are in
MJy/sr and are what was *subtracted*.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wflib import levels_common as lc
from wflib import wfutils

log = logging.getLogger("level_match")

DEFAULTS = {
    # "visit" then "mosaic" is the paper's two-stage scheme; ["mosaic"] matches all images at once.
    "stages": ["visit", "mosaic"],
    # Stage-1 groups: "visit_detector_part" matches the dithers of each detector and detector part
    # (MIRI imager / Lyot copies, NIRCam SW chips) of a visit, whose stacks the mosaic stage then
    # ties together; "visit" puts every image of a visit in one group.
    "group_by": "visit_detector_part",
    # "offset": one constant per image; "plane": offset + slopes (MJy/sr per arcmin) per image.
    "model": "offset",
    # "mean": offsets of the (largest) component sum to zero; "reference": the reference image is not changed.
    "gauge": "mean",
    # Reference image for gauge "reference": a substring of its file name; null = the most connected image.
    "reference": None,
    # Common grid pixel scale (arcsec); null = median native pixel scale of the inputs.
    "pixel_scale_arcsec": None,
    "interpolation": "bilinear",
    # DQ flags whose pixels never enter a difference (besides NaN).
    "bad_flags": list(lc.DEFAULT_BAD_FLAGS),
    "clip_sigma": 3.0,
    "clip_maxiters": 10,
    # Centre of the clipped pixel differences: "median" (paper) or "mean" (lower noise).
    "statistic": "median",
    # Fewer usable overlap pixels than this: the pair does not overlap at all (NaN-filled overlaps).
    "min_overlap_pixels": 50,
    # Rejection cuts (Sec. 3.5); null disables a cut.
    "min_overlap_fraction": 0.002,
    "min_axis_fraction": 0.25,
    "max_rms_sigma": 2.0,
    # Pair weights: "error" = n/rms^2 (inverse variance of the clipped median: a thin-strip overlap
    # counts less than a full dither overlap), "rms" = 1/rms^2 (the paper's weighting).
    "weighting": "error",
    # Combination of a visit's matched images into its stack for the mosaic stage.
    "stack_statistic": "median",
    # Plane model: each overlap is split into cells x cells blocks, one measurement per block.
    "plane_cells": 3,
    # Formal errors: each overlap is cut into this many equal-count chunks along its longer axis
    # and its error is the scatter of the chunk centres / sqrt(chunks), never below the value for
    # independent pixels (resampled pixels are correlated). 0: independent pixels only.
    "error_chunks": 16,
    # Warn about (and list in the report) images whose formal offset error exceeds this (MJy/sr):
    # e.g. Lyot parts tied to the mosaic only by a thin strip. null disables.
    "warn_formal_error_mjysr": 0.01,
}
MODEL_TERMS = {"offset": 1, "plane": 3}
SLOPE_UNIT_ARCSEC = 60.0  # plane slopes are per arcmin of grid offset


# --------------------------------------------------------------------------- pure functions: pairs
@dataclass
class Projected:
    """An image (or a stack) on the common grid: a cutout and its corner (y0, x0) in grid pixels."""

    array: np.ndarray
    y0: int
    x0: int

    @property
    def box(self):
        ny, nx = self.array.shape
        return self.y0, self.y0 + ny, self.x0, self.x0 + nx

    def extent(self):
        """(height, width) in grid pixels of the finite pixels."""
        ys, xs = np.nonzero(np.isfinite(self.array))
        if ys.size == 0:
            return 0, 0
        return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


@dataclass
class Pair:
    """Statistics of the pixel differences (image i minus image j) in one overlap."""

    i: int
    j: int
    n_pixels: int
    offset: float  # sigma-clipped centre of the differences, MJy/sr
    rms: float  # RMS of the clipped differences, MJy/sr
    frac_x: float  # overlap extent / smaller image extent along grid x
    frac_y: float
    error: float = math.nan  # 1-sigma error of ``offset`` (``offset_error``); NaN: independent pixels
    cells: list = field(default_factory=list)  # plane model: (u, v, offset, n) per block
    kept: bool = True
    reason: str = ""
    weight: float = 0.0
    residual: float = math.nan  # measured minus fitted difference, MJy/sr

    def as_dict(self, names):
        return {
            "a": names[self.i],
            "b": names[self.j],
            "n_pixels": self.n_pixels,
            "offset_mjysr": self.offset,
            "rms_mjysr": self.rms,
            "error_mjysr": self.error,
            "frac_x": round(self.frac_x, 4),
            "frac_y": round(self.frac_y, 4),
            "weight": self.weight,
            "residual_mjysr": self.residual,
            "kept": self.kept,
            "reason": self.reason,
        }


def overlap_difference(a: Projected, b: Projected):
    """Differences a - b on their common finite pixels and the (y, x) grid coordinates of those pixels."""
    ya0, ya1, xa0, xa1 = a.box
    yb0, yb1, xb0, xb1 = b.box
    y0, y1, x0, x1 = max(ya0, yb0), min(ya1, yb1), max(xa0, xb0), min(xa1, xb1)
    if y0 >= y1 or x0 >= x1:
        return np.empty(0), np.empty(0, int), np.empty(0, int)
    sa = a.array[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
    sb = b.array[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    good = np.isfinite(sa) & np.isfinite(sb)
    ys, xs = np.nonzero(good)
    return (sa - sb)[good], ys + y0, xs + x0


def measure_pair(a: Projected, b: Projected, i: int, j: int, params: dict, grid_centre=(0.0, 0.0), pixel_arcsec=1.0):
    """Pair statistics of the overlap of ``a`` and ``b``; None when they share no usable pixel.

    Differences include source pixels; outliers (cosmic rays, misregistered cores) are
    removed by sigma clipping before the median (Sec. 3.5).
    """
    diff, ys, xs = overlap_difference(a, b)
    if diff.size == 0:
        return None
    kept = lc.clip_mask(diff, params["clip_sigma"], params["clip_maxiters"])
    centre, rms, _ = lc.kept_stats(diff[kept], params["statistic"])
    ext = [max(e, 1) for e in (*a.extent(), *b.extent())]
    height, width = min(ext[0], ext[2]), min(ext[1], ext[3])
    pair = Pair(
        i=i,
        j=j,
        n_pixels=int(diff.size),
        offset=centre,
        rms=rms,
        frac_x=float(xs.max() - xs.min() + 1) / width,
        frac_y=float(ys.max() - ys.min() + 1) / height,
        error=offset_error(diff[kept], ys[kept], xs[kept], centre, rms, params),
    )
    if params["model"] == "plane":
        cells = int(params["plane_cells"])
        yedges = np.linspace(ys.min(), ys.max() + 1, cells + 1)
        xedges = np.linspace(xs.min(), xs.max() + 1, cells + 1)
        iy = np.clip(np.searchsorted(yedges, ys, side="right") - 1, 0, cells - 1)
        ix = np.clip(np.searchsorted(xedges, xs, side="right") - 1, 0, cells - 1)
        min_cell = max(params["min_overlap_pixels"] // (cells * cells), 10)
        for cy in range(cells):
            for cx in range(cells):
                sel = (iy == cy) & (ix == cx)
                if sel.sum() < min_cell:
                    continue
                c, _, nc = lc.clipped_stats(
                    diff[sel], params["clip_sigma"], params["clip_maxiters"], params["statistic"]
                )
                u = (xs[sel].mean() - grid_centre[1]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
                v = (ys[sel].mean() - grid_centre[0]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
                pair.cells.append((float(u), float(v), c, nc))
    return pair


def independent_error(rms: float, n: int, statistic: str) -> float:
    """Error of the centre of ``n`` independent Gaussian values: rms/sqrt(n), times sqrt(pi/2) for a median."""
    factor = 1.0 if statistic == "mean" else math.sqrt(math.pi / 2)
    return factor * rms / math.sqrt(max(n, 1))


def offset_error(kept, ys, xs, centre: float, rms: float, params: dict) -> float:
    """1-sigma error of a pair's clipped centre, measured from the data (``kept``: the differences
    the clipping kept, at grid pixels ``ys``, ``xs``).

    Resampling both images onto the grid correlates neighbouring pixels (bilinear weights
    lower the pixel RMS by up to 1.5x without adding information), and residuals of sources
    or gradients vary across an overlap; neither is in rms/sqrt(n). The kept differences
    are cut into ``error_chunks`` equal-count chunks along the overlap's longer axis, and the
    error is the standard deviation of the chunk centres over sqrt(chunks) (batch means),
    never below the independent-pixel error.
    """
    floor = independent_error(rms, kept.size, params["statistic"])
    chunks = int(params["error_chunks"])
    if chunks < 2 or not np.isfinite(centre) or kept.size < 10 * chunks:
        return floor
    position = ys if np.ptp(ys) >= np.ptp(xs) else xs
    values = kept[np.argsort(position, kind="stable")]
    centres = [lc.centre_of(part, params["statistic"]) for part in np.array_split(values, chunks)]
    return max(floor, float(np.std(centres, ddof=1)) / math.sqrt(chunks))


def find_pairs(items: list[Projected], params: dict, grid_centre=(0.0, 0.0), pixel_arcsec=1.0) -> list[Pair]:
    """Statistics of every overlapping pair of ``items`` (bounding boxes intersect, enough pixels)."""
    pairs = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            pair = measure_pair(items[i], items[j], i, j, params, grid_centre, pixel_arcsec)
            if pair is None:
                continue
            if pair.n_pixels < params["min_overlap_pixels"] or not np.isfinite(pair.offset):
                pair.kept = False
                pair.reason = (
                    f"overlap {pair.n_pixels} usable pixels < min_overlap_pixels {params['min_overlap_pixels']}"
                )
            pairs.append(pair)
    return pairs


def reject_pairs(pairs: list[Pair], params: dict) -> None:
    """Mark untrustworthy pairs (Sec. 3.5 cuts, thresholds from ``params``); sets ``kept``/``reason``."""
    live = [p for p in pairs if p.kept]
    if not live:
        return
    if params.get("min_overlap_fraction") is not None:
        mean_n = float(np.mean([p.n_pixels for p in live]))
        for p in live:
            if p.n_pixels < params["min_overlap_fraction"] * mean_n:
                p.kept = False
                p.reason = (
                    f"overlap {p.n_pixels} px is {100 * p.n_pixels / mean_n:.2f}% of the mean overlap "
                    f"< {100 * params['min_overlap_fraction']:.2f}%"
                )
    if params.get("min_axis_fraction") is not None:
        for p in (p for p in live if p.kept):
            if max(p.frac_x, p.frac_y) < params["min_axis_fraction"]:
                p.kept = False
                p.reason = (
                    f"overlap spans {100 * p.frac_x:.0f}% x {100 * p.frac_y:.0f}% of the image "
                    f"< {100 * params['min_axis_fraction']:.0f}% along both axes"
                )
    if params.get("max_rms_sigma") is not None:
        live = [p for p in pairs if p.kept]
        if len(live) >= 3:
            rms = np.array([p.rms for p in live])
            flagged = []
            for k, p in enumerate(live):
                others = np.delete(rms, k)
                limit = others.mean() + params["max_rms_sigma"] * others.std()
                if p.rms > limit:
                    flagged.append((p, limit))
            for p, limit in flagged:
                p.kept = False
                p.reason = (
                    f"difference RMS {p.rms:.4g} > mean + {params['max_rms_sigma']} sigma of the others ({limit:.4g})"
                )
            restore_bridges([p for p, _ in flagged], pairs)


def restore_bridges(rejected: list[Pair], pairs: list[Pair]) -> None:
    """Keep RMS-rejected pairs that are the only link between parts of the overlap graph.

    The RMS cut drops noisy pairs that other pairs make redundant; a pair whose two images are
    not otherwise connected (e.g. a Lyot stack whose one overlap is noisier than the mean) is
    the only measurement of their relative level, and a least-squares tie across a bridge does
    not change the solution inside either side. Without it each side would get its own gauge.
    Restored in order of increasing RMS; the reason says so.
    """
    n = 1 + max(max(p.i, p.j) for p in pairs)

    def parts():
        return {k: c for c, members in enumerate(connected_components(n, pairs)) for k in members}

    part = parts()
    for p in sorted(rejected, key=lambda q: q.rms):
        if part[p.i] != part[p.j]:
            p.kept = True
            p.reason = "kept although " + p.reason + ": the only link between its images' parts of the graph"
            part = parts()  # only a restored pair changes the graph


def pair_weight(pair: Pair, weighting: str) -> float:
    """Least-squares weight of a pair from the RMS of its differences."""
    rms = max(pair.rms, 1e-12)
    return 1.0 / rms**2 if weighting == "rms" else pair.n_pixels / rms**2


def connected_components(n: int, pairs) -> list[list[int]]:
    """Connected components (lists of indices, largest first) of the graph of kept pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    edges = [(p.i, p.j) for p in pairs if p.kept]
    if n == 0:
        return []
    rows = [e[0] for e in edges]
    cols = [e[1] for e in edges]
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(n, n))
    _, labels = cc(graph, directed=False)
    comps = [sorted(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)]
    return sorted(comps, key=lambda c: (-len(c), c[0]))


# --------------------------------------------------------------------------- pure functions: least squares
def measurement_rows(pairs, model: str, weighting: str):
    """Rows (i, j, basis, value, weight) of the linear system: one per pair (offset) or per cell (plane)."""
    rows = []
    for p in pairs:
        if not p.kept:
            continue
        p.weight = pair_weight(p, weighting)
        if model == "offset":
            rows.append((p.i, p.j, (1.0,), p.offset, p.weight))
        else:
            total = sum(c[3] for c in p.cells) or 1
            for u, v, value, nc in p.cells:
                rows.append((p.i, p.j, (1.0, u, v), value, p.weight * nc / total))
    return rows


def design_matrix(n_images: int, rows, n_terms: int):
    """Weighted sparse design matrix A and vector b: sqrt(w) * ((basis at i) - (basis at j)) . x = sqrt(w) * d."""
    from scipy.sparse import csr_matrix

    data, ri, ci, b = [], [], [], []
    for r, (i, j, basis, value, weight) in enumerate(rows):
        sw = math.sqrt(weight)
        for t, coef in enumerate(basis):
            data += [sw * coef, -sw * coef]
            ri += [r, r]
            ci += [i * n_terms + t, j * n_terms + t]
        b.append(sw * value)
    matrix = csr_matrix((data, (ri, ci)), shape=(len(rows), n_images * n_terms))
    return matrix, np.asarray(b, float)


def gauge_rows(n_images: int, n_terms: int, scale: float):
    """Constraint rows fixing the gauge by zero mean: sum over images of each term = 0."""
    from scipy.sparse import csr_matrix

    data, ri, ci = [], [], []
    for t in range(n_terms):
        for i in range(n_images):
            data.append(scale)
            ri.append(t)
            ci.append(i * n_terms + t)
    return csr_matrix((data, (ri, ci)), shape=(n_terms, n_images * n_terms)), np.zeros(n_terms)


def solve_offsets(
    n_images: int,
    pairs,
    model: str = "offset",
    gauge: str = "mean",
    reference: int | None = None,
    weighting: str = "rms",
):
    """Weighted least-squares offsets of one connected set of images.

    Minimises sum_rows w (f_i - f_j - d)^2, f_i = offset (+ slopes) of image i, with the
    gauge fixed by zero mean (extra exact constraint rows) or by a reference image whose
    parameters are removed from the unknowns (held at zero). Solved with
    ``scipy.sparse.linalg.lsqr`` on the weighted design matrix. Returns ``(params, info)``,
    ``params`` of shape (n_images, n_terms) and ``info`` with the rank and the rows used.
    """
    from scipy.sparse import vstack
    from scipy.sparse.linalg import lsqr

    n_terms = MODEL_TERMS[model]
    params = np.zeros((n_images, n_terms))
    rows = measurement_rows(pairs, model, weighting)
    if n_images <= 1 or not rows:
        return params, {"rows": rows, "n_rows": len(rows)}
    matrix, rhs = design_matrix(n_images, rows, n_terms)
    if gauge == "reference":
        ref = 0 if reference is None else int(reference)
        keep_cols = np.array([c for c in range(n_images * n_terms) if c // n_terms != ref])
        reduced = matrix[:, keep_cols]
        sol = lsqr(reduced, rhs, atol=1e-14, btol=1e-14, conlim=1e12, iter_lim=50 * reduced.shape[1] + 1000)[0]
        flat = np.zeros(n_images * n_terms)
        flat[keep_cols] = sol
    else:
        scale = math.sqrt(float(np.mean([r[4] for r in rows])))
        grow, grhs = gauge_rows(n_images, n_terms, scale)
        full = vstack([matrix, grow]).tocsr()
        flat = lsqr(
            full, np.concatenate([rhs, grhs]), atol=1e-14, btol=1e-14, conlim=1e12, iter_lim=50 * full.shape[1] + 1000
        )[0]
    params[:] = flat.reshape(n_images, n_terms)
    return params, {"rows": rows, "n_rows": len(rows), "matrix": matrix, "rhs": rhs}


def formal_errors(n_images: int, rows, n_terms: int, gauge: str, reference: int | None, pair_sigma) -> np.ndarray:
    """1-sigma formal errors of the offsets (constant terms) for the given per-row measurement errors.

    Sandwich covariance (A^T W A)^+ A^T W S W A (A^T W A)^+ with S = diag(sigma^2), so it holds
    for any choice of weights; the pseudo-inverse gives the zero-mean gauge, the reference gauge
    removes the reference's columns first.
    """
    if n_images <= 1 or not rows:
        return np.zeros(n_images)
    m = len(rows)
    design = np.zeros((m, n_images * n_terms))
    for r, (i, j, basis, _value, _w) in enumerate(rows):
        for t, coef in enumerate(basis):
            design[r, i * n_terms + t] += coef
            design[r, j * n_terms + t] -= coef
    w = np.array([r[4] for r in rows])
    s2 = np.asarray(pair_sigma, float) ** 2
    cols = np.arange(n_images * n_terms)
    if gauge == "reference":
        ref = 0 if reference is None else int(reference)
        cols = np.array([c for c in cols if c // n_terms != ref])
    a = design[:, cols]
    normal_inv = np.linalg.pinv(a.T @ (w[:, None] * a))
    cov = normal_inv @ (a.T @ ((w**2 * s2)[:, None] * a)) @ normal_inv
    sigma = np.zeros(n_images * n_terms)
    sigma[cols] = np.sqrt(np.clip(np.diag(cov), 0, None))
    return sigma.reshape(n_images, n_terms)[:, 0]


def pair_sigmas(pairs, rows, model: str, statistic: str) -> list[float]:
    """Measurement error of each row: the pair's ``error``; for the plane model's cells the
    independent-pixel error of the cell, inflated by the pair's error / its independent-pixel error."""
    out = []
    for p in (p for p in pairs if p.kept):
        independent = independent_error(p.rms, p.n_pixels, statistic)
        error = p.error if np.isfinite(p.error) else independent
        if model == "offset":
            out.append(error)
        else:
            inflation = error / independent
            out += [inflation * independent_error(p.rms, c[3], statistic) for c in p.cells]
    return out[: len(rows)]


def evaluate_model(params_row, u, v):
    """Offset model of one image at grid positions (u, v) in arcmin: a (+ b u + c v)."""
    value = params_row[0] + np.zeros(np.shape(u))
    if len(params_row) == 3:
        value = value + params_row[1] * u + params_row[2] * v
    return value


def solve_graph(names, pairs, params: dict, reference_index=None, label=""):
    """Components and least-squares parameters of one matching problem (a visit, or the mosaic).

    The largest component takes the configured gauge (the reference image if it belongs to
    it), every other component the zero-mean gauge; a warning names each extra component.
    Returns (parameters (n, n_terms), components, formal errors (n,)).
    """
    n = len(names)
    model = params["model"]
    n_terms = MODEL_TERMS[model]
    solution = np.zeros((n, n_terms))
    errors = np.zeros(n)
    comps = connected_components(n, pairs)
    if len(comps) > 1:
        log.warning(
            "%s: overlap graph is disconnected, %d components solved separately: %s",
            label,
            len(comps),
            "; ".join("[" + ", ".join(names[k] for k in comp) + "]" for comp in comps),
        )
    for index, comp in enumerate(comps):
        local = {g: k for k, g in enumerate(comp)}
        sub_pairs = []
        for p in pairs:
            if p.kept and p.i in local and p.j in local:
                q = Pair(**{**p.__dict__, "i": local[p.i], "j": local[p.j]})
                sub_pairs.append((p, q))
        gauge, ref = "mean", None
        if index == 0 and params["gauge"] == "reference":
            if reference_index is not None and reference_index in local:
                gauge, ref = "reference", local[reference_index]
            elif reference_index is None:
                degree = np.zeros(len(comp))
                for _, q in sub_pairs:
                    degree[q.i] += pair_weight(q, params["weighting"])
                    degree[q.j] += pair_weight(q, params["weighting"])
                gauge, ref = "reference", int(np.argmax(degree))
        local_pairs = [q for _, q in sub_pairs]
        sol, info = solve_offsets(len(comp), local_pairs, model, gauge, ref, params["weighting"])
        for p, q in sub_pairs:
            p.weight = q.weight
        for g, k in local.items():
            solution[g] = sol[k]
        if info["n_rows"]:
            sig = formal_errors(
                len(comp),
                info["rows"],
                n_terms,
                gauge,
                ref,
                pair_sigmas(local_pairs, info["rows"], model, params["statistic"]),
            )
            for g, k in local.items():
                errors[g] = sig[k]
        if gauge == "reference":
            log.info("%s: component %d gauge fixed by reference %s", label, index + 1, names[comp[ref]])
    for p in pairs:
        if p.kept:
            p.residual = float(p.offset - (solution[p.i, 0] - solution[p.j, 0]))
    return solution, comps, errors


# --------------------------------------------------------------------------- the two-stage scheme on arrays
def stack_items(items: list[Projected], members: list[int], corrections: dict, statistic: str) -> Projected:
    """Median (or mean) of the matched ``members`` on their union box: one visit stack.

    ``corrections`` maps each member index to its fitted offset model on its cutout.
    """
    if len(members) == 1:
        k = members[0]
        return Projected((items[k].array - corrections[k]).astype(np.float32), items[k].y0, items[k].x0)
    y0 = min(items[k].y0 for k in members)
    x0 = min(items[k].x0 for k in members)
    y1 = max(items[k].box[1] for k in members)
    x1 = max(items[k].box[3] for k in members)
    cube = np.full((len(members), y1 - y0, x1 - x0), np.nan, np.float32)
    for m, k in enumerate(members):
        it = items[k]
        ny, nx = it.array.shape
        cube[m, it.y0 - y0 : it.y0 - y0 + ny, it.x0 - x0 : it.x0 - x0 + nx] = it.array - corrections[k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stack = np.nanmedian(cube, axis=0) if statistic == "median" else np.nanmean(cube, axis=0)
    return Projected(stack, y0, x0)


def model_on_item(item: Projected, params_row, grid_centre, pixel_arcsec) -> np.ndarray:
    """Offset model of one image evaluated on its cutout pixels (grid coordinates)."""
    if len(params_row) == 1:
        return np.full(item.array.shape, params_row[0])
    ny, nx = item.array.shape
    yy, xx = np.mgrid[item.y0 : item.y0 + ny, item.x0 : item.x0 + nx]
    u = (xx - grid_centre[1]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
    v = (yy - grid_centre[0]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
    return evaluate_model(params_row, u, v)


def match_levels(
    items: list[Projected],
    names: list[str],
    groups: list[str],
    params: dict,
    grid_centre=(0.0, 0.0),
    pixel_arcsec=1.0,
    reference_index=None,
    release_items=False,
) -> dict:
    """Two-stage level matching of images already on a common grid.

    ``groups`` is the stage-1 key of each image (its visit). With ``release_items`` the
    cutouts in ``items`` are replaced by placeholders once their visit is stacked (memory
    for full-size NIRCam mosaics). Returns a dict with the
    per-image parameters (n, n_terms) that were *subtracted* (stage 1 + stage 2), the per-stage
    pairs and components, and formal errors.
    """
    n = len(items)
    n_terms = MODEL_TERMS[params["model"]]
    total = np.zeros((n, n_terms))
    stage1 = np.zeros((n, n_terms))
    report = {"stages": []}
    stages = list(params["stages"])
    unknown = set(stages) - {"visit", "mosaic"}
    if unknown or not stages:
        raise wfutils.InputError(f"stages must be a list of 'visit' and/or 'mosaic', got {stages}")
    # Stage 1: the dithers (and detectors/parts) of each visit.
    units = [[k] for k in range(n)]  # what the mosaic stage matches: lists of image indices
    unit_labels = list(names)
    errors = np.zeros(n)
    stacks = list(items)  # the mosaic stage's inputs: single images, or visit stacks (stage 1)
    if "visit" in stages:
        entry = {"stage": "visit", "groups": []}
        units, unit_labels, stacks = [], [], []
        for key in sorted(set(groups)):
            members = [k for k in range(n) if groups[k] == key]
            sub_items = [items[k] for k in members]
            sub_names = [names[k] for k in members]
            pairs = find_pairs(sub_items, params, grid_centre, pixel_arcsec)
            reject_pairs(pairs, params)
            for p in pairs:
                if not p.kept:
                    log.info("visit %s: rejected pair %s - %s: %s", key, sub_names[p.i], sub_names[p.j], p.reason)
                elif p.reason:
                    log.warning("visit %s: pair %s - %s %s", key, sub_names[p.i], sub_names[p.j], p.reason)
            ref = members.index(reference_index) if reference_index in members else None
            sol, comps, err = solve_graph(sub_names, pairs, params, ref, label=f"visit {key}")
            for local, k in enumerate(members):
                stage1[k] = sol[local]
                errors[k] = err[local]
            for c, comp in enumerate(comps):
                units.append([members[m] for m in comp])
                unit_labels.append(f"{key}:{c + 1}" if len(comps) > 1 else key)
                if "mosaic" in stages:  # stack now, so the members' cutouts can be released
                    corr = {k: model_on_item(items[k], stage1[k], grid_centre, pixel_arcsec) for k in units[-1]}
                    stacks.append(stack_items(items, units[-1], corr, params["stack_statistic"]))
            if release_items and "mosaic" in stages:
                for k in members:
                    items[k] = Projected(np.full((1, 1), np.nan, np.float32), items[k].y0, items[k].x0)
            entry["groups"].append(
                {
                    "key": key,
                    "images": sub_names,
                    "components": [[sub_names[m] for m in comp] for comp in comps],
                    "pairs": [p.as_dict(sub_names) for p in pairs],
                    "_pairs": pairs,
                    "_names": sub_names,
                }
            )
            log.info(
                "visit %s: %d images, %d/%d pairs kept, offsets %s",
                key,
                len(members),
                sum(p.kept for p in pairs),
                len(pairs),
                ", ".join(f"{sol[m, 0]:+.4f}" for m in range(len(members))),
            )
        report["stages"].append(entry)
    total += stage1
    # Stage 2: visit stacks (or single images) across the mosaic.
    unit_of_image = np.zeros(n, int)
    for u, members in enumerate(units):
        unit_of_image[members] = u
    if "mosaic" in stages and len(units) > 1:
        pairs = find_pairs(stacks, params, grid_centre, pixel_arcsec)
        reject_pairs(pairs, params)
        for p in pairs:
            if not p.kept:
                log.info("mosaic: rejected pair %s - %s: %s", unit_labels[p.i], unit_labels[p.j], p.reason)
            elif p.reason:
                log.warning("mosaic: pair %s - %s %s", unit_labels[p.i], unit_labels[p.j], p.reason)
        ref_unit = int(unit_of_image[reference_index]) if reference_index is not None else None
        sol, comps, err = solve_graph(unit_labels, pairs, params, ref_unit, label="mosaic")
        for u, members in enumerate(units):
            total[members] += sol[u]
            errors[members] = np.hypot(errors[members], err[u])
        report["stages"].append(
            {
                "stage": "mosaic",
                "units": [{"label": unit_labels[u], "images": [names[k] for k in units[u]]} for u in range(len(units))],
                "components": [[unit_labels[u] for u in comp] for comp in comps],
                "pairs": [p.as_dict(unit_labels) for p in pairs],
                "_pairs": pairs,
                "_names": unit_labels,
            }
        )
        log.info(
            "mosaic: %d stacks, %d/%d pairs kept, stack offsets %s",
            len(units),
            sum(p.kept for p in pairs),
            len(pairs),
            ", ".join(f"{unit_labels[u]} {sol[u, 0]:+.4f}" for u in range(len(units))),
        )
    report["parameters"] = total
    report["stage1"] = stage1
    report["errors"] = errors
    report["units"] = units
    report["unit_labels"] = unit_labels
    return report


# --------------------------------------------------------------------------- I/O layer
def native_pixel_scale_arcsec(wcs) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs))) * 3600.0)


def build_grid(records, pixel_scale_arcsec=None):
    """Common north-up TAN grid covering every record, at the given or the median native pixel scale."""
    import astropy.units as u
    from reproject.mosaicking import find_optimal_celestial_wcs

    scale = pixel_scale_arcsec or float(np.median([native_pixel_scale_arcsec(r.wcs) for r in records]))
    wcs, shape = find_optimal_celestial_wcs([(r.shape, r.wcs) for r in records], resolution=scale * u.arcsec)
    return wcs, tuple(int(s) for s in shape), scale


def project_record(record, grid_wcs, grid_shape, order="bilinear") -> Projected:
    """Reproject one record onto its bounding box within the common grid (NaN outside the image)."""
    from reproject import reproject_interp

    ny, nx = record.shape
    edge_x = np.concatenate([np.arange(nx), np.full(ny, nx - 1), np.arange(nx), np.zeros(ny)]) - 0.0
    edge_y = np.concatenate([np.zeros(nx), np.arange(ny), np.full(nx, ny - 1), np.arange(ny)]) - 0.0
    ra, dec = record.wcs.pixel_to_world_values(edge_x, edge_y)
    gx, gy = grid_wcs.world_to_pixel_values(ra, dec)
    x0 = max(int(np.floor(np.nanmin(gx))) - 2, 0)
    x1 = min(int(np.ceil(np.nanmax(gx))) + 3, grid_shape[1])
    y0 = max(int(np.floor(np.nanmin(gy))) - 2, 0)
    y1 = min(int(np.ceil(np.nanmax(gy))) + 3, grid_shape[0])
    if x0 >= x1 or y0 >= y1:
        return Projected(np.full((1, 1), np.nan), 0, 0)
    sub = grid_wcs[y0:y1, x0:x1]
    shape = (y1 - y0, x1 - x0)
    if order in ("bilinear", "nearest-neighbor"):
        array = reproject_interp((record.data, record.wcs), sub, shape_out=shape, order=order, return_footprint=False)
        return Projected(np.asarray(array, np.float32), y0, x0)
    # spline orders spread NaN over the whole image: fill NaN with the nearest finite value,
    # interpolate, then blank every output pixel whose bilinear stencil touches an unusable pixel
    from scipy import ndimage

    finite = np.isfinite(record.data)
    nearest = ndimage.distance_transform_edt(~finite, return_distances=False, return_indices=True)
    filled = record.data[tuple(nearest)]
    array = reproject_interp((filled, record.wcs), sub, shape_out=shape, order=order, return_footprint=False)
    valid = reproject_interp(
        (finite.astype(float), record.wcs), sub, shape_out=shape, order="bilinear", return_footprint=False
    )
    array = np.where(np.nan_to_num(valid) > 0.999, array, np.nan)
    return Projected(np.asarray(array, np.float32), y0, x0)


def record_model_map(record, params_row, grid_wcs, grid_centre, pixel_arcsec) -> np.ndarray:
    """The fitted offset model on the native pixels of ``record`` (a constant for model 'offset')."""
    if len(params_row) == 1:
        return np.full(record.shape, params_row[0])
    ny, nx = record.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = record.wcs.pixel_to_world_values(xx, yy)
    gx, gy = grid_wcs.world_to_pixel_values(ra, dec)
    u = (gx - grid_centre[1]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
    v = (gy - grid_centre[0]) * pixel_arcsec / SLOPE_UNIT_ARCSEC
    return evaluate_model(params_row, u, v)


def write_matched(path, out_path, offset_map, cfg_hash):
    """Copy of ``path`` with SCI minus the offset map (NaN pixels stay NaN), written atomically."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(str(path)) as model:
        data = np.asarray(model.data, float)
        model.data = np.where(np.isfinite(data), data - offset_map, data).astype(np.float32)
        wfutils.save_model(model, out_path, [path], cfg_hash, "level_match")


def part_signature(record) -> tuple:
    """Bounding box (x0, x1, y0, y1, detector pixels) of the pixels not flagged NON_SCIENCE.

    Copies of one detector with different static science regions (the MIRI imager and
    Lyot parts written by ``miri_lyot_split.py``) get different signatures.
    """
    if record.dq is None:
        return ()
    science = (record.dq & lc.dq_bitmask(["NON_SCIENCE"])) == 0
    ys, xs = np.nonzero(science)
    if ys.size == 0:
        return ()
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def stage1_groups(records, group_by: str) -> list[str]:
    """Stage-1 key of each record: its visit, or visit + detector + detector part."""
    if group_by == "visit":
        return [r.visit_id or r.name for r in records]
    if group_by != "visit_detector_part":
        raise wfutils.InputError(f"group_by must be 'visit' or 'visit_detector_part', got {group_by!r}")
    signatures = {}
    for r in records:
        signatures.setdefault(r.detector, set()).add(part_signature(r))
    labels = {}
    for detector, sigs in signatures.items():
        ordered = sorted(sigs, key=lambda s: -((s[1] - s[0] + 1) * (s[3] - s[2] + 1)) if s else 0)
        for k, sig in enumerate(ordered):
            labels[(detector, sig)] = "" if k == 0 else f"_part{k + 1}"
    return [
        f"{r.visit_id or r.name}_{r.detector.lower() or 'det'}{labels[(r.detector, part_signature(r))]}"
        for r in records
    ]


def plot_graphs(report, names, centres, path) -> None:
    """QA PNG: overlap graph of each stage, nodes at image centres (colour = component), edges
    coloured by pair residual (measured minus fitted difference), rejected pairs dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    stages = report["stages"]
    fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(6.5 * max(len(stages), 1), 6), squeeze=False)
    residuals = [
        abs(p.residual)
        for st in stages
        for group in (st.get("groups") or [st])
        for p in group["_pairs"]
        if p.kept and np.isfinite(p.residual)
    ]
    vmax = max(max(residuals, default=0.0), 1e-6)
    norm = colors.Normalize(-vmax, vmax)
    cmap = cm.coolwarm
    index = {n: k for k, n in enumerate(names)}
    for ax, st in zip(axes[0], stages, strict=False):
        for group in st.get("groups") or [st]:
            if st["stage"] == "visit":
                pos = [centres[index[n]] for n in group["_names"]]
                labels = [""] * len(pos)
            else:
                pos = [np.mean([centres[index[m]] for m in unit["images"]], axis=0) for unit in st["units"]]
                labels = [unit["label"] for unit in st["units"]]
                prefix = len(os.path.commonprefix(labels)) if len(labels) > 1 else 0
                labels = [label[prefix:] or label for label in labels]
            for p in group["_pairs"]:
                (xa, ya), (xb, yb) = pos[p.i], pos[p.j]
                if p.kept:
                    ax.plot([xa, xb], [ya, yb], color=cmap(norm(p.residual)), lw=2.0, zorder=1)
                else:
                    ax.plot([xa, xb], [ya, yb], color="0.6", lw=0.8, ls="--", zorder=0)
            component = np.zeros(len(pos), int)
            names_here = group["_names"]
            for c, comp in enumerate(group["components"]):
                for member in comp:
                    component[names_here.index(member)] = c
            for (x, y), c, label in zip(pos, component, labels, strict=True):
                ax.scatter([x], [y], s=22, color=f"C{c % 10}", edgecolor="k", zorder=2)
                if label:
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"stage '{st['stage']}': solid kept (colour = residual), dashed rejected", fontsize=9)
        ax.set_xlabel("common grid x (pixels)")
        ax.set_ylabel("common grid y (pixels)")
        ax.set_aspect("equal", adjustable="datalim")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), label="pair residual (MJy/sr)")
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def json_report(report, records, params, grid_info) -> dict:
    """The JSON-serialisable report (offsets, pair statistics, rejected pairs, components)."""
    names = [r.name for r in records]

    def clean(stage):
        return {k: v for k, v in stage.items() if not k.startswith("_")}

    stages = []
    for st in report["stages"]:
        st = clean(st)
        if "groups" in st:
            st["groups"] = [clean(g) for g in st["groups"]]
        stages.append(st)
    rejected = [
        {"stage": st["stage"], **p}
        for st in stages
        for group in (st.get("groups") or [st])
        for p in group["pairs"]
        if not p["kept"]
    ]
    images = []
    for k, rec in enumerate(records):
        row = {
            "file": Path(rec.path).name,
            "name": names[k],
            "visit_id": rec.visit_id,
            "offset_mjysr": float(report["parameters"][k, 0]),
            "stage1_offset_mjysr": float(report["stage1"][k, 0]),
            "formal_error_mjysr": float(report["errors"][k]),
        }
        if report["parameters"].shape[1] == 3:
            row["slopes_mjysr_per_arcmin"] = [float(v) for v in report["parameters"][k, 1:]]
        images.append(row)
    warnings_ = []
    for st in stages:
        for group in st.get("groups") or [st]:
            comps = group.get("components", [])
            if len(comps) > 1:
                where = f"visit {group['key']}" if "key" in group else "mosaic"
                warnings_.append(f"{where}: overlap graph has {len(comps)} components, solved separately")
                files = {im["name"]: im["file"] for im in images}
                warnings_ += [f"{where}: {files.get(c[0], c[0])} overlaps no other image; its level is left unmatched"
                              for c in comps if len(c) == 1]  # fmt: skip
    limit = params.get("warn_formal_error_mjysr")
    weak = [im["name"] for im in images if limit is not None and im["formal_error_mjysr"] > limit]
    if weak:
        warnings_.append(
            f"{len(weak)} image(s) with formal offset error > {limit} MJy/sr (weakly tied): {', '.join(weak)}"
        )
    return {
        "method": "pairwise sigma-clipped overlap differences, weighted least squares (PHANGS-JWST Sec. 3.5)",
        "unit": "MJy/sr (offsets are subtracted)",
        "parameters": {k: v for k, v in params.items()},
        "grid": grid_info,
        "images": images,
        "stages": stages,
        "rejected_pairs": rejected,
        "weakly_tied": weak,
        "warnings": warnings_,
    }


def run(paths, out_dir, report_path, qa_png, params, cfg_hash=None):
    """Read, match, write: the whole CLI job. Returns the JSON report dict."""
    bitmask = lc.dq_bitmask(params["bad_flags"])
    records = [lc.read_jwst_image(p, bitmask) for p in paths]
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise wfutils.InputError("input file names are not unique: " + ", ".join(sorted(set(names))))
    filters = sorted({r.filter for r in records})
    if len(filters) > 1:
        raise wfutils.InputError(f"inputs mix filters {filters}: level matching works on one band at a time")
    for rec in records:
        if not np.isfinite(rec.data).any():
            raise wfutils.InputError(f"{rec.path}: no usable pixel (all NaN or flagged)")
    out_dir = Path(out_dir)
    for rec in records:
        if (out_dir / Path(rec.path).name).resolve() == Path(rec.path).resolve():
            raise wfutils.InputError(f"{rec.path}: output would overwrite the input; choose another --out-dir")
    grid_wcs, grid_shape, scale = build_grid(records, params["pixel_scale_arcsec"])
    centre = ((grid_shape[0] - 1) / 2, (grid_shape[1] - 1) / 2)
    log.info(
        "common grid %d x %d pixels of %.4f arcsec for %d images", grid_shape[1], grid_shape[0], scale, len(records)
    )
    items = []
    for k, rec in enumerate(records, start=1):
        items.append(project_record(rec, grid_wcs, grid_shape, params["interpolation"]))
        log.info("reprojected %d/%d %s", k, len(records), rec.name)
    reference_index = None
    if params["gauge"] == "reference" and params["reference"]:
        hits = [k for k, n in enumerate(names) if params["reference"] in n]
        if len(hits) != 1:
            raise wfutils.InputError(f"reference {params['reference']!r} matches {len(hits)} inputs, expected one")
        reference_index = hits[0]
    groups = stage1_groups(records, params["group_by"])
    centres = []
    for it in items:
        ys, xs = np.nonzero(np.isfinite(it.array))
        centres.append((xs.mean() + it.x0, ys.mean() + it.y0) if xs.size else (it.x0, it.y0))
    result = match_levels(items, names, groups, params, centre, scale, reference_index, release_items=True)
    for k, rec in enumerate(records):
        offset_map = record_model_map(rec, result["parameters"][k], grid_wcs, centre, scale)
        write_matched(rec.path, out_dir / Path(rec.path).name, offset_map, cfg_hash)
        log.info("%s: subtracted %+.5f MJy/sr", rec.name, result["parameters"][k, 0])
    grid_info = {
        "shape": list(grid_shape),
        "pixel_scale_arcsec": scale,
        "crval": [float(v) for v in grid_wcs.wcs.crval],
    }
    report = json_report(result, records, params, grid_info)
    wfutils.write_text(json.dumps(report, indent=1, default=float) + "\n", report_path)
    if qa_png:
        plot_graphs(result, names, centres, qa_png)
    for w in report["warnings"]:
        log.warning(w)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="calibrated images of one band (ImageModel FITS)")
    parser.add_argument("--out-dir", required=True, help="directory for the level-matched copies")
    parser.add_argument("--report", required=True, help="JSON report of offsets and pair statistics")
    parser.add_argument("--qa-png", help="QA figure of the overlap graphs")
    wfutils.add_run_options(parser, params_help="JSON object of method parameters (keys of DEFAULTS)")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    if params["model"] not in MODEL_TERMS:
        raise wfutils.InputError(f"model must be one of {sorted(MODEL_TERMS)}, got {params['model']!r}")
    if params["gauge"] not in ("mean", "reference"):
        raise wfutils.InputError(f"gauge must be 'mean' or 'reference', got {params['gauge']!r}")
    run(args.inputs, args.out_dir, args.report, args.qa_png, params, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
