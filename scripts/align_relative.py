"""Relative astrometry: one x/y shift per visit, measured in a reference band, applied to every band.

PHANGS-JWST Sec. 3.3: after guide-star acquisition the pointing within a visit is excellent,
but the guide stars of different mosaic tiles disagree by ~0.1". All dithers of a tile share
the guide star, and so do all filters (NIRCam short and long wavelength) observed in that
visit, so one shift per visit is measured on point sources of one reference band per
instrument (F300M for NIRCam: F200W is too crowded; F1000W for MIRI) and applied to every
exposure of that visit. Optionally (``group_by: exposure``, CEERS Sec. 3.3.1) every exposure of
every band gets its own shift, for deep fields with many compact sources.

Method:

1. point sources in each reference-band exposure (``astro_common.find_sources``: photutils
   detection, pixel-integrated Gaussian fits, extended sources rejected by their FWHM);
2. per group (visit), the detections of all its dithers and detectors merged in the sky through
   the header WCS (sources seen at least ``min_detections`` times; cosmic rays drop out);
3. every pair of overlapping groups matched (``tweakwcs.XYXYMatch``: 2-D histogram within
   ``searchrad``, then strict tolerances), and optionally each group matched to an anchor
   catalogue (e.g. the aligned NIRCam catalogue for MIRI, whose tiles barely overlap);
4. one joint weighted least-squares solution for all group shifts (and rotations with
   ``fitgeom: rshift``) from all matched pairs, with sigma clipping; without an anchor the
   gauge is the mean shift (the absolute step removes the common part);
5. the correction applied to the gwcs of every input (``tweakwcs.JWSTWCSCorrector``), FITS WCS
   and S_REGION refreshed, files written under ``--out-dir`` with the same names.

Outputs: the corrected exposures, an ECSV table of shifts per group, a merged source
catalogue of the reference band in the corrected frame, a QA scatterball and JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from wflib import astro_common as ac
from wflib import wfutils

log = logging.getLogger("align_relative")

DEFAULTS = {
    "reference_band": {"NIRCAM": "F300M", "MIRI": "F1000W"},
    "group_by": "visit",  # visit | exposure
    "fitgeom": "shift",  # shift | rshift (PHANGS found rotations degrade the solution)
    "gauge": "mean",  # mean | first: which combination of group shifts is zero without an anchor
    "detection": {},  # overrides of astro_common.DETECTION_DEFAULTS
    "use_extended": False,  # also match compact extended sources (MIRI: few point sources)
    "merge_radius_fwhm": 0.6,  # friends-of-friends radius for merging dithers, in PSF FWHM
    "min_detections": 2,  # a merged source must be seen in this many exposures of its group
    "searchrad": 2.5,  # arcsec, 2-D histogram search between groups (visit shifts <= ~1")
    "tolerance": 0.3,  # arcsec, first matching tolerance after the histogram offset
    "strict_tolerances": [0.15, 0.08],  # arcsec, successively tighter re-matches
    "separation": 0.05,  # arcsec, xyxymatch minimum separation
    "min_pair_matches": 5,  # a group pair with fewer strict matches is ignored
    "min_group_matches": 8,  # each group needs this many matched sources in total
    "nclip": 5,
    "clip_sigma": 3.0,
    "max_rms_mas": 25.0,  # per-source residual RMS above this fails the step
    "anchor": {"searchrad": 2.5, "tolerance": 0.3, "select": {}},
    "unmeasured": "fail",  # fail | skip: a group without reference-band exposures
    "per_instrument": {
        "MIRI": {
            "use_extended": True,
            "min_pair_matches": 3,
            "min_group_matches": 5,
            "detection": {"snr_min": 8.0, "max_fwhm_ratio": 2.5},
            "strict_tolerances": [0.2, 0.1],
            "anchor": {"searchrad": 4.0, "tolerance": 0.4},
            "max_rms_mas": 80.0,
        }
    },
}


def resolve_params(params: dict | None, instrument: str) -> dict:
    """Defaults < config section < its ``per_instrument.<INSTRUMENT>`` block (``astro_common.layered_params``)."""
    return ac.layered_params(DEFAULTS, params, instrument)


# --------------------------------------------------------------------------- joint solution (pure)
def solve_group_offsets(
    pairs,
    n_groups: int,
    centers,
    fitgeom: str = "shift",
    anchored: bool = False,
    gauge: str = "mean",
    nclip: int = 5,
    clip_sigma: float = 3.0,
) -> dict:
    """Weighted least squares for one shift (and rotation) per group from matched source pairs.

    ``pairs``: list of (a, b, pos_a, pos_b, weight) with tangent-plane positions (N, 2) in arcsec of
    the same sources seen by groups a and b; b = -1 is the anchor catalogue (fixed). The model
    corrects positions as p' = p + s_g + theta_g J (p - c_g) (small angles, J the 90-degree
    rotation) and requires p'_a = p'_b. Without an anchor the mean (or first) shift and rotation
    are fixed to zero. Sources whose residual exceeds ``clip_sigma`` times the RMS are clipped
    (``nclip`` rounds). Returns shifts (G, 2), rotations (G,) in radians, shift errors (G,),
    per-pair residual arrays and masks, and the RMS.
    """
    n_par = 3 if fitgeom == "rshift" else 2
    centers = np.asarray(centers, float)
    rows_a, rows_b, pa_all, pb_all, w_all, pair_of = [], [], [], [], [], []
    for k, (a, b, pa, pb, w) in enumerate(pairs):
        n = len(pa)
        rows_a.append(np.full(n, a))
        rows_b.append(np.full(n, b))
        pa_all.append(np.asarray(pa, float))
        pb_all.append(np.asarray(pb, float))
        w_all.append(np.broadcast_to(np.asarray(w, float), (n,)))
        pair_of.append(np.full(n, k))
    ga, gb = np.concatenate(rows_a), np.concatenate(rows_b)
    pa, pb = np.vstack(pa_all), np.vstack(pb_all)
    w, pair_of = np.concatenate(w_all), np.concatenate(pair_of)
    m = len(ga)
    design = np.zeros((2 * m, n_par * n_groups))
    idx = np.arange(m)
    for groups, pos, sign in ((ga, pa, 1.0), (gb, pb, -1.0)):
        real = groups >= 0
        g = groups[real]
        design[2 * idx[real], n_par * g] = sign
        design[2 * idx[real] + 1, n_par * g + 1] = sign
        if n_par == 3:
            rel = pos[real] - centers[g]
            design[2 * idx[real], n_par * g + 2] = -sign * rel[:, 1]
            design[2 * idx[real] + 1, n_par * g + 2] = sign * rel[:, 0]
    rhs = (pb - pa).ravel()
    gauge_rows = []
    if not anchored:
        for j in range(n_par):
            row = np.zeros(n_par * n_groups)
            if gauge == "first":
                row[j] = 1.0
            else:
                row[j::n_par] = 1.0 / n_groups
            gauge_rows.append(row)
    gauge_rows = np.array(gauge_rows).reshape(-1, n_par * n_groups)
    keep = np.ones(m, bool)
    for _ in range(max(nclip, 0) + 1):
        sw = np.sqrt(np.repeat(w * keep, 2))
        scale = np.sqrt(np.mean(w[keep])) if keep.any() else 1.0
        a_mat = np.vstack([design * sw[:, None], 1e3 * scale * gauge_rows])
        b_vec = np.concatenate([rhs * sw, np.zeros(len(gauge_rows))])
        sol, *_ = np.linalg.lstsq(a_mat, b_vec, rcond=None)
        resid = (design @ sol - rhs).reshape(m, 2)
        norm = np.hypot(resid[:, 0], resid[:, 1])
        rms = float(np.sqrt(np.mean(norm[keep] ** 2))) if keep.any() else math.nan
        new_keep = norm <= max(clip_sigma * rms, 1e-6)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    sol = sol.reshape(n_groups, n_par)
    normal = (design * np.repeat(w * keep, 2)[:, None]).T @ design + (1e6 * gauge_rows.T @ gauge_rows)
    cov = np.linalg.pinv(normal) * (rms**2 / 2 * np.mean(w[keep]) if keep.any() else 1.0)
    var = np.diag(cov).reshape(n_groups, n_par)
    return {
        "shifts": sol[:, :2],
        "rotations": sol[:, 2] if n_par == 3 else np.zeros(n_groups),
        "shift_err": np.sqrt(np.abs(var[:, 0] + var[:, 1])),
        "residuals": resid,
        "keep": keep,
        "pair_of": pair_of,
        "group_a": ga,
        "group_b": gb,
        "rms": rms,
        "n_used": int(keep.sum()),
    }


def connected_groups(n_groups: int, edges) -> np.ndarray:
    """Component label per group of the graph of usable pairs; the anchor joins its partners."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = n_groups + 1  # last node: the anchor
    if not edges:
        return np.arange(n)[:n_groups]
    a = np.array([e[0] for e in edges])
    b = np.array([e[1] if e[1] >= 0 else n_groups for e in edges])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels[:n_groups]


