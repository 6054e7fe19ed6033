"""Compact star cluster candidates from the MCI plane (PHANGS-HST, Lee et al. 2022 Sec. 4.4).

Method. A source is a candidate when

1. its V-band S/N in the 4 px aperture is >= ``snr_min`` (10);
2. it is detected in at least ``min_other_bands`` (2) other bands with a magnitude error
   <= ``max_mag_err`` (0.3 mag);
3. it lies outside the stellar region (the point-source locus, ``inject_clusters.py``);
4. it lies inside the model region of bin size ``model_bin`` (the outer, 0.04 contour by
   default, the list the paper classifies with CNNs) -- the **model list** -- or, for the
   second, **polygon list**, inside the fixed polygon whose lower MCI_out bound depends on the
   distance (-1.7 up to 8 Mpc, -1.1 to 14 Mpc, -0.7 beyond).

Sources brighter than M_V = ``super_hd_mag`` (-10, the Humphreys-Davidson limit; total Vega
magnitude minus the distance modulus) with ``super_hd_mci_in`` (-0.55 <= MCI_in <= 0.45) are
kept in both lists whatever 1-4 say (flag ``super_hd``).

    python scripts/select_clusters.py --catalog CAT.ecsv --regions REGIONS.fits --distance-mpc D
        --output CANDIDATES.ecsv --output-polygon CANDIDATES_POLY.ecsv [--ds9 C.reg]
        [--qa-png QA.png] [--params JSON] [--log LOG]

Both lists are also written as FITS next to the ECSV files.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

import inject_clusters
from wflib import catalog_common as cc
from wflib import wfutils

log = logging.getLogger("select_clusters")

DEFAULTS = {
    "snr_min": 10.0,
    "min_other_bands": 2,
    "max_mag_err": 0.3,
    "model_bin": 0.04,
    # polygon: MCI_in between the two values, MCI_out below the top and above the distance-dependent bound
    "polygon_mci_in": [-0.6, 0.45],
    "polygon_mci_out_max": 1.0,
    "polygon_lower_bounds": [[8.0, -1.7], [14.0, -1.1], [1e9, -0.7]],  # [max distance Mpc, lower MCI_out]
    "super_hd_mag": -10.0,
    "super_hd_mci_in": [-0.55, 0.45],
}


# --------------------------------------------------------------------------- pure functions
def polygon_lower_bound(distance_mpc: float, bounds) -> float:
    """Lower MCI_out edge of the polygon at a distance (the first bound whose distance is not exceeded)."""
    for max_distance, lower in bounds:
        if distance_mpc <= max_distance:
            return float(lower)
    return float(bounds[-1][1])


def in_polygon(mci_in, mci_out, distance_mpc, params):
    lo_in, hi_in = params["polygon_mci_in"]
    lower = polygon_lower_bound(distance_mpc, params["polygon_lower_bounds"])
    with np.errstate(invalid="ignore"):
        return (mci_in >= lo_in) & (mci_in <= hi_in) & (mci_out >= lower) & (mci_out <= params["polygon_mci_out_max"])


def other_band_detections(table, params) -> np.ndarray:
    """Number of bands other than V with a finite magnitude error <= max_mag_err."""
    bands = [c.removeprefix("mag_err_") for c in table.colnames if c.startswith("mag_err_")]
    count = np.zeros(len(table), int)
    for band in bands:
        if band == cc.V_BAND:
            continue
        err = np.asarray(table[f"mag_err_{band}"], float)
        count += np.nan_to_num(err, nan=np.inf) <= params["max_mag_err"]
    return count


def select(table, regions: dict, distance_mpc: float, params: dict) -> dict:
    """Columns of the selection: basic, in_stellar, in_model, in_polygon, super_hd, candidate_model/_polygon."""
    mci_in, mci_out = np.asarray(table["mci_in"], float), np.asarray(table["mci_out"], float)
    snr = np.nan_to_num(np.asarray(table[f"snr_{cc.V_BAND}"], float))
    n_other = other_band_detections(table, params)
    basic = (snr >= params["snr_min"]) & (n_other >= params["min_other_bands"])
    key = f"REGION_{params['model_bin']:g}"
    if key not in regions or "STELLAR" not in regions:
        raise wfutils.InputError(f"regions file lacks {key} or STELLAR (bin sizes: {sorted(regions)})")
    mask, origin, b = regions[key]
    model = inject_clusters.in_region(mask, origin, b, mci_in, mci_out)
    smask, sorigin, sb = regions["STELLAR"]
    stellar = inject_clusters.in_region(smask, sorigin, sb, mci_in, mci_out)
    polygon = in_polygon(mci_in, mci_out, distance_mpc, params)
    abs_v = np.asarray(table[f"mag_tot_vega_{cc.V_BAND}"], float) - cc.distance_modulus(distance_mpc)
    lo, hi = params["super_hd_mci_in"]
    with np.errstate(invalid="ignore"):
        super_hd = (abs_v < params["super_hd_mag"]) & (mci_in >= lo) & (mci_in <= hi)
    return {
        "n_other_bands": n_other,
        "basic": basic,
        "in_stellar": stellar,
        "in_model": model,
        "in_polygon": polygon,
        "super_hd": super_hd,
        "abs_mag_v": abs_v,
        "candidate_model": (basic & model & ~stellar) | super_hd,
        "candidate_polygon": (basic & polygon & ~stellar) | super_hd,
    }


# --------------------------------------------------------------------------- QA and entry point
def qa_plot(path, table, sel, regions, distance_mpc, params, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mci_in, mci_out = np.asarray(table["mci_in"], float), np.asarray(table["mci_out"], float)
    fig, ax = plt.subplots(figsize=(7, 6.5))
    ok = np.nan_to_num(np.asarray(table[f"snr_{cc.V_BAND}"], float)) >= params["snr_min"]
    ax.scatter(mci_in[ok], mci_out[ok], s=3, c="0.7", label=f"S/N >= {params['snr_min']:g} ({ok.sum()})")
    c = sel["candidate_model"]
    ax.scatter(mci_in[c], mci_out[c], s=8, c="tab:blue", label=f"model-region candidates ({c.sum()})")
    p = sel["candidate_polygon"]
    ax.scatter(
        mci_in[p], mci_out[p], s=22, facecolors="none", edgecolors="tab:orange", label=f"polygon candidates ({p.sum()})"
    )
    for name, colour in (("REGION_0.01", "tab:cyan"), ("REGION_0.02", "tab:green"), ("REGION_0.04", "tab:purple")):
        if name in regions:
            inject_clusters.region_contour(ax, *regions[name], colors=colour, linewidths=1.0)
            ax.plot([], [], c=colour, label=f"model region, bin {regions[name][2]:g}")
    inject_clusters.region_contour(ax, *regions["STELLAR"], colors="red", linewidths=1.5)
    ax.plot([], [], c="red", label="stellar region")
    lo_in, hi_in = params["polygon_mci_in"]
    lower = polygon_lower_bound(distance_mpc, params["polygon_lower_bounds"])
    top = params["polygon_mci_out_max"]
    ax.plot([lo_in, hi_in, hi_in, lo_in, lo_in], [lower, lower, top, top, lower], c="k", ls="--", lw=1, label="polygon")
    ax.set(xlabel="MCI$_{in}$", ylabel="MCI$_{out}$", xlim=(-1.5, 1.2), ylim=(-3.5, 2.0), title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True, help="source catalog with photometry and MCI")
    parser.add_argument("--regions", required=True, help="MCI regions from inject_clusters.py")
    parser.add_argument("--distance-mpc", type=float, required=True)
    parser.add_argument("--output", required=True, help="model-region candidates (ECSV; FITS next to it)")
    parser.add_argument("--output-polygon", required=True, help="polygon candidates (ECSV; FITS next to it)")
    parser.add_argument("--ds9", help="DS9 regions of the candidates (model: green, polygon-only: orange)")
    parser.add_argument("--qa-png")
    parser.add_argument("--params", default=None, help="JSON object overriding " + ", ".join(DEFAULTS))
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    if not args.distance_mpc > 0:
        raise wfutils.InputError(f"--distance-mpc must be positive, not {args.distance_mpc}")
    table = cc.read_table(
        args.catalog, ["x", "y", "mci_in", "mci_out", f"snr_{cc.V_BAND}", f"mag_tot_vega_{cc.V_BAND}"]
    )
    regions = inject_clusters.read_regions(args.regions)
    sel = select(table, regions, args.distance_mpc, params)
    for key, value in sel.items():
        table[key] = value
    inputs = [args.catalog, args.regions]
    for column, path in (("candidate_model", args.output), ("candidate_polygon", args.output_polygon)):
        out = table[np.asarray(table[column], bool)]
        out.meta.update({"distance_mpc": args.distance_mpc, "selection": column})
        cc.write_table(out, path, inputs, "select_clusters")
        if path.endswith(".ecsv"):
            cc.write_table(out, path[: -len(".ecsv")] + ".fits", inputs, "select_clusters")
    log.info(
        "%d sources: %d pass S/N and bands, %d in the stellar region; %d model-region and %d polygon candidates "
        "(%d super-HD)",
        len(table),
        int(sel["basic"].sum()),
        int((sel["basic"] & sel["in_stellar"]).sum()),
        int(sel["candidate_model"].sum()),
        int(sel["candidate_polygon"].sum()),
        int(sel["super_hd"].sum()),
    )
    if args.ds9:
        model, poly = sel["candidate_model"], sel["candidate_polygon"] & ~sel["candidate_model"]
        x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
        text = [
            "# Region file format: DS9 version 4.1",
            "# cluster candidates: green model region, orange polygon only",
            "image",
        ]
        ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(1, len(table) + 1)
        for mask, colour in ((model, "green"), (poly, "orange")):
            for xi, yi, i in zip(x[mask], y[mask], ids[mask], strict=True):
                text.append(f"circle({xi + 1:.3f},{yi + 1:.3f},4.0) # color={colour} text={{{i}}}")
        wfutils.write_text("\n".join(text) + "\n", args.ds9)
    if args.qa_png:
        qa_plot(
            args.qa_png,
            table,
            sel,
            regions,
            args.distance_mpc,
            params,
            f"cluster candidates, {args.distance_mpc:.2f} Mpc",
        )


if __name__ == "__main__":
    wfutils.run_cli(main)
