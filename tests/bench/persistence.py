"""Benchmark of the persistence flagging (issue 9) against the simulator's truth; ONE JSON line.

    python tests/bench/persistence.py                             # deep field, SW bands, scale 0.125
    python tests/bench/persistence.py --work-dir /tmp/wt9-pers    # keep and reuse the simulated data
    python tests/bench/persistence.py --params '{"seed_nsigma": 4.0}'
    python tests/bench/persistence.py --no-preceding              # without the previous program's files

The deep field (``ceers_deep``, one tile, 3 dithers) in its first short-wavelength bands, with every
simulated effect on. Each exposure is flagged from all exposures of its detector
(``persistence_mask.persistence_flags``, the configured parameters unless ``--params``) and, unless
``--no-preceding``, the previous program's exposure of the detector that the simulator writes
(``root/history``, as the workflow's ``corrections.persistence_mask.preceding``), and judged
on the valid pixels (finite, not DO_NOT_USE before flagging):

* ``recall``: flagged / affected, affected = truth ``PERSIST`` > ``--min-truth`` (MJy/sr; default 0,
  every pixel the simulator touched, however faint), pooled over the exposures; also per kind of
  flag (``saturation``: saturated in an earlier exposure of the survey or of the previous program;
  ``fixed``: a pattern fixed on the detector) and per amplitude bin;
* ``false_rate``: flagged unaffected / unaffected;
* ``seconds_per_exposure``.
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

log = logging.getLogger("bench.persistence")
BANDS = ["F115W", "F150W", "F200W"]


def configured_params(config: dict) -> dict:
    return dict(config["corrections"]["persistence_mask"].get("params", {}))


def evaluate(
    root: Path, params: dict, min_truth: float = 0.0, verbose: bool = False, bands=BANDS, preceding: bool = True
) -> dict:
    from astropy.io import fits

    import persistence_mask as pm

    params = {**pm.DEFAULTS, **params}
    paths = [p for band in bands for p in sm.exposures_of(root, band)]
    exposures = [pm.Exposure(p) for p in paths]
    history = [pm.Exposure(p, preceding=True) for p in sorted(Path(root, "history").glob("*_cal.fits"))]
    pool = exposures + (history if preceding else [])
    counts = {"affected": 0, "hit": 0, "unaffected": 0, "false": 0}
    kinds = {"saturation": [0, 0], "fixed": [0, 0]}
    bins = {"<0.005": [0, 0], "0.005-0.02": [0, 0], ">0.02": [0, 0]}
    per_exposure = []
    start = time.time()
    for exp in exposures:
        result = pm.persistence_flags(exp, pool, params)
        with fits.open(sm.truth_path(exp.path)) as truth:
            persist = truth["PERSIST"].data.astype(float)
        sci, dq, _ = pm.load_image(exp.path)
        valid = np.isfinite(sci) & ((dq & 1) == 0)
        affected = (persist > min_truth) & valid
        flags = result["flags"] & valid
        counts["affected"] += int(affected.sum())
        counts["hit"] += int((flags & affected).sum())
        counts["unaffected"] += int((valid & ~affected & (persist == 0)).sum())
        counts["false"] += int((flags & ~affected & (persist == 0)).sum())
        for key, lo, hi in (("<0.005", 0, 0.005), ("0.005-0.02", 0.005, 0.02), (">0.02", 0.02, np.inf)):
            sel = affected & (persist > lo) & (persist <= hi)
            bins[key][0] += int(sel.sum())
            bins[key][1] += int((sel & flags).sum())
        for key in kinds:
            kinds[key][1] += int((result[key] & valid & affected).sum())
        row = {
            "exposure": exp.name,
            "affected": int(affected.sum()),
            "flagged": int(flags.sum()),
            "hit": int((flags & affected).sum()),
            "false": int((flags & ~affected & (persist == 0)).sum()),
        }
        per_exposure.append(row)
        if verbose:
            log.info("%s", json.dumps(row))
    seconds = (time.time() - start) / max(len(exposures), 1)
    return {
        "n_exposures": len(exposures),
        "n_preceding": len(history) if preceding else 0,
        "affected_pixels": counts["affected"],
        "recall": round(counts["hit"] / max(counts["affected"], 1), 4),
        "false_rate": round(counts["false"] / max(counts["unaffected"], 1), 5),
        "recall_by_amplitude": {k: round(v[1] / max(v[0], 1), 4) for k, v in bins.items()},
        "affected_by_amplitude": {k: v[0] for k, v in bins.items()},
        "flagged_by_kind": {k: v[1] for k, v in kinds.items()},
        "seconds_per_exposure": round(seconds, 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.125)
    parser.add_argument("--work-dir", help="keep the simulated data here (reused when present)")
    parser.add_argument("--params", help="JSON replacing the configured params")
    parser.add_argument("--min-truth", type=float, default=0.0, help="MJy/sr above which a pixel is affected")
    parser.add_argument("--no-preceding", action="store_true", help="leave out the previous program's exposures")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("simulate_survey", "persistence_mask"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="wt9-pers-")
        work = Path(tmp.name)
    start = time.time()
    root = sm.simulate(work / "deep", config["simulation"], "ceers_deep", BANDS, args.scale, effects={})
    params = json.loads(args.params) if args.params else configured_params(config)
    result = {"bench": "persistence", "scale": args.scale, "params": params, "min_truth": args.min_truth}
    result.update(evaluate(root, params, args.min_truth, args.verbose, preceding=not args.no_preceding))
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, separators=(",", ":")))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
