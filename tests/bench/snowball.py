"""Benchmark of the snowball correction (issue 9): residual wings and time; prints ONE JSON line.

    python tests/bench/snowball.py                     # 512 x 512 comparison + full-frame 2048 x 2048 timing
    python tests/bench/snowball.py --skip-full-frame   # comparison only

* ``compare`` (512 x 512 blank-sky ramp, MEDIUM8-like, 8 groups, a high snowball rate; the ramp
  of tests/test_artefacts.py): fraction of the snowball pixels (truth charge > 0) whose fitted
  rate is within 3 sigma of the truth, and the bias/scatter of the pixels outside, for the
  uncorrected fit, ``snowball_flag`` (CEERS top-hat tiers), and stcal's own large-event flagging
  (``stcal.jump.jump.flag_large_events``, what ``JumpStep(expand_large_events=True)`` runs after
  the two-point difference) on the SAME GROUPDQ, with the jwst 3.0 JumpStep defaults
  (min_jump_area 5, min_sat_area 1, expand_factor 2, sat_required_snowball True,
  min_sat_radius_extend 2.5, sat_expand 2 x 2, edge_size 25) and with sat_required_snowball False;
  ``flagged_fraction``: pixels with a jump added.
* ``full_frame``: seconds for one 2048 x 2048 exposure (8 groups): stcal ramp fit alone, and
  snowball flagging + refit (this process, BLAS threads as the environment sets them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import simulate_ramps  # noqa: E402
import snowball_flag  # noqa: E402

log = logging.getLogger("bench.snowball")
JWST_DEFAULTS = {
    "min_jump_area": 5.0,
    "min_sat_area": 1.0,
    "expand_factor": 2.0,
    "sat_required_snowball": True,
    "min_sat_radius_extend": 2.5,
    "sat_expand": 2 * 2,  # JumpStep passes 2 x sat_expand
    "edge_size": 25,
}


def stcal_large_events(groupdq: np.ndarray, gain, readnoise, settings: dict) -> np.ndarray:
    """GROUPDQ after stcal's snowball expansion (flag_large_events) of the given jump flags."""
    from stcal.jump.jump import flag_large_events
    from stcal.jump.jump_class import JumpData
    from stdatamodels.jwst.datamodels import dqflags

    jump_data = JumpData(
        gain2d=np.array(gain), rnoise2d=np.array(readnoise), dqflags={**dqflags.pixel, **dqflags.group}
    )
    jump_data.set_snowball_info(
        True,
        settings["min_jump_area"],
        settings["min_sat_area"],
        settings["expand_factor"],
        settings["sat_required_snowball"],
        settings["min_sat_radius_extend"],
        settings["sat_expand"],
        settings["edge_size"],
    )
    jump_data.max_extended_radius = 400  # JumpStep: 2 x max_extended_radius (200)
    gdq, _ = flag_large_events(groupdq.copy(), dqflags.group["JUMP_DET"], dqflags.group["SATURATED"], jump_data)
    return gdq


def judge(info, ramp, before=None) -> dict:
    usable = (info["dq"] & 1) == 0
    z = (info["slope"] - ramp["rate"]) / info["err"]
    affected = ramp["snowball_dn"] > 0
    out = {
        "within_3sigma": round(float(np.mean(np.abs(z[affected & usable]) <= 3)), 4),
        "affected_usable_fraction": round(float(np.mean(usable[affected])), 4),
        "outside_z_std": round(float(np.std(z[~affected & usable])), 4),
    }
    if before is not None:
        outside = ~affected & usable & ((before["dq"] & 1) == 0)
        out["outside_mean_change_sigma"] = round(
            float(np.mean((info["slope"] - before["slope"])[outside] / info["err"][outside])), 5
        )
    return out


def compare(shape=(512, 512), seed=3) -> dict:
    ramp = simulate_ramps.blank_sky_ramp(shape, seed, {"snowballs_per_fullframe_900s": 200.0})
    gain, rn = ramp["gain"], ramp["readnoise"]
    result = {"shape": list(shape), "snowballs": len(ramp["events"])}
    before = snowball_flag.fit_rate(simulate_ramps.ramp_model(ramp), gain, rn)
    result["uncorrected"] = judge(before, ramp)
    ours, report = snowball_flag.correct_ramp(simulate_ramps.ramp_model(ramp), gain, rn, snowball_flag.DEFAULTS)
    result["snowball_flag"] = {**judge(ours, ramp, before), "flagged_pixels": report["flagged_pixels"]}
    for label, settings in (
        ("stcal_expand_large_events", JWST_DEFAULTS),
        ("stcal_expand_large_events_no_sat_required", {**JWST_DEFAULTS, "sat_required_snowball": False}),
    ):
        model = simulate_ramps.ramp_model(ramp)
        jump = 4  # GROUPDQ JUMP_DET
        added = stcal_large_events(np.asarray(model.groupdq), gain, rn, settings)
        flagged = int((((added & jump) > 0) & ~((model.groupdq & jump) > 0)).any(axis=(0, 1)).sum())
        model.groupdq = added
        info = snowball_flag.fit_rate(model, gain, rn)
        result[label] = {**judge(info, ramp, before), "flagged_pixels": flagged}
    return result


def full_frame(seed=5) -> dict:
    ramp = simulate_ramps.blank_sky_ramp((2048, 2048), seed, {})
    gain, rn = ramp["gain"], ramp["readnoise"]
    start = time.time()
    snowball_flag.fit_rate(simulate_ramps.ramp_model(ramp), gain, rn)
    fit_s = time.time() - start
    start = time.time()
    _, report = snowball_flag.correct_ramp(simulate_ramps.ramp_model(ramp), gain, rn, snowball_flag.DEFAULTS)
    total_s = time.time() - start
    return {
        "ngroups": int(ramp["params"]["ngroups"]),
        "snowballs_injected": len(ramp["events"]),
        "snowballs_found": report["snowballs"],
        "ramp_fit_s": round(fit_s, 1),
        "flag_and_refit_s": round(total_s, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-full-frame", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import os

    start = time.time()
    result = {"bench": "snowball", "compare": compare()}
    if not args.skip_full_frame:
        result["full_frame"] = full_frame()
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
