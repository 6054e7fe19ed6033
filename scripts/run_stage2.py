"""Stage 2 of the real-data path: one rate image -> calibrated (cal) image with jwst's Image2Pipeline.

Method: a Level-2b association is written to a temporary JSON file with one product whose
members are the science rate (``exptype: science``) and, for MIRI, the off-field rates of
the same filter (``exptype: background``). jwst 3.0's Image2Pipeline groups the members of
a product by exptype and hands the background ones to ``bkg_subtract``, which subtracts
their sigma-clipped mean from the science image. ``Image2Pipeline(steps=...)`` is
constructed directly and ``.run(asn)`` called (never ``.call()``). Resampling inside
Stage 2 is always skipped: the mosaic stage drizzles every exposure onto the common grid.
The cal image is written atomically with provenance by ``wfutils.save_model``; CRDS is
guarded as in ``run_stage1.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

from run_stage1 import add_common_arguments, crds_guard, parse_steps, require_crds
from wflib import wfutils
from wflib.wfutils import InputError

log = logging.getLogger("jwstflow.stage2")


def stage2_step_parameters(steps_config: dict, has_background: bool) -> dict:
    """Image2Pipeline ``steps`` dict: the config's overrides, resample always skipped.

    ``bkg_subtract`` runs only when the association carries background members; the
    members replace any ``bkg_list`` from the config.
    """
    steps = copy.deepcopy(steps_config or {})
    resample = steps.setdefault("resample", {})
    if resample.get("skip", True) is not True:
        log.warning(
            "stage2: resample.skip=%r in the config is overridden to True (the mosaic stage resamples)",
            resample["skip"],
        )
    resample["skip"] = True
    bkg = steps.setdefault("bkg_subtract", {})
    if "bkg_list" in bkg:
        log.warning("stage2: bkg_subtract.bkg_list is set by the workflow (association members); ignored")
        del bkg["bkg_list"]
    bkg["skip"] = not has_background
    return steps


def stage2_association(rate_path, background_paths, product_name: str) -> dict:
    """Level-2b association (image2) of one science rate and its background rates.

    One product named ``product_name``; members carry ``expname`` as given (pass absolute
    paths: Image2Pipeline opens them relative to the current directory) and ``exptype``
    ``science`` or ``background``. The science file is never listed as its own background.
    """
    science = str(rate_path)
    backgrounds = []
    for path in map(str, background_paths or []):
        if path != science and path not in backgrounds:
            backgrounds.append(path)
    members = [{"expname": science, "exptype": "science"}]
    members += [{"expname": path, "exptype": "background"} for path in backgrounds]
    return {
        "asn_type": "image2",
        "asn_rule": "DMSLevel2bBase",
        "asn_pool": "jwstflow",
        "asn_id": "jwstflow",
        "program": "jwstflow",
        "target": "jwstflow",
        "degraded_status": "No known degraded exposures in association.",
        "constraints": "written by scripts/run_stage2.py",
        "products": [{"name": product_name, "members": members}],
    }


def product_name_of(rate_path) -> str:
    """Product name of a rate file: the MAST exposure name without ``_rate``."""
    stem = Path(rate_path).name.removesuffix(".fits")
    return stem.removesuffix("_rate")


def run_image2(asn_path: Path, rate: Path, steps: dict, workdir: Path):
    """Run Image2Pipeline on a one-product association; return the cal ImageModel."""
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    from jwst.pipeline import Image2Pipeline

    try:
        pipeline = Image2Pipeline(steps=steps)
    except Exception as exc:  # stpipe raises a configobj ValidationError for unknown parameters
        raise InputError(f"stage2.steps: not accepted by jwst's Image2Pipeline ({exc})") from exc
    pipeline.output_dir = str(workdir)
    pipeline.save_results = False
    # Members carry absolute paths on purpose (see stage2_association); jwst warns about that.
    warnings.filterwarnings("ignore", message="Input association file contains path information")
    with crds_guard(rate):
        results = pipeline.run(str(asn_path))
    if not results:
        raise InputError(f"{rate}: Image2Pipeline produced no calibrated image")
    return results[0]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rate", help="the science exposure's _rate.fits file")
    parser.add_argument("--out", required=True, help="calibrated image to write (_cal.fits)")
    parser.add_argument(
        "--background",
        nargs="+",
        action="extend",
        default=[],
        help="background rate files (MIRI off-field); give them after the science rate",
    )
    parser.add_argument("--steps", help="JSON {step: {parameter: value}} of Image2Pipeline overrides")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    wfutils.setup_logging(args.log)
    rate = Path(args.rate)
    for path in [rate, *map(Path, args.background)]:
        if not path.is_file():
            raise InputError(f"{path}: file does not exist")
    steps = stage2_step_parameters(parse_steps(args.steps), bool(args.background))
    require_crds(args.crds_context, args.crds_server_url)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{rate.stem}.", dir=out.parent) as tmp:
        workdir = Path(tmp)
        asn = stage2_association(rate.resolve(), [Path(b).resolve() for b in args.background], product_name_of(rate))
        asn_path = workdir / f"{product_name_of(rate)}_image2_asn.json"
        asn_path.write_text(json.dumps(asn, indent=2))
        log.info(
            "Image2Pipeline on %s (%d background member(s)) with steps %s",
            rate,
            len(args.background),
            json.dumps(steps, sort_keys=True),
        )
        cal = run_image2(asn_path, rate, steps, workdir)
        wfutils.save_model(cal, out, [rate, *args.background], args.config_hash, "stage2")
    log.info("wrote %s", out)


if __name__ == "__main__":
    wfutils.run_cli(main)
