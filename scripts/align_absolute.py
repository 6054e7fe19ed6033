"""Absolute astrometry: fit a reference-band mosaic to an external catalogue, propagate to exposures.

PHANGS-JWST Sec. 3.8: after relative alignment the mosaic is internally consistent but offset
from the external frame by up to arcseconds. The catalogue (HST-based, Gaia or the user's own,
with magnitude/colour cuts from the config; for MIRI the aligned NIRCam catalogue) is matched
in two steps: a wide 2-D-histogram search with a loose tolerance fitting a shift only, then a
strict match fitting shift + rotation with sigma clipping. The solution is measured once per
instrument on the level-3 mosaic of its reference band and applied to the exposures of every
band mapped to that reference band (``align_mapping``, e.g. all MIRI bands from F1000W) -- the
"tweakback" -- so that they can be drizzled again; the aligned mosaic is written as well.
Instead of a mosaic, the exposures of the reference band can be given: their catalogues are
merged in the sky.

Failures (no sources, too few matches, a catalogue that does not cover the field, a degenerate
fit, an RMS above ``max_rms_mas``) raise with the band and numbers before anything is written.
Outputs: aligned files under ``--out-dir`` with the same names, an ECSV fit table, the aligned
reference-band catalogue (a reference for other instruments), a QA scatterball per band and a
JSON of residual statistics.
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

log = logging.getLogger("align_absolute")

DEFAULTS = {
    "reference_band": {"NIRCAM": "F300M", "MIRI": "F1000W"},
    "align_mapping": {},  # band -> reference band whose solution it takes
    "refcat": {"select": {}, "ra_column": None, "dec_column": None, "max_sources": 5000},
    "detection": {},
    "use_extended": False,
    "merge_radius_fwhm": 0.6,  # exposures instead of a mosaic: merge radius and minimum detections
    "min_detections": 2,
    "wide": {"searchrad": 10.0, "tolerance": 1.0, "separation": 0.1, "nclip": 3, "sigma": 3.0, "max_sources": 400},
    "strict": {
        "searchrad": 2.0,
        "tolerance": 0.5,
        "refine_tolerances": [0.2, 0.1],
        "separation": 0.05,
        "fitgeom": "rshift",
        "nclip": 5,
        "sigma": 3.0,
    },
    "min_matches": 10,
    "min_spread_arcsec": 5.0,  # rotation needs matches spread over the field (else shift only)
    "max_rotation_deg": 0.1,
    "min_rotation_significance": 3.0,  # a rotation below this many sigma is dropped (shift-only fit)
    "max_rms_mas": 25.0,
    "qa_other_bands": True,  # measure every mapped band after correction for the scatterballs
    "qa_match_tolerance": 0.15,  # arcsec
    "per_instrument": {
        "MIRI": {
            "use_extended": True,
            "detection": {"snr_min": 8.0, "max_fwhm_ratio": 2.5},
            "wide": {"searchrad": 20.0},
            "min_matches": 6,
            "max_rms_mas": 60.0,
            "min_spread_arcsec": 3.0,
        }
    },
}


def resolve_params(params: dict | None, instrument: str) -> dict:
    """Defaults < config section < ``per_instrument.<INSTRUMENT>``; values written per instrument
    (``{NIRCAM: 10.0, MIRI: 20.0}``, e.g. ``wide.searchrad``) resolve to this instrument's entry."""
    return ac.layered_params(DEFAULTS, params, instrument)


