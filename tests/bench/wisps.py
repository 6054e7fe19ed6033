"""Benchmark of the wisp subtraction (issue 9): scale recovery, residual, galaxy light; ONE JSON line.

    python tests/bench/wisps.py                                  # scale 0.125, deep field + galaxy
    python tests/bench/wisps.py --scale 1.0 --skip-galaxy        # 2048 px detectors (~25 min)
    python tests/bench/wisps.py --work-dir /tmp/wt9-wisps        # keep and reuse the simulated data
    python tests/bench/wisps.py --params '{"row_medians": false}'   # another setting

What it measures, on every exposure the simulator gave a wisp (``WISP`` truth array, scale in the
truth header), with every simulated effect on (1/f stripes, snowballs, persistence, ...):

* ``scale``: fitted / true scale - 1 per exposure: rms and max over the exposures;
* ``residual_over_noise``: in the wisp region (template above 10% of its peak, valid pixels, no
  source brighter than 3 noise sigma in the truth), RMS(noise + residual wisp) / RMS(noise),
  where the residual wisp is ``(true - fitted scale) x template`` (exact, from the truth) and the
  noise is the exposure minus every truth component (the pixel noise of that region);
* ``galaxy`` (phangs_galaxy, F200W): the same, plus the galaxy light the subtraction removed in
  the wisp region: mean residual wisp / mean truth sky there (a negative number is galaxy light lost);
* ``seconds_per_exposure`` of the fit and subtraction (``wisp_subtract.wisp_scale``).

The configured parameters of each layout (``config/config.yaml`` corrections.wisp_subtract,
params and overrides) are used unless ``--params`` replaces them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stripe_metric as sm  # noqa: E402

log = logging.getLogger("bench.wisps")
TRUTH_COMPONENTS = ("SKY", "BKG", "STRIPES", "WISP", "PERSIST", "CR", "SNOWBALL")


def layout_params(config: dict, layout: str) -> dict:
    """corrections.wisp_subtract params for a layout (params, then matching `layouts` overrides)."""
    cfg = config["corrections"]["wisp_subtract"]
    params = dict(cfg.get("params", {}))
    for override in cfg.get("overrides", []):
        if (
            "params" in override
            and set(override) <= {"layouts", "params"}
            and layout in override.get("layouts", [layout])
        ):
            params.update(override["params"])
    return params


def evaluate(cal_path: Path, params: dict) -> dict | None:
    """Fit one exposure; None when the simulator gave it no wisp."""
    from astropy.io import fits

    import wisp_subtract

    with fits.open(sm.truth_path(cal_path)) as truth:
        names = [h.name for h in truth]
        if "WISP" not in names:
            return None
        parts = {k: truth[k].data.astype(float) for k in TRUTH_COMPONENTS if k in names}
    with fits.open(cal_path) as hdul:
        sci = hdul["SCI"].data.astype(float)
        dq = hdul["DQ"].data
        detector, band = hdul[0].header["DETECTOR"], hdul[0].header["FILTER"]
    template_path = cal_path.parent.parent / "refs" / "wisps" / f"wisp_{detector.lower()}_{band.lower()}.fits"
    template = fits.getdata(template_path, "SCI").astype(float)
    wisp = parts["WISP"]
    true_scale = float(np.nanmax(wisp) / np.nanmax(template))
    bad = (dq & 1) > 0
    start = time.time()
    report = wisp_subtract.wisp_scale(sci, bad, template, params, jumps=(dq & 4) > 0)
    seconds = time.time() - start
    noise = sci - sum(parts.values())
    valid = sm.valid_pixels(sci, dq) & np.isfinite(noise)
    sigma = 1.4826 * np.nanmedian(np.abs(noise[valid] - np.nanmedian(noise[valid])))
    sky = parts["SKY"]
    faint = sky - np.nanmedian(sky[valid]) < 3 * sigma
    region = valid & (template > 0.1 * np.nanmax(template)) & faint
    residual_wisp = (true_scale - report["scale"]) * template
    n = noise[region] - np.median(noise[region])
    ratio = float(np.sqrt(np.mean((n + residual_wisp[region]) ** 2) / np.mean(n**2)))
    return {
        "exposure": cal_path.name,
        "true": true_scale,
        "fit": report["scale"],
        "rel_error": report["scale"] / true_scale - 1,
        "residual_over_noise": ratio,
        "galaxy_light_removed": float(np.mean(residual_wisp[region]) / np.mean(sky[region])),
        "seconds": seconds,
    }


def summary(rows: list[dict]) -> dict:
    err = np.array([r["rel_error"] for r in rows])
    ratio = np.array([r["residual_over_noise"] for r in rows])
    return {
        "n": len(rows),
        "scale_rel_error_rms": round(float(np.sqrt(np.mean(err**2))), 4),
        "scale_rel_error_max": round(float(np.max(np.abs(err))), 4),
        "within_5pct": round(float(np.mean(np.abs(err) <= 0.05)), 3),
        "residual_over_noise_median": round(float(np.median(ratio)), 3),
        "residual_over_noise_max": round(float(np.max(ratio)), 3),
        "seconds_per_exposure": round(float(np.mean([r["seconds"] for r in rows])), 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.125, help="simulation.scale")
    parser.add_argument("--work-dir", help="keep the simulated data here (reused when present)")
    parser.add_argument("--params", help="JSON replacing the configured params for both layouts")
    parser.add_argument("--skip-galaxy", action="store_true")
    parser.add_argument("--skip-deep", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one line per exposure on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("simulate_survey", "wisp_subtract"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="wt9-wisps-")
        work = Path(tmp.name)
    start = time.time()
    sets = {} if args.skip_deep else {"deep": ("ceers_deep", ["F150W", "F200W"], (1, 1))}
    if not args.skip_galaxy:
        sets["galaxy"] = ("phangs_galaxy", ["F200W"], (2, 2))
    result = {"bench": "wisps", "scale": args.scale}
    for key, (layout, bands, tiles) in sets.items():
        root = sm.simulate(work / key, config["simulation"], layout, bands, args.scale, tiles=tiles, effects={})
        params = json.loads(args.params) if args.params else layout_params(config, layout)
        rows = []
        for band in bands:
            for path in sm.exposures_of(root, band):
                row = evaluate(path, params)
                if row is not None:
                    rows.append(row)
                    if args.verbose:
                        log.info(
                            "%s", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
                        )
        result[key] = {"params": params, **summary(rows)}
        if key == "galaxy":
            removed = np.array([r["galaxy_light_removed"] for r in rows])
            result[key]["galaxy_light_removed_median"] = round(float(np.median(removed)), 4)
            result[key]["galaxy_light_removed_max"] = round(float(np.max(np.abs(removed))), 4)
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, separators=(",", ":")))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