# --------------------------------------------------------------------------- measurement
class Exposure:
    """Header facts of one input file (the pixels are read only when needed)."""

    def __init__(self, path):
        model = ac.open_model(path)
        self.path = str(path)
        self.name = Path(path).name
        self.filter = model.meta.instrument.filter
        self.instrument = (model.meta.instrument.name or ac.instrument_of_filter(self.filter)).upper()
        if ac.is_mosaic(model):
            raise wfutils.InputError(f"{path}: a drizzled mosaic; relative alignment works on exposures")
        self.visit = ac.visit_key(model)
        self.exposure = ac.exposure_key(model)
        self.footprint = ac.footprint(model)
        model.close()


def group_catalogs(exposures, groups, params, ra0, dec0):
    """Detections of each measured exposure, merged per group in the tangent plane at (ra0, dec0)."""
    from astropy.table import Table, vstack

    catalogs = {}
    det_params = params["detection"]
    n_total, done = sum(len(m) for m in groups.values()), 0
    for key, members in groups.items():
        tables = []
        for i, exp in enumerate(members):
            model = ac.open_model(exp.path)
            cat = ac.catalog_model(model, det_params)
            model.close()
            usable = cat if params["use_extended"] else cat[cat["point_like"]]
            done += 1
            log.info(
                "measured %d/%d exposures: %s: %d sources, %d point-like, %d used",
                done,
                n_total,
                exp.name,
                len(cat),
                int(np.sum(cat["point_like"])),
                len(usable),
            )
            if len(usable):
                usable = usable.copy()
                usable["member"] = i
                tables.append(usable)
        fwhm = ac.psf_fwhm_arcsec(members[0].filter)
        radius = params["merge_radius_fwhm"] * fwhm
        # a visit's dithers see each source several times; one exposure's detectors do not overlap
        min_count = min(params["min_detections"], len(members)) if params["group_by"] == "visit" else 1
        if tables:
            merged = ac.merged_catalog(
                vstack(tables, metadata_conflicts="silent"), "member", radius, min_count, ra0, dec0
            )
        else:
            merged = Table(names=("xi", "eta", "ra", "dec", "flux", "fwhm_arcsec", "point_like", "n", "scatter_mas"))
        log.info(
            "group %s: %d exposures of %s, %d merged sources seen >= %d times",
            key,
            len(members),
            members[0].filter,
            len(merged),
            min_count,
        )
        catalogs[key] = merged
    return catalogs