# --------------------------------------------------------------------------- the fit (pure)
def fit_to_reference(img_xy, ref_xy, params: dict, pscale: float, band: str) -> dict:
    """Two-step match and fit of image positions (arcsec, tangent plane) to reference positions.

    Returns the ``astro_common.two_step_match`` result; raises InputError naming ``band`` and the
    numbers for too few matches, matches that all lie in one spot, a rotation beyond
    ``max_rotation_deg`` or an RMS above ``max_rms_mas``. Matches spread over less than
    ``min_spread_arcsec`` (a narrow field) fix the shift but not the rotation: shift only.
    """
    wide = dict(params["wide"])
    order = np.arange(len(img_xy))[: int(wide.get("max_sources", len(img_xy)))]  # image catalogue is flux-sorted
    wide_result = ac.two_step_match(
        ref_xy, img_xy[order], wide, params["strict"], pscale, fitgeom="shift", min_matches=3
    )
    if not wide_result["ok"]:
        raise wfutils.InputError(
            f"{band}: too few matches with the reference catalogue ({wide_result['reason']}; "
            f"{len(img_xy)} image sources, {len(ref_xy)} catalogue sources); need >= {params['min_matches']}"
        )
    # the full image list, starting from the wide solution of the brightest sources
    offset = wide_result["wide_offset"]
    result = _strict_from_offset(ref_xy, img_xy, offset, params, pscale)
    result["n_wide"] = wide_result["n_wide"]
    result["wide_offset"] = offset
    n = result["n_strict"] if result["ok"] else 0
    if not result["ok"] or n < params["min_matches"]:
        raise wfutils.InputError(
            f"{band}: {n} matches with the reference catalogue after the strict step "
            f"({result.get('reason') or 'after clipping'}; wide step {wide_result['n_wide']} matches, "
            f"offset {offset[0]:+.3f} {offset[1]:+.3f} arcsec); need >= {params['min_matches']}"
        )
    fit = result["fit"]
    matched = img_xy[result["img_idx"]]
    spread = np.sqrt(np.linalg.eigvalsh(np.cov(matched.T))) if n > 2 else np.zeros(2)
    if spread.max() < pscale:
        raise wfutils.InputError(
            f"{band}: degenerate fit, the {n} matched sources lie within {spread.max():.3f} arcsec of each other"
        )
    rotation = correction_from_fit(fit, 0.0, 0.0).rotation_deg  # east towards north
    rotation_err = rotation_uncertainty_deg(ref_xy[result["ref_idx"]], matched, fit)
    result["rotation_err_deg"] = rotation_err
    narrow = spread.min() < params["min_spread_arcsec"]
    if params["strict"]["fitgeom"] != "shift" and (
        narrow or abs(rotation) < params["min_rotation_significance"] * rotation_err
    ):
        from tweakwcs import iter_linear_fit

        if narrow:
            log.warning(
                "%s: the %d matched sources span only %.2f arcsec across (min_spread_arcsec %s): rotation "
                "undetermined, fitting a shift only",
                band,
                n,
                spread.min(),
                params["min_spread_arcsec"],
            )
        else:
            log.info(
                "%s: rotation %+.5f +- %.5f deg is below %.1f sigma; keeping a shift-only fit",
                band,
                rotation,
                rotation_err,
                params["min_rotation_significance"],
            )
        fit = iter_linear_fit(ref_xy[result["ref_idx"]], matched, fitgeom="shift", nclip=0)
        result["fit"] = fit
        rotation = 0.0
    if abs(rotation) > params["max_rotation_deg"]:
        raise wfutils.InputError(
            f"{band}: fitted rotation {rotation:+.4f} deg exceeds max_rotation_deg {params['max_rotation_deg']} "
            f"({n} matches): a wrong match or a wrong catalogue"
        )
    rms_mas = float(fit["rmse"]) * 1e3
    if not math.isfinite(rms_mas) or rms_mas > params["max_rms_mas"]:
        raise wfutils.InputError(
            f"{band}: fit RMS {rms_mas:.1f} mas exceeds max_rms_mas {params['max_rms_mas']} ({n} matches)"
        )
    result["rms_mas"] = rms_mas
    result["spread_arcsec"] = spread.tolist()
    return result


def rotation_uncertainty_deg(ref_xy, img_xy, fit) -> float:
    """1-sigma uncertainty (degrees) of a fitted rotation: per-coordinate scatter over the lever arm."""
    if len(img_xy) < 3:
        return math.inf
    per_coord = float(fit["rmse"]) / math.sqrt(2.0)
    lever = np.sum(np.sum((img_xy - img_xy.mean(axis=0)) ** 2, axis=1))
    return math.degrees(per_coord / math.sqrt(max(lever, 1e-12)))


