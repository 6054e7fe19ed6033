"""Benchmark of the astrometry steps on the synthetic galaxy survey: one JSON line.

Simulates the PHANGS-like galaxy target (NIRCam F200W/F300M, MIRI F1000W/F2100W) with injected
pointing errors (absolute 2" and 0.01 deg, per-visit 0.05-1" and 0.01 deg) into a temporary
directory, then runs the chain the workflow uses and judges it against the simulator's truth:

1. ``align_relative.py`` on all NIRCam exposures (reference F300M): per-visit shifts;
2. F300M mosaic (jwst ResampleStep on the common grid), ``align_absolute.py`` against the
   HST-like reference catalogue, tweakback to all NIRCam exposures; its aligned F300M
   catalogue is the reference for MIRI;
3. ``align_relative.py`` on all MIRI exposures (reference F1000W) anchored on that catalogue;
4. F1000W mosaic, ``align_absolute.py`` against the NIRCam catalogue, tweakback to all MIRI;
5. jwst's TweakRegStep with default parameters (and once more with ``abs_refcat`` = the HST-like
   catalogue) on the same reference-band inputs, for comparison.

Residuals are measured with the truth: each truth star's true detector position (through the
TRUE pointing) is mapped through the corrected header WCS and compared with its true RA/Dec.

    python tests/bench/astrometry.py                 # scale 0.25, temporary directory
    python tests/bench/astrometry.py --scale 0.125 --workdir /tmp/astro_bench --keep

Output: ``{"bench": "astrometry", ...}`` with residuals in mas and times in seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

TARGET = {
    "target": "NGC0628",
    "ra": 24.173946,
    "dec": 15.783662,
    "layout": "phangs_galaxy",
    "program": 9001,
    "distance_mpc": 9.84,
}


# --------------------------------------------------------------------------- simulation
# With this seed the target-wide (absolute) rotation drawn by the simulator is -0.0099 deg, the
# issue's 0.01 deg case; the absolute shift is always absolute_shift_arcsec (2") in a random direction.
BENCH_SEED = 20261133


def simulation_config(scale: float, nircam=("F200W", "F300M"), miri=("F1000W", "F2100W"), seed=BENCH_SEED) -> dict:
    """The workflow's simulation config with the issue's hardest pointing errors."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulation"]
    cfg = copy.deepcopy(cfg)
    cfg["scale"] = scale
    cfg["seed"] = seed
    layout = cfg["layouts"]["phangs_galaxy"]
    layout["nircam"]["filters"] = list(nircam)
    layout["miri"]["filters"] = list(miri)
    layout["miri_offfield"]["filters"] = []
    cfg["effects"]["pointing_errors"].update(
        {
            "enabled": True,
            "absolute_shift_arcsec": 2.0,
            "absolute_rotation_deg": 0.01,
            "visit_shift_arcsec": [0.05, 1.0],
            "visit_rotation_deg": 0.01,
        }
    )
    return cfg


def simulate(root: Path, cfg: dict, target: dict = TARGET, bands=None) -> dict:
    """Sky, references and exposures of ``bands`` (default: all science bands) under ``root``."""
    import simulate_survey as sim

    layout = cfg["layouts"][target["layout"]]
    if bands is None:
        bands = [f for key in ("nircam", "miri") if layout.get(key) for f in layout[key]["filters"]]
    sim.simulate_target(root, cfg, target, bands)
    return {"root": root, "cfg": cfg, "target": target, "bands": bands}


def science_files(root: Path, bands) -> dict:
    """{band: [cal paths]} of science exposures (off-field parallels excluded)."""
    from astropy.io import fits

    out = {b: [] for b in bands}
    for path in sorted((root / "cal").glob("*_cal.fits")):
        header = fits.getheader(path)
        if header.get("FILTER") in out and str(header.get("SEQ_ID", "1")) == "1":
            out[header["FILTER"]].append(path)
    return out