def source_weights(cat, fwhm_arcsec):
    """Position weights (1/arcsec^2) from the scatter between dithers, floored at 2% of the FWHM."""
    floor = 0.02 * fwhm_arcsec
    scatter = np.asarray(cat["scatter_mas"], float) / 1e3 / np.sqrt(np.maximum(np.asarray(cat["n"], float), 1))
    return 1.0 / (np.maximum(scatter, 0) ** 2 + floor**2)


def match_pairs(keys, catalogs, footprints_tp, params, pscale, fwhm, anchor_xy=None):
    """Matched positions for every overlapping pair of groups (and each group vs the anchor)."""
    pairs = []
    wide = {"searchrad": params["searchrad"], "tolerance": params["tolerance"], "separation": params["separation"]}
    strict = {
        "searchrad": params["tolerance"],
        "tolerance": params["tolerance"],
        "refine_tolerances": params["strict_tolerances"],
        "separation": params["separation"],
        "nclip": 3,
        "sigma": 3.0,
    }
    xy = {k: np.column_stack([catalogs[k]["xi"], catalogs[k]["eta"]]) for k in keys}
    weights = {k: source_weights(catalogs[k], fwhm) for k in keys}
    for ia, ka in enumerate(keys):
        for ib in range(ia + 1, len(keys)):
            kb = keys[ib]
            in_a = ac.inside_footprints(xy[ka][:, 0], xy[ka][:, 1], footprints_tp[kb], margin=0.5)
            in_b = ac.inside_footprints(xy[kb][:, 0], xy[kb][:, 1], footprints_tp[ka], margin=0.5)
            if in_a.sum() < params["min_pair_matches"] or in_b.sum() < params["min_pair_matches"]:
                continue
            ia_idx, ib_idx = np.flatnonzero(in_a), np.flatnonzero(in_b)
            result = ac.two_step_match(xy[kb][ib_idx], xy[ka][ia_idx], wide, strict, pscale, fitgeom="shift")
            n = result["n_strict"] if result["ok"] else 0
            if n < params["min_pair_matches"]:
                log.info("pair %s-%s: %d matches < %d, ignored", ka, kb, n, params["min_pair_matches"])
                continue
            sel_a, sel_b = ia_idx[result["img_idx"]], ib_idx[result["ref_idx"]]
            w = 1.0 / (1.0 / weights[ka][sel_a] + 1.0 / weights[kb][sel_b])
            pairs.append((ia, ib, xy[ka][sel_a], xy[kb][sel_b], w))
            off = xy[ka][sel_a].mean(axis=0) - xy[kb][sel_b].mean(axis=0)
            log.info("pair %s-%s: %d matches, offset %+.4f %+.4f arcsec", ka, kb, len(sel_a), off[0], off[1])
    if anchor_xy is not None:
        a_params = params["anchor"]
        wide_a = {
            "searchrad": a_params["searchrad"],
            "tolerance": a_params["tolerance"],
            "separation": params["separation"],
        }
        strict_a = {**strict, "searchrad": a_params["tolerance"]}
        for ia, ka in enumerate(keys):
            near = ac.inside_footprints(anchor_xy[:, 0], anchor_xy[:, 1], footprints_tp[ka], margin=1.0)
            if not near.any() or not len(xy[ka]):
                log.info("group %s: no anchor sources in its footprint", ka)
                continue
            near_idx = np.flatnonzero(near)
            result = ac.two_step_match(anchor_xy[near_idx], xy[ka], wide_a, strict_a, pscale, fitgeom="shift")
            n = result["n_strict"] if result["ok"] else 0
            if n < params["min_pair_matches"]:
                log.info("group %s vs anchor: %d matches < %d, ignored", ka, n, params["min_pair_matches"])
                continue
            sel = result["img_idx"]
            pairs.append((ia, -1, xy[ka][sel], anchor_xy[near_idx[result["ref_idx"]]], weights[ka][sel]))
            off = np.mean(xy[ka][sel] - anchor_xy[near_idx[result["ref_idx"]]], axis=0)
            log.info("group %s vs anchor: %d matches, offset %+.4f %+.4f arcsec", ka, len(sel), off[0], off[1])
    return pairs