def _strict_from_offset(ref_xy, img_xy, offset, params, pscale):
    """Strict step on the full image list, after removing the wide-step offset."""
    moved_start = {"center": np.zeros(2), "matrix": np.eye(2), "shift": -np.asarray(offset, float)}
    shifted = ac.apply_fit(moved_start, img_xy)
    strict = params["strict"]
    result = ac.two_step_match(
        ref_xy,
        shifted,
        {
            "searchrad": strict["searchrad"],
            "tolerance": strict["tolerance"],
            "separation": strict["separation"],
            "nclip": strict["nclip"],
            "sigma": strict["sigma"],
        },
        strict,
        pscale,
        fitgeom=strict["fitgeom"],
        min_matches=3,
    )
    if not result["ok"]:
        return result
    # refit on the original (unshifted) image positions so that the fit maps them directly
    from tweakwcs import iter_linear_fit

    ri, ii = result["ref_idx"], result["img_idx"]
    fit = iter_linear_fit(ref_xy[ri], img_xy[ii], fitgeom=strict["fitgeom"], nclip=0)
    fit["fitmask"] = np.ones(len(ri), bool)
    result["fit"] = fit
    return result


def correction_from_fit(fit: dict, ra0: float, dec0: float) -> ac.SkyCorrection:
    return ac.SkyCorrection(
        ra0, dec0, np.asarray(fit["matrix"], float), np.asarray(fit["shift"], float), np.asarray(fit["center"], float)
    )


# --------------------------------------------------------------------------- I/O
class Input:
    def __init__(self, path):
        model = ac.open_model(path)
        self.path = str(path)
        self.name = Path(path).name
        self.filter = model.meta.instrument.filter
        self.instrument = (model.meta.instrument.name or ac.instrument_of_filter(self.filter)).upper()
        self.mosaic = ac.is_mosaic(model)
        self.footprint = ac.footprint(model)
        model.close()


def image_catalog(ref_inputs, params, ra0, dec0):
    """Sources of the reference band: from its mosaic, or merged from its exposures."""
    from astropy.table import vstack

    if len(ref_inputs) == 1 and ref_inputs[0].mosaic:
        model = ac.open_model(ref_inputs[0].path)
        cat = ac.catalog_model(model, params["detection"])
        model.close()
        xi, eta = ac.to_tangent(cat["ra"], cat["dec"], ra0, dec0)
        cat["xi"], cat["eta"] = xi, eta
        log.info("%s: %d sources, %d point-like", ref_inputs[0].name, len(cat), int(np.sum(cat["point_like"])))
        return cat
    tables = []
    for i, item in enumerate(ref_inputs):
        model = ac.open_model(item.path)
        cat = ac.catalog_model(model, params["detection"])
        model.close()
        log.info("%s: %d sources, %d point-like", item.name, len(cat), int(np.sum(cat["point_like"])))
        if len(cat):
            cat["member"] = i
            tables.append(cat)
    if not tables:
        return ac.merged_catalog(empty_catalog(), "member", 1.0, 1, ra0, dec0)
    radius = params["merge_radius_fwhm"] * ac.psf_fwhm_arcsec(ref_inputs[0].filter)
    merged = ac.merged_catalog(
        vstack(tables, metadata_conflicts="silent"),
        "member",
        radius,
        min(params["min_detections"], len(ref_inputs)),
        ra0,
        dec0,
    )
    merged["snr"] = np.full(len(merged), np.nan)
    return merged


def empty_catalog():
    from astropy.table import Table

    return Table(
        names=("ra", "dec", "flux", "fwhm_arcsec", "point_like", "member"),
        dtype=(float, float, float, float, bool, int),
    )


