"""Judge a finished run of the workflow on the synthetic survey against the simulator's truth: one JSON line.

For one simulated target of a run directory (default: the repository, after ``make demo``):

* astrometry: every truth star's true detector position (TRUE pointing) mapped through the
  header WCS of the final exposures (what the mosaic is drizzled from), minus its true
  position -- RMS in mas per instrument (``tests/bench/astrometry.py`` does this per step);
* sky level: median of (final mosaic - truth mosaic) over the covered pixels, and the
  intercept of a line fitted to final vs truth, both smoothed by one Gaussian (sigma 8 px), over
  the faintest 60% of the truth pixels (robust to a flux-scale error and to the resolution
  difference), per band (the truth mosaics have a zero sky; with
  anchoring, the anchored mosaics are judged);
* flux: summed final mosaic / summed truth mosaic over the covered pixels;
* anchoring: for each band fitted against another band, the intercept the same fit (pairing,
  resolution and intensity range of the run's anchoring table) finds between the two TRUTH
  mosaics over the run's coverage: the error the linear-relation assumption alone causes
  (the anchored band's sky error is about minus this value).

    python tests/bench/demo_truth.py --target NGC0628
    python tests/bench/demo_truth.py --workdir /tmp/run --target DEEPFIELD1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import astrometry as astro_bench  # noqa: E402


def target_entry(workdir: Path, target: str) -> dict:
    import pandas as pd

    sheet = pd.read_csv(REPO / "config" / "targets.tsv", sep="\t", comment="#").set_index("target")
    row = sheet.loc[target]
    return {
        "target": target,
        "ra": float(row["ra"]),
        "dec": float(row["dec"]),
        "layout": row["layout"],
        "program": int(row["program"]),
        "distance_mpc": float(row["distance_mpc"]),
    }


def final_exposures(run: Path) -> list[Path]:
    """Exposures as they enter Stage 3: the last correction directory that holds each one."""
    order = ["noise_model", "destripe_multitile", "level_match", "lyot_split", "align_absolute", "align_relative"]
    chosen = {}
    for step in reversed(order):
        for path in (run / step).glob("jw*_cal.fits"):
            if "_lyot" not in path.name:
                chosen[path.name] = path
    return sorted(chosen.values())


def instrument_of(path: Path) -> str:
    return "MIRI" if "_mirimage" in path.name else "NIRCAM"


def smoothed(sci, true, ok, sigma_px=8.0):
    """Both images convolved with one Gaussian (NaN-aware), so that the drizzle's smoothing and
    the PSF do not bias the faint-pixel regression; pixels whose kernel is fully covered."""
    from scipy.ndimage import gaussian_filter

    weight = gaussian_filter(ok.astype(float), sigma_px)
    smooth = [gaussian_filter(np.where(ok, img, 0.0), sigma_px) / np.maximum(weight, 1e-9) for img in (sci, true)]
    return smooth[0], smooth[1], weight > 0.999


def mosaic_vs_truth(final: Path, truth: Path) -> dict:
    from astropy.io import fits

    sci = fits.getdata(final, "SCI").astype(np.float64)
    wht = fits.getdata(final, "WHT")
    true = fits.getdata(truth).astype(np.float64)
    ok = np.isfinite(sci) & (wht > 0) & np.isfinite(true)
    diff = sci[ok] - true[ok]
    smooth_sci, smooth_true, full = smoothed(sci, true, ok)
    faint = smooth_true[full] <= np.percentile(smooth_true[full], 60.0)
    slope, intercept = np.polyfit(smooth_true[full][faint], smooth_sci[full][faint], 1)
    return {
        "sky_offset_mjysr": round(float(np.median(diff)), 5),
        "sky_intercept_mjysr": round(float(intercept), 5),
        "faint_slope": round(float(slope), 4),
        "flux_ratio": round(float(sci[ok].sum() / true[ok].sum()), 4),
        "n_pixels": int(ok.sum()),
    }


def truth_relation_intercepts(run: Path, target: str, params: dict) -> dict:
    """Intercept of each relative anchoring fit repeated on the truth mosaics (zero sky), by band."""
    from astropy.table import Table

    import anchor_background as ab

    table_path = run / "anchored" / f"{target}_anchoring.ecsv"
    if not table_path.exists():
        return {}
    fit_params = {**ab.DEFAULTS, **params}
    truth = run / "truth" / "mosaics"

    def truth_record(band):
        record = ab.read_mosaic(truth / f"{target}_{band}_truth.fits", 0)
        covered = ab.read_mosaic(run / "mosaic" / f"{target}_{band}_i2d.fits", fit_params["bad_flags"])
        record.data = np.where(np.isfinite(covered.data), record.data, np.nan)
        return record

    out = {}
    for row in Table.read(table_path):
        if row["role"] != "relative":
            continue
        band, against = str(row["band"]), str(row["against"])
        y_rec, x_rec = truth_record(band), truth_record(against)
        fwhm = [fit_params["fwhm_arcsec"].get(b) or ab.diffraction_fwhm_arcsec(b) for b in (band, against)]
        xs, ys = ab.comparison_pair(y_rec, fwhm[0], x_rec, fwhm[1], float(row["resolution_arcsec"]), fit_params)
        fit = ab.fit_relation(xs, ys, [float(row["range_lo_mjysr"]), float(row["range_hi_mjysr"])], fit_params)
        out[band] = round(float(fit["intercept"]), 5)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(REPO), help="run directory holding results/")
    parser.add_argument("--target", default="NGC0628")
    parser.add_argument("--configfile", default=str(REPO / "config" / "config.yaml"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    run = workdir / "results" / args.target
    full_cfg = yaml.safe_load(Path(args.configfile).read_text())
    cfg = full_cfg["simulation"]
    target = target_entry(workdir, args.target)
    out = {"bench": "demo_truth", "target": args.target, "astrometry_mas": {}, "mosaics": {}}
    exposures = final_exposures(run)
    for instrument in ("NIRCAM", "MIRI"):
        paths = [p for p in exposures if instrument_of(p) == instrument]
        if paths:
            res = astro_bench.truth_star_residuals(paths, run / "truth", cfg, target)
            out["astrometry_mas"][instrument] = astro_bench.summarize(res)
    for truth in sorted((run / "truth" / "mosaics").glob("*_truth.fits")):
        band = truth.name.split("_")[-2]
        anchored = run / "anchored" / f"{args.target}_{band}_i2d.fits"
        final = anchored if anchored.exists() else run / "mosaic" / f"{args.target}_{band}_i2d.fits"
        if final.exists():
            out["mosaics"][band] = {"file": final.parent.name, **mosaic_vs_truth(final, truth)}
    for band, intercept in truth_relation_intercepts(run, args.target, full_cfg["anchoring"]["params"]).items():
        out["mosaics"][band]["truth_relation_intercept_mjysr"] = intercept
    print(json.dumps(out))


if __name__ == "__main__":
    main()