def measure(exposures, params, reference_band, anchor=None):
    """Groups, their catalogues and the joint solution. Raises InputError with numbers on failure."""
    measured = [e for e in exposures if e.filter == reference_band]
    if not measured:
        bands = sorted({e.filter for e in exposures})
        raise wfutils.InputError(f"reference band {reference_band} is not among the inputs (bands: {', '.join(bands)})")
    by = params["group_by"]
    if by not in ("visit", "exposure"):
        raise wfutils.InputError(f"group_by must be 'visit' or 'exposure', not {by!r}")
    if by == "exposure":
        measured = list(exposures)
    groups: dict[str, list] = {}
    for exp in measured:
        key = exp.visit if by == "visit" else f"{exp.exposure}:{exp.filter}"
        groups.setdefault(key, []).append(exp)
    keys = sorted(groups)
    corners = np.vstack([e.footprint for e in measured])
    ra0, dec0 = ac.mean_sky_position(corners[:, 0], corners[:, 1])
    catalogs = group_catalogs(exposures, {k: groups[k] for k in keys}, params, ra0, dec0)
    total = sum(len(c) for c in catalogs.values())
    if total == 0:
        raise wfutils.InputError(
            f"{reference_band}: no point sources in {len(measured)} exposures "
            f"(S/N >= {ac.merged_params(ac.DETECTION_DEFAULTS, params['detection'])['snr_min']}); "
            "cannot measure visit shifts"
        )
    footprints_tp = {
        k: [np.column_stack(ac.to_tangent(e.footprint[:, 0], e.footprint[:, 1], ra0, dec0)) for e in groups[k]]
        for k in keys
    }
    fwhm = ac.psf_fwhm_arcsec(reference_band)
    pscale = max(fwhm / 2.0, 0.02)
    anchor_xy = None
    if anchor is not None:
        anchor_xy = np.column_stack(ac.to_tangent(anchor["ra"], anchor["dec"], ra0, dec0))
    centers = np.array([[np.mean(catalogs[k]["xi"]), np.mean(catalogs[k]["eta"])] for k in keys])
    result = {"keys": keys, "groups": groups, "catalogs": catalogs, "centers": centers, "tangent_point": (ra0, dec0)}
    if len(keys) == 1 and anchor is None:
        log.info("one group (%s) and no anchor: nothing to align it to, the correction is the identity", keys[0])
        empty = np.zeros(0, int)
        solution = {
            "shifts": np.zeros((1, 2)),
            "rotations": np.zeros(1),
            "shift_err": np.zeros(1),
            "residuals": np.zeros((0, 2)),
            "keep": np.zeros(0, bool),
            "pair_of": empty,
            "group_a": empty,
            "group_b": empty,
            "rms": 0.0,
            "n_used": 0,
        }
        return {**result, "pairs": [], "solution": solution, "n_matched": np.zeros(1, int)}
    pairs = match_pairs(keys, catalogs, footprints_tp, params, pscale, fwhm, anchor_xy)
    labels = connected_groups(len(keys), [(p[0], p[1]) for p in pairs])
    n_matched = np.zeros(len(keys), int)
    for a, b, pa, _pb, _w in pairs:
        n_matched[a] += len(pa)
        if b >= 0:
            n_matched[b] += len(pa)
    weak = [
        f"{keys[i]} ({n_matched[i]} matches, {len(catalogs[keys[i]])} sources)"
        for i in range(len(keys))
        if n_matched[i] < params["min_group_matches"]
    ]
    if weak:
        raise wfutils.InputError(
            f"{reference_band}: too few matched sources for group(s) {', '.join(weak)}; "
            f"need >= {params['min_group_matches']} (min_group_matches)"
        )
    if anchor is not None:
        anchored_label = {labels[p[0]] for p in pairs if p[1] < 0}
        loose = [keys[i] for i in range(len(keys)) if labels[i] not in anchored_label]
    else:
        loose = [keys[i] for i in range(len(keys)) if labels[i] != labels[0]] if len(set(labels)) > 1 else []
    if loose:
        raise wfutils.InputError(
            f"{reference_band}: group(s) {', '.join(loose)} share no matched sources with the others"
            + (" or the anchor catalogue" if anchor is not None else "")
            + f" (min_pair_matches {params['min_pair_matches']}); their relative shift is undetermined"
        )
    solution = solve_group_offsets(
        pairs,
        len(keys),
        centers,
        fitgeom=params["fitgeom"],
        anchored=anchor is not None,
        gauge=params["gauge"],
        nclip=params["nclip"],
        clip_sigma=params["clip_sigma"],
    )
    rms_mas = solution["rms"] * 1e3
    log.info("joint solution: %d groups, %d matched pairs used, RMS %.2f mas", len(keys), solution["n_used"], rms_mas)
    if not np.isfinite(rms_mas) or rms_mas > params["max_rms_mas"]:
        raise wfutils.InputError(
            f"{reference_band}: residual RMS {rms_mas:.1f} mas of the joint visit solution exceeds "
            f"max_rms_mas {params['max_rms_mas']} ({solution['n_used']} matched pairs)"
        )
    return {**result, "pairs": pairs, "solution": solution, "n_matched": n_matched}