def select_reference(refcat, polygons_tp, ra0, dec0, margin, params, path, band):
    """Catalogue sources inside the field (grown by the wide search radius); fails if too few."""
    xi, eta = ac.to_tangent(refcat["ra"], refcat["dec"], ra0, dec0)
    inside = ac.inside_footprints(xi, eta, polygons_tp, margin=margin)
    n_in = int(inside.sum())
    if n_in < params["min_matches"]:
        ra, dec = np.asarray(refcat["ra"]), np.asarray(refcat["dec"])
        raise wfutils.InputError(
            f"{path}: only {n_in} of {len(refcat)} selected catalogue sources fall on the {band} field "
            f"(centre RA {ra0:.5f} Dec {dec0:.5f}, grown by {margin:.1f} arcsec); the catalogue covers RA "
            f"{ra.min():.5f}..{ra.max():.5f}, Dec {dec.min():.5f}..{dec.max():.5f}; need >= {params['min_matches']}"
        )
    ref = refcat[inside]
    mags = [c for c in ("mag", "Gmag", "phot_g_mean_mag") if c in ref.colnames]
    if mags:  # brightest first, so that max_sources keeps the best-measured ones
        ref = ref[np.argsort(np.asarray(ref[mags[0]], float))]
    elif "flux" in ref.colnames:
        ref = ref[np.argsort(-np.asarray(ref["flux"], float))]
    ref = ref[: int(params["refcat"]["max_sources"])]
    rxi, reta = ac.to_tangent(ref["ra"], ref["dec"], ra0, dec0)
    return ref, np.column_stack([rxi, reta])


def band_panel(band, cat, ref_xy, ra0, dec0, tolerance, pixel_mas):
    """Measured-minus-reference offsets (mas, east/north) of a band's sources after correction."""
    from scipy.spatial import cKDTree

    xi, eta = ac.to_tangent(cat["ra"], cat["dec"], ra0, dec0)
    xy = np.column_stack([xi, eta])
    if len(xy) == 0 or len(ref_xy) == 0:
        d = np.zeros((0, 2))
    else:
        dist, idx = cKDTree(ref_xy).query(xy, distance_upper_bound=tolerance)
        ok = np.isfinite(dist)
        d = (xy[ok] - ref_xy[idx[ok]]) * 1e3
    return {
        "band": band,
        "label": "",
        "d_ra_mas": d[:, 0],
        "d_dec_mas": d[:, 1],
        "fwhm_mas": ac.psf_fwhm_arcsec(band) * 1e3,
        "pixel_mas": pixel_mas,
    }