# --------------------------------------------------------------------------- truth evaluation
def truth_star_residuals(paths, sky_dir, cfg, target=TARGET, kinds=("star",)) -> dict:
    """Corrected-header minus true positions (mas) of truth stars on the detectors of ``paths`` (or models).

    For each exposure the star's true pixel comes from the TRUE WCS (simulator attitude); that
    pixel is mapped through the file's header WCS. Only stars on usable pixels count.
    """
    from stdatamodels.jwst import datamodels

    import simulate_survey as sim

    _, sources = sim.read_sky(sky_dir)
    plan = {e.name: e for e in sim.target_plan(target, cfg)}
    sel = np.isin(sources["kind"], kinds)
    ra_s, dec_s = sources["ra"][sel], sources["dec"][sel]
    d_east, d_north, files = [], [], []
    for item in paths:
        model = datamodels.open(str(item)) if isinstance(item, (str, Path)) else item
        name = Path(str(item)).name if isinstance(item, (str, Path)) else model.meta.filename
        exp = plan[name[: -len("_cal.fits")]]
        true_model = sim.detector_model(exp, sim.true_attitude(exp), cfg["scale"])
        x, y = true_model.meta.wcs.invert(ra_s, dec_s, with_bounding_box=False)
        ny, nx = model.data.shape
        ok = np.isfinite(x) & np.isfinite(y) & (x >= 2) & (x <= nx - 3) & (y >= 2) & (y <= ny - 3)
        ix, iy = np.round(x[ok]).astype(int), np.round(y[ok]).astype(int)
        usable = np.isfinite(model.data[iy, ix])
        idx = np.flatnonzero(ok)[usable]
        ra, dec = model.meta.wcs(x[idx], y[idx], with_bounding_box=False)
        d_east.append((ra - ra_s[idx]) * np.cos(np.radians(dec_s[idx])) * 3.6e6)
        d_north.append((dec - dec_s[idx]) * 3.6e6)
        files += [name] * len(idx)
        if isinstance(item, (str, Path)):
            model.close()
    d_east = np.concatenate(d_east) if d_east else np.zeros(0)
    d_north = np.concatenate(d_north) if d_north else np.zeros(0)
    return {"d_east_mas": d_east, "d_north_mas": d_north, "file": np.array(files)}


def summarize(res: dict) -> dict:
    """RMS (mas) of the residual vectors, their mean, and the RMS after removing the mean."""
    de, dn = res["d_east_mas"], res["d_north_mas"]
    if de.size == 0:
        return {
            "n": 0,
            "rms_mas": math.nan,
            "mean_east_mas": math.nan,
            "mean_north_mas": math.nan,
            "rms_about_mean_mas": math.nan,
        }
    me, mn = float(de.mean()), float(dn.mean())
    return {
        "n": int(de.size),
        "rms_mas": round(float(np.sqrt(np.mean(de**2 + dn**2))), 2),
        "mean_east_mas": round(me, 2),
        "mean_north_mas": round(mn, 2),
        "rms_about_mean_mas": round(float(np.sqrt(np.mean((de - me) ** 2 + (dn - mn) ** 2))), 2),
    }


def visit_shift_recovery(table, sky_dir) -> dict:
    """RMS (mas) of measured visit shifts against the injected errors, up to a common offset.

    A perfect shift cancels the visit's error at its centre: shift + error is the same for all
    visits (the gauge); the scatter of that sum is the recovery error.
    """
    truth = json.loads((Path(sky_dir) / "sky_truth.json").read_text())["pointing_errors"]
    sums = []
    for row in table:
        err = truth[str(row["group"])]
        sums.append((row["shift_east_arcsec"] + err["east_arcsec"], row["shift_north_arcsec"] + err["north_arcsec"]))
    sums = np.array(sums) * 1e3
    dev = sums - sums.mean(axis=0)
    return {
        "n_visits": len(sums),
        "rms_mas": round(float(np.sqrt(np.mean(np.sum(dev**2, axis=1)))), 2),
        "max_mas": round(float(np.max(np.hypot(dev[:, 0], dev[:, 1]))), 2),
        "injected_rms_mas": round(
            float(
                np.sqrt(
                    np.mean(
                        [
                            (
                                truth[str(r["group"])]["relative_east_arcsec"] ** 2
                                + truth[str(r["group"])]["relative_north_arcsec"] ** 2
                            )
                            for r in table
                        ]
                    )
                )
            )
            * 1e3,
            1,
        ),
    }


def injected_errors(sky_dir) -> dict:
    """Summary of the simulator's pointing errors: absolute shift, per-instrument mean visit rotation."""
    errors = json.loads((Path(sky_dir) / "sky_truth.json").read_text())["pointing_errors"]
    first = next(iter(errors.values()))
    out = {
        "absolute_east_arcsec": round(first["east_arcsec"] - first["relative_east_arcsec"], 4),
        "absolute_north_arcsec": round(first["north_arcsec"] - first["relative_north_arcsec"], 4),
    }
    for label, obs in (("nircam", "001"), ("miri", "002")):
        visits = [e for k, e in errors.items() if k[5:8] == obs]
        if visits:
            out[f"{label}_mean_rotation_deg"] = round(float(np.mean([e["rotation_deg"] for e in visits])), 5)
            out[f"{label}_visit_shift_rms_arcsec"] = round(
                float(
                    np.sqrt(np.mean([e["relative_east_arcsec"] ** 2 + e["relative_north_arcsec"] ** 2 for e in visits]))
                ),
                3,
            )
    return out