def corrections_of(result) -> dict:
    ra0, dec0 = result["tangent_point"]
    sol = result["solution"]
    out = {}
    for i, key in enumerate(result["keys"]):
        theta = math.degrees(sol["rotations"][i])
        out[key] = ac.SkyCorrection.rotation_shift(ra0, dec0, theta, sol["shifts"][i], result["centers"][i])
    return out


# --------------------------------------------------------------------------- outputs
def shift_table(result, corrections, reference_band, instrument, n_corrected):
    from astropy.table import Table

    sol = result["solution"]
    rows = []
    for i, key in enumerate(result["keys"]):
        corr = corrections[key]
        ra_c, dec_c = ac.from_tangent(*result["centers"][i], *result["tangent_point"])
        in_pair = (sol["group_a"] == i) | (sol["group_b"] == i)
        used = in_pair & sol["keep"]
        res = sol["residuals"][used]
        rows.append(
            (
                key,
                instrument,
                reference_band,
                len(result["groups"][key]),
                n_corrected.get(key, 0),
                len(result["catalogs"][key]),
                int(used.sum()),
                float(corr.shift[0]),
                float(corr.shift[1]),
                float(sol["shift_err"][i] * 1e3),
                float(corr.rotation_deg),
                float(np.sqrt(np.mean(np.sum(res**2, axis=1))) * 1e3) if len(res) else math.nan,
                float(ra_c),
                float(dec_c),
            )
        )
    names = (
        "group",
        "instrument",
        "reference_band",
        "n_measured",
        "n_corrected",
        "n_sources",
        "n_matches",
        "shift_east_arcsec",
        "shift_north_arcsec",
        "shift_err_mas",
        "rotation_deg",
        "rms_mas",
        "center_ra",
        "center_dec",
    )
    table = Table(rows=rows, names=names)
    table.meta.update(
        {
            "description": "relative astrometric correction per group: corrected = header position + shift",
            "group_by": result.get("group_by", "visit"),
            "tangent_point": list(result["tangent_point"]),
            "rms_mas": float(sol["rms"] * 1e3),
        }
    )
    return table