def pixel_mas_of(band):
    instrument = ac.instrument_of_filter(band)
    if instrument == "MIRI":
        return 110.0
    return 63.0 if ac.band_wavelength_um(band) > 2.4 else 31.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="the reference-band mosaic (i2d) and/or exposures of mapped bands")
    parser.add_argument("--refcat", required=True, help="external catalogue (ECSV/FITS with ra, dec, optional mags)")
    parser.add_argument("--out-dir", required=True, help="aligned files are written here with the same names")
    parser.add_argument("--band-map", help="JSON {band: reference band} (config astrometry.align_mapping)")
    parser.add_argument("--reference-band", help="band measured when no mosaic is given")
    parser.add_argument("--params", default="{}", help="JSON: config section astrometry")
    parser.add_argument("--fit-table", help="ECSV of the fit (default OUT_DIR/absolute_fit_<band>.ecsv)")
    parser.add_argument("--catalog", help="aligned reference-band source catalogue (ECSV), e.g. a reference for MIRI")
    parser.add_argument("--qa-png", help="scatterball per band, measured minus catalogue")
    parser.add_argument("--qa-json", help="residual statistics per band (JSON)")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    try:
        raw = json.loads(args.params)
        band_map = json.loads(args.band_map) if args.band_map else None
    except json.JSONDecodeError as exc:
        raise wfutils.InputError(f"--params/--band-map is not valid JSON ({exc})") from None

    items = [Input(p) for p in args.inputs]
    instruments = sorted({i.instrument for i in items})
    if len(instruments) != 1:
        raise wfutils.InputError(f"inputs mix instruments {', '.join(instruments)}; run once per reference band")
    instrument = instruments[0]
    params = resolve_params(raw, instrument)
    mapping = band_map if band_map is not None else params["align_mapping"]
    mosaics = [i for i in items if i.mosaic]
    if len(mosaics) > 1:
        raise wfutils.InputError(f"{len(mosaics)} mosaics given ({', '.join(m.name for m in mosaics)}); give one")
    band = mosaics[0].filter if mosaics else (args.reference_band or params["reference_band"])
    if not band:
        raise wfutils.InputError(f"no reference band for {instrument}: give a mosaic or --reference-band")
    wrong = [i.name for i in items if not i.mosaic and i.filter != band and mapping.get(i.filter, i.filter) != band]
    if wrong:
        raise wfutils.InputError(
            f"{len(wrong)} input(s) are not mapped to reference band {band} (align_mapping): {', '.join(wrong[:5])}"
        )
    ref_inputs = mosaics or [i for i in items if i.filter == band]
    if not ref_inputs:
        raise wfutils.InputError(f"no {band} mosaic or exposures among the inputs")
    corners = np.vstack([i.footprint for i in ref_inputs])
    ra0, dec0 = ac.mean_sky_position(corners[:, 0], corners[:, 1])
    polygons = [np.column_stack(ac.to_tangent(i.footprint[:, 0], i.footprint[:, 1], ra0, dec0)) for i in ref_inputs]

    refcat = ac.read_reference_catalog(
        args.refcat, params["refcat"]["select"], params["refcat"]["ra_column"], params["refcat"]["dec_column"]
    )
    log.info(
        "reference catalogue %s: %d of %d sources pass the selection", args.refcat, len(refcat), refcat.meta["n_read"]
    )
    ref, ref_xy = select_reference(refcat, polygons, ra0, dec0, params["wide"]["searchrad"], params, args.refcat, band)

    cat = image_catalog(ref_inputs, params, ra0, dec0)
    usable = cat if params["use_extended"] else cat[np.asarray(cat["point_like"], bool)]
    if len(usable) == 0:
        raise wfutils.InputError(
            f"{band}: no {'compact' if params['use_extended'] else 'point'} sources detected in "
            f"{', '.join(i.name for i in ref_inputs)}; cannot fit the absolute astrometry"
        )
    img_xy = np.column_stack([usable["xi"], usable["eta"]])
    pscale = max(ac.psf_fwhm_arcsec(band) / 2.0, 0.02)
    log.info(
        '%s: matching %d image sources with %d catalogue sources (wide radius %.1f", strict tolerance %.2f")',
        band,
        len(img_xy),
        len(ref_xy),
        params["wide"]["searchrad"],
        params["strict"]["tolerance"],
    )
    result = fit_to_reference(img_xy, ref_xy, params, pscale, band)
    correction = correction_from_fit(result["fit"], ra0, dec0)
    east, north = correction.offset_at(ra0, dec0)
    log.info(
        "%s: wide-step correction %+.3f %+.3f arcsec (%d matches); strict %d matches, correction at centre %+.4f %+.4f "
        "arcsec, rotation %+.5f deg, RMS %.2f mas",
        band,
        -result["wide_offset"][0],
        -result["wide_offset"][1],
        result["n_wide"],
        result["n_strict"],
        float(east),
        float(north),
        correction.rotation_deg,
        result["rms_mas"],
    )

    out_dir = Path(args.out_dir)
    provenance = [args.refcat]
    for k, item in enumerate(items, start=1):
        model = ac.open_model(item.path)
        worst = ac.correct_mosaic_wcs(model, correction) if item.mosaic else ac.correct_exposure_wcs(model, correction)
        if not item.mosaic:
            model.meta.cal_step.tweakreg = "COMPLETE"
        wfutils.save_model(model, out_dir / item.name, [item.path, *provenance], args.config_hash, "align_absolute")
        model.close()
        if k % 25 == 0 or k == len(items):
            log.info("aligned %d/%d files (last %s, WCS check %.2g mas)", k, len(items), item.name, worst * 1e3)

    # fit table
    from astropy.table import Table

    fit = result["fit"]
    table = Table(
        rows=[
            (
                band,
                instrument,
                Path(args.refcat).name,
                len(ref_xy),
                len(img_xy),
                result["n_wide"],
                result["n_strict"],
                float(-result["wide_offset"][0]),
                float(-result["wide_offset"][1]),
                float(east),
                float(north),
                correction.rotation_deg,
                result["rotation_err_deg"],
                fit["fitgeom"],
                result["rms_mas"],
                ra0,
                dec0,
                len(items),
            )
        ],
        names=(
            "band",
            "instrument",
            "refcat",
            "n_refcat",
            "n_image",
            "n_wide",
            "n_matched",
            "wide_east_arcsec",
            "wide_north_arcsec",
            "shift_east_arcsec",
            "shift_north_arcsec",
            "rotation_deg",
            "rotation_err_deg",
            "fitgeom",
            "rms_mas",
            "center_ra",
            "center_dec",
            "n_files",
        ),
    )
    table.meta.update(
        {
            "description": "absolute astrometric correction: corrected = correction(header position)",
            "correction": correction.as_dict(),
        }
    )
    fit_table = args.fit_table or out_dir / f"absolute_fit_{band}.ecsv"
    wfutils.write_text("\n".join(ac.table_lines(table)) + "\n", fit_table)

    # aligned reference-band catalogue
    ra_c, dec_c = correction.apply(cat["ra"], cat["dec"])
    out_cat = Table(
        {
            "ra": ra_c,
            "dec": dec_c,
            "flux": cat["flux"],
            "fwhm_arcsec": cat["fwhm_arcsec"],
            "point_like": cat["point_like"],
        }
    )
    matched = np.zeros(len(cat), bool)
    usable_index = (
        np.flatnonzero(np.asarray(cat["point_like"], bool)) if not params["use_extended"] else np.arange(len(cat))
    )
    matched[usable_index[result["img_idx"]]] = True
    out_cat["matched"] = matched
    out_cat.meta.update({"description": f"{band} sources in the frame of {Path(args.refcat).name}", "band": band})
    if args.catalog:
        wfutils.write_text("\n".join(ac.table_lines(out_cat)) + "\n", args.catalog)

    # QA: the reference band's matched residuals, and every other mapped band measured after correction
    moved = np.column_stack(correction.apply_tangent(img_xy[:, 0], img_xy[:, 1]))
    d = (moved[result["img_idx"]] - ref_xy[result["ref_idx"]]) * 1e3
    panels = [
        {
            "band": band,
            "label": "vs catalogue",
            "d_ra_mas": d[:, 0],
            "d_dec_mas": d[:, 1],
            "fwhm_mas": ac.psf_fwhm_arcsec(band) * 1e3,
            "pixel_mas": pixel_mas_of(band),
        }
    ]
    if params["qa_other_bands"]:
        others = sorted({i.filter for i in items if not i.mosaic and i.filter != band})
        for other in others:
            paths = [out_dir / i.name for i in items if i.filter == other]
            sub = [Input(p) for p in paths]
            cat_o = image_catalog(sub, params, ra0, dec0)
            cat_o = cat_o if params["use_extended"] else cat_o[np.asarray(cat_o["point_like"], bool)]
            panels.append(
                band_panel(other, cat_o, ref_xy, ra0, dec0, params["qa_match_tolerance"], pixel_mas_of(other))
            )
    stats = {p["band"]: ac.residual_stats(p["d_ra_mas"], p["d_dec_mas"]) for p in panels}
    if args.qa_png:
        ac.scatterball(panels, args.qa_png, f"{instrument}: measured minus {Path(args.refcat).name}")
    if args.qa_json:
        fit_row = {
            name: (value.item() if hasattr(value, "item") else value)
            for name, value in zip(table.colnames, table[0], strict=True)
        }
        doc = {
            "step": "align_absolute",
            "reference_band": band,
            "refcat": str(args.refcat),
            "fit": fit_row,
            "correction": correction.as_dict(),
            "bands": stats,
        }
        wfutils.write_text(json.dumps(doc, indent=1, default=float), args.qa_json)
    log.info("wrote %d aligned files and %s", len(items), fit_table)


if __name__ == "__main__":
    wfutils.run_cli(main)