# --------------------------------------------------------------------------- mosaics
MULTIPLES = {"NRC_SW": 1, "NRC_LW": 2, "MIRI": 3}


def target_grid(all_paths, target=TARGET, pixel_scale=0.031, margin=1.0) -> dict:
    """The workflow's common grid (mosaic_grid.py) for the given exposures."""
    import mosaic_grid

    vertices, channels = mosaic_grid.read_footprints([str(p) for p in all_paths])
    return mosaic_grid.common_grid(vertices, channels, target["ra"], target["dec"], pixel_scale, MULTIPLES, margin)


def make_mosaic(paths, band, grid, out) -> Path:
    """Drizzle ``paths`` of ``band`` onto the common grid with jwst ResampleStep (resample_mosaic.py)."""
    import resample_mosaic
    from wflib import wfutils

    params = resample_mosaic.resample_parameters(grid, band, {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"})
    mosaic = resample_mosaic.resample(paths, params)
    wfutils.save_model(mosaic, out, paths, None, "resample")
    return Path(out)


# --------------------------------------------------------------------------- the benchmark
TARGETS_MAS = {
    "nircam_visit_shift_rms": 5.0,
    "miri_visit_shift_rms": 15.0,
    "nircam_final_rms": 10.0,
    "miri_final_rms": 20.0,
    "miri_to_nircam": 20.0,
}


def run_tweakreg(paths, abs_refcat=None) -> tuple[list, float]:
    """jwst TweakRegStep with default parameters (optionally abs_refcat) on ``paths``; (models, seconds)."""
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    from jwst.datamodels import ModelLibrary
    from jwst.tweakreg import TweakRegStep

    start = time.time()
    library = ModelLibrary([str(p) for p in paths], on_disk=False)
    step = TweakRegStep(abs_refcat=str(abs_refcat)) if abs_refcat else TweakRegStep()
    result = step.run(library)
    models = []
    with result:
        for i, model in enumerate(result):
            models.append(model.copy())
            result.shelve(model, i, modify=False)
    return models, time.time() - start


def timed(label, timings, func, *args, **kwargs):
    start = time.time()
    out = func(*args, **kwargs)
    timings[label] = round(time.time() - start, 1)
    return out


def benchmark(workdir: Path, scale: float, run_tweakreg_comparison: bool = True) -> dict:
    from astropy.table import Table

    import align_absolute
    import align_relative

    timings: dict[str, float] = {}
    nircam, miri = ("F200W", "F300M"), ("F1000W", "F2100W")
    cfg = simulation_config(scale, nircam, miri)
    timed("simulate", timings, simulate, workdir, cfg)
    sky = workdir / "truth"
    refcat = workdir / "refs" / f"{TARGET['target']}_refcat.ecsv"
    files = science_files(workdir, [*nircam, *miri])
    nrc_all = [str(p) for b in nircam for p in files[b]]
    miri_all = [str(p) for b in miri for p in files[b]]
    out = {"bench": "astrometry", "scale": scale, "n_files": {b: len(files[b]) for b in files}}

    def truth(paths, band_paths=None):
        return summarize(truth_star_residuals(paths, sky, cfg))

    def renamed(directory, band):
        return [directory / p.name for p in files[band]]

    out["before"] = {b: truth(files[b]) for b in ("F300M", "F1000W")}
    out["injected"] = injected_errors(sky)

    # 1. NIRCam relative
    rel_n = workdir / "relative_nircam"
    timed(
        "relative_nircam",
        timings,
        align_relative.main,
        [
            *nrc_all,
            "--out-dir",
            str(rel_n),
            "--table",
            str(rel_n / "shifts.ecsv"),
            "--qa-png",
            str(rel_n / "qa.png"),
            "--qa-json",
            str(rel_n / "qa.json"),
            "--log",
            str(workdir / "relative_nircam.log"),
        ],
    )
    table = Table.read(rel_n / "shifts.ecsv", format="ascii.ecsv")
    out["nircam_relative"] = {
        "visit_shift": visit_shift_recovery(table, sky),
        "F300M": truth(renamed(rel_n, "F300M")),
        "F200W": truth(renamed(rel_n, "F200W")),
    }
    # variant: one rotation per visit as well (F300M only)
    rel_r = workdir / "relative_nircam_rshift"
    timed(
        "relative_nircam_rshift_f300m",
        timings,
        align_relative.main,
        [
            *map(str, files["F300M"]),
            "--out-dir",
            str(rel_r),
            "--table",
            str(rel_r / "shifts.ecsv"),
            "--params",
            json.dumps({"fitgeom": "rshift"}),
            "--log",
            str(workdir / "relative_rshift.log"),
        ],
    )
    out["nircam_relative_rshift"] = {
        "visit_shift": visit_shift_recovery(Table.read(rel_r / "shifts.ecsv", format="ascii.ecsv"), sky),
        "F300M": truth(renamed(rel_r, "F300M")),
    }

    # variant: the crowded F200W as reference band (PHANGS avoid it; it must still not break matching)
    rel_c = workdir / "relative_nircam_f200w"
    timed(
        "relative_nircam_f200w_reference",
        timings,
        align_relative.main,
        [
            *map(str, files["F200W"]),
            "--reference-band",
            "F200W",
            "--out-dir",
            str(rel_c),
            "--table",
            str(rel_c / "shifts.ecsv"),
            "--log",
            str(workdir / "relative_f200w.log"),
        ],
    )
    out["nircam_relative_f200w_reference"] = {
        "visit_shift": visit_shift_recovery(Table.read(rel_c / "shifts.ecsv", format="ascii.ecsv"), sky),
        "F200W": truth(renamed(rel_c, "F200W")),
    }

    # 2. NIRCam F300M mosaic, absolute fit against the HST-like catalogue, tweakback
    grid = timed("grid", timings, target_grid, [*nrc_all, *miri_all])
    mosaic_n = timed(
        "mosaic_F300M",
        timings,
        make_mosaic,
        [str(p) for p in renamed(rel_n, "F300M")],
        "F300M",
        grid,
        workdir / "mosaic" / "NGC0628_F300M_i2d.fits",
    )
    abs_n = workdir / "absolute_nircam"
    timed(
        "absolute_nircam",
        timings,
        align_absolute.main,
        [
            str(mosaic_n),
            *[str(rel_n / Path(p).name) for p in nrc_all],
            "--refcat",
            str(refcat),
            "--out-dir",
            str(abs_n),
            "--band-map",
            json.dumps({"F200W": "F300M"}),
            "--fit-table",
            str(abs_n / "fit.ecsv"),
            "--catalog",
            str(abs_n / "F300M_catalog.ecsv"),
            "--qa-png",
            str(abs_n / "qa.png"),
            "--qa-json",
            str(abs_n / "qa.json"),
            "--log",
            str(workdir / "absolute_nircam.log"),
        ],
    )
    fit_n = Table.read(abs_n / "fit.ecsv", format="ascii.ecsv")[0]
    final_n = {b: truth(renamed(abs_n, b)) for b in nircam}
    out["nircam_absolute"] = {
        "fit": {
            k: (fit_n[k].item() if hasattr(fit_n[k], "item") else fit_n[k])
            for k in (
                "n_refcat",
                "n_image",
                "n_wide",
                "n_matched",
                "shift_east_arcsec",
                "shift_north_arcsec",
                "rotation_deg",
                "rotation_err_deg",
                "fitgeom",
                "rms_mas",
            )
        },
        "final": final_n,
        "qa": json.loads((abs_n / "qa.json").read_text())["bands"],
    }

    # 3. MIRI relative, anchored on the aligned NIRCam catalogue
    rel_m = workdir / "relative_miri"
    timed(
        "relative_miri",
        timings,
        align_relative.main,
        [
            *miri_all,
            "--out-dir",
            str(rel_m),
            "--anchor-catalog",
            str(abs_n / "F300M_catalog.ecsv"),
            "--table",
            str(rel_m / "shifts.ecsv"),
            "--qa-png",
            str(rel_m / "qa.png"),
            "--qa-json",
            str(rel_m / "qa.json"),
            "--log",
            str(workdir / "relative_miri.log"),
        ],
    )
    table_m = Table.read(rel_m / "shifts.ecsv", format="ascii.ecsv")
    out["miri_relative"] = {
        "visit_shift": visit_shift_recovery(table_m, sky),
        **{b: truth(renamed(rel_m, b)) for b in miri},
    }

    # 4. MIRI F1000W mosaic, absolute fit against the NIRCam catalogue, tweakback to all MIRI bands
    mosaic_m = timed(
        "mosaic_F1000W",
        timings,
        make_mosaic,
        [str(p) for p in renamed(rel_m, "F1000W")],
        "F1000W",
        grid,
        workdir / "mosaic" / "NGC0628_F1000W_i2d.fits",
    )
    abs_m = workdir / "absolute_miri"
    timed(
        "absolute_miri",
        timings,
        align_absolute.main,
        [
            str(mosaic_m),
            *[str(rel_m / Path(p).name) for p in miri_all],
            "--refcat",
            str(abs_n / "F300M_catalog.ecsv"),
            "--out-dir",
            str(abs_m),
            "--band-map",
            json.dumps({"F2100W": "F1000W"}),
            "--fit-table",
            str(abs_m / "fit.ecsv"),
            "--qa-png",
            str(abs_m / "qa.png"),
            "--qa-json",
            str(abs_m / "qa.json"),
            "--log",
            str(workdir / "absolute_miri.log"),
        ],
    )
    fit_m = Table.read(abs_m / "fit.ecsv", format="ascii.ecsv")[0]
    final_m = {b: truth(renamed(abs_m, b)) for b in miri}
    out["miri_absolute"] = {
        "fit": {
            k: (fit_m[k].item() if hasattr(fit_m[k], "item") else fit_m[k])
            for k in (
                "n_refcat",
                "n_image",
                "n_matched",
                "shift_east_arcsec",
                "shift_north_arcsec",
                "rotation_deg",
                "fitgeom",
                "rms_mas",
            )
        },
        "final": final_m,
        "qa_vs_nircam": json.loads((abs_m / "qa.json").read_text())["bands"],
    }
    ref_n = final_n["F300M"]
    out["miri_to_nircam_mas"] = {
        b: round(
            math.hypot(
                final_m[b]["mean_east_mas"] - ref_n["mean_east_mas"],
                final_m[b]["mean_north_mas"] - ref_n["mean_north_mas"],
            ),
            2,
        )
        for b in miri
    }
    ours = ("relative_nircam", "mosaic_F300M", "absolute_nircam", "relative_miri", "mosaic_F1000W", "absolute_miri")
    out["run_time_s"] = {**timings, "ours_total": round(sum(timings[k] for k in ours), 1)}

    # 5. jwst TweakRegStep defaults on the same reference-band inputs (relative only, then with abs_refcat)
    if run_tweakreg_comparison:
        twk = {}
        for band in ("F300M", "F1000W"):
            for label, cat in (("defaults", None), ("abs_refcat", refcat)):
                try:
                    models, seconds = run_tweakreg(files[band], cat)
                    stats = summarize(truth_star_residuals(models, sky, cfg))
                    twk[f"{band}_{label}"] = {**stats, "time_s": round(seconds, 1)}
                except Exception as exc:  # report, do not hide, a failure of the comparison
                    twk[f"{band}_{label}"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        out["tweakreg"] = twk

    achieved = {
        "nircam_visit_shift_rms": out["nircam_relative"]["visit_shift"]["rms_mas"],
        "miri_visit_shift_rms": out["miri_relative"]["visit_shift"]["rms_mas"],
        "nircam_final_rms": max(v["rms_mas"] for v in final_n.values()),
        "miri_final_rms": max(v["rms_mas"] for v in final_m.values()),
        "miri_to_nircam": max(out["miri_to_nircam_mas"].values()),
    }
    out["targets_mas"] = {
        k: {"target": TARGETS_MAS[k], "achieved": v, "pass": bool(v <= TARGETS_MAS[k])} for k, v in achieved.items()
    }
    return out


def main(argv=None):

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.25, help="simulator detector scale (0.25: 512^2 NIRCam)")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="do not delete the temporary directory")
    parser.add_argument("--no-tweakreg", action="store_true", help="skip the TweakRegStep comparison")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    start = time.time()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        result = benchmark(workdir, args.scale, not args.no_tweakreg)
    else:
        tmp = tempfile.mkdtemp(prefix="astro_bench_")
        try:
            result = benchmark(Path(tmp), args.scale, not args.no_tweakreg)
        finally:
            if not args.keep:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, default=float, separators=(",", ":")))


if __name__ == "__main__":
    main()