def corrected_catalog(result, corrections):
    """Reference-band sources of all groups in the corrected frame, merged across groups."""
    from astropy.table import vstack

    ra0, dec0 = result["tangent_point"]
    parts = []
    for i, key in enumerate(result["keys"]):
        cat = result["catalogs"][key].copy()
        if not len(cat):
            continue
        ra, dec = corrections[key].apply(cat["ra"], cat["dec"])
        cat["ra"], cat["dec"] = ra, dec
        cat["member"] = i
        parts.append(cat)
    table = vstack(parts, metadata_conflicts="silent")
    fwhm = ac.psf_fwhm_arcsec(result["groups"][result["keys"][0]][0].filter)
    merged = ac.merged_catalog(table, "member", 0.6 * fwhm, 1, ra0, dec0)
    merged.remove_columns(["xi", "eta"])
    merged.meta = {"description": "reference-band sources after relative alignment"}
    return merged


def qa_outputs(result, corrections, reference_band, png, json_path, instrument):
    sol = result["solution"]
    keys = result["keys"]
    panels, stats = [], {}
    fwhm_mas = ac.psf_fwhm_arcsec(reference_band) * 1e3
    pixel_mas = {"NIRCAM": 63.0 if ac.band_wavelength_um(reference_band) > 2.4 else 31.0, "MIRI": 110.0}.get(
        instrument, fwhm_mas / 2
    )
    for i, key in enumerate(keys):
        use = ((sol["group_a"] == i) | (sol["group_b"] == i)) & sol["keep"]
        sign = np.where(sol["group_a"][use] == i, 1.0, -1.0)[:, None]
        res = sol["residuals"][use] * sign * 1e3  # this group minus the other, after correction
        panels.append(
            {
                "band": reference_band,
                "label": f"group {key}",
                "d_ra_mas": res[:, 0],
                "d_dec_mas": res[:, 1],
                "fwhm_mas": fwhm_mas,
                "pixel_mas": pixel_mas,
            }
        )
        stats[key] = {
            **ac.residual_stats(res[:, 0], res[:, 1]),
            "shift_east_arcsec": float(corrections[key].shift[0]),
            "shift_north_arcsec": float(corrections[key].shift[1]),
            "shift_err_mas": float(sol["shift_err"][i] * 1e3),
            "rotation_deg": float(corrections[key].rotation_deg),
        }
    if png:
        ac.scatterball(panels, png, f"{instrument} {reference_band}: each group minus matched sources of other groups")
    if json_path:
        doc = {
            "step": "align_relative",
            "instrument": instrument,
            "reference_band": reference_band,
            "rms_mas": float(sol["rms"] * 1e3),
            "n_pairs_used": sol["n_used"],
            "groups": stats,
        }
        wfutils.write_text(json.dumps(doc, indent=1, default=float), json_path)


def apply_corrections(exposures, corrections, by, out_dir, params, cfg_hash, inputs_for_provenance):
    """Write every input with its group's correction; returns {group: n files}."""
    counts: dict[str, int] = {}
    for i, exp in enumerate(exposures, start=1):
        key = exp.visit if by == "visit" else f"{exp.exposure}:{exp.filter}"
        corr = corrections.get(key)
        if corr is None:
            if params["unmeasured"] == "skip":
                log.warning("%s: group %s was not measured; written without correction", exp.name, key)
            else:
                raise wfutils.InputError(
                    f"{exp.name}: its visit {key} has no {params['reference_band_used']} exposure among the inputs, "
                    "so its shift is unknown (set unmeasured: skip to pass it through)"
                )
        model = ac.open_model(exp.path)
        worst = ac.correct_exposure_wcs(model, corr) if corr is not None else 0.0
        model.meta.cal_step.tweakreg = "COMPLETE" if corr is not None else "SKIPPED"
        wfutils.save_model(
            model, Path(out_dir) / exp.name, [exp.path, *inputs_for_provenance], cfg_hash, "align_relative"
        )
        model.close()
        counts[key] = counts.get(key, 0) + 1
        if i % 25 == 0 or i == len(exposures):
            log.info(
                "corrected %d/%d exposures (last %s, WCS check %.2g mas)", i, len(exposures), exp.name, worst * 1e3
            )
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="cal exposures of one instrument and target, all bands")
    parser.add_argument("--out-dir", required=True, help="corrected exposures are written here with the same names")
    parser.add_argument("--reference-band", help="band measured (default: params reference_band of the instrument)")
    parser.add_argument("--params", default="{}", help="JSON: config section corrections.align_relative")
    parser.add_argument("--anchor-catalog", help="catalogue (ra, dec) every group is also matched to, e.g. NIRCam's")
    parser.add_argument("--table", help="ECSV of shifts per group (default OUT_DIR/relative_shifts_<band>.ecsv)")
    parser.add_argument("--catalog", help="merged reference-band catalogue in the corrected frame (ECSV)")
    parser.add_argument("--qa-png", help="scatterball of matched-source residuals per group")
    parser.add_argument("--qa-json", help="residual statistics per group (JSON)")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    try:
        raw_params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise wfutils.InputError(f"--params is not valid JSON ({exc})") from None

    exposures = [Exposure(p) for p in args.inputs]
    instruments = sorted({e.instrument for e in exposures})
    if len(instruments) != 1:
        raise wfutils.InputError(f"inputs mix instruments {', '.join(instruments)}; run once per instrument")
    instrument = instruments[0]
    params = resolve_params(raw_params, instrument)
    band = args.reference_band or params["reference_band"]
    if not band:
        raise wfutils.InputError(f"no reference band for {instrument} (params reference_band or --reference-band)")
    params["reference_band_used"] = band
    log.info(
        "%d %s exposures in %d bands; reference band %s, one shift per %s",
        len(exposures),
        instrument,
        len({e.filter for e in exposures}),
        band,
        params["group_by"],
    )
    anchor = None
    extra_inputs = []
    if args.anchor_catalog:
        anchor = ac.read_reference_catalog(args.anchor_catalog, params["anchor"].get("select"))
        extra_inputs.append(args.anchor_catalog)
        log.info(
            "anchor catalogue %s: %d of %d sources selected", args.anchor_catalog, len(anchor), anchor.meta["n_read"]
        )
    result = measure(exposures, params, band, anchor)
    result["group_by"] = params["group_by"]
    corrections = corrections_of(result)
    for key, corr in corrections.items():
        log.info(
            "group %s: shift %+.4f %+.4f arcsec, rotation %+.5f deg",
            key,
            corr.shift[0],
            corr.shift[1],
            corr.rotation_deg,
        )
    out_dir = Path(args.out_dir)
    counts = apply_corrections(
        exposures, corrections, params["group_by"], out_dir, params, args.config_hash, extra_inputs
    )
    table = shift_table(result, corrections, band, instrument, counts)
    table_path = args.table or out_dir / f"relative_shifts_{band}.ecsv"
    wfutils.write_text("\n".join(ac.table_lines(table)) + "\n", table_path)
    if args.catalog:
        cat = corrected_catalog(result, corrections)
        wfutils.write_text("\n".join(ac.table_lines(cat)) + "\n", args.catalog)
    qa_outputs(result, corrections, band, args.qa_png, args.qa_json, instrument)
    log.info("wrote %d exposures and %s", len(exposures), table_path)


if __name__ == "__main__":
    wfutils.run_cli(main)
