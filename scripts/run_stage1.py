"""Stage 1 of the real-data path: one uncal exposure -> rate image with jwst's Detector1Pipeline.

Method: ``Detector1Pipeline(steps=...)`` is constructed directly and ``.run(path)`` is called
(never ``.call()``; CRDS parameter files are disabled with ``STPIPE_DISABLE_CRDS_STEPPARS``),
so the step parameters are exactly the ones of ``config["stage1"]["steps"]`` plus what the
workflow enforces:

* ``ramp_fit.suppress_one_group = False``: ramps saturated after their first group keep a
  slope from that group (bright cores of nearby galaxies), whatever the config says;
* persistence is carried from exposure to exposure of a detector. In jwst 3.0 the
  persistence step flags groups inside a persistence window that opens when a pixel
  saturates; the open windows live in an ASDF file (``persistence_array_file`` in,
  ``save_persistence`` out). The workflow processes the exposures of a detector in time
  order and hands each the file of the previous one. The pre-jwst-1.20 trapsfilled keys
  (``input_trapsfilled``, ``save_trapsfilled``) no longer exist and are dropped.

With ``--ramp-only`` (exposures whose snowballs the workflow flags, CEERS Sec. 3.1.1) ramp
fitting and gain scaling are skipped and the ramp after the jump step (RampModel, with the
gain and read-noise references the jump step used in ``meta.ref_file``) is written instead,
for ``snowball_flag.py`` to refit.

The rate image (or ramp) is written with ``wfutils.save_model`` and the persistence record with
provenance, both atomically. Reference files come from CRDS: ``require_crds`` checks the
local cache is configured and pins ``CRDS_CONTEXT``; a CRDS ``sys.exit`` becomes an
``InputError`` naming the exposure. ``require_crds`` and ``crds_guard`` are shared with
``run_stage2.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import tempfile
from pathlib import Path

from wflib import wfutils
from wflib.wfutils import InputError

log = logging.getLogger("jwstflow.stage1")

# Persistence parameters the workflow sets itself (file names follow the DAG).
PERSISTENCE_FILE_KEYS = ("persistence_array_file", "save_persistence")
# Parameters of the persistence step before jwst 1.20 (TrapsFilledModel); rejected by jwst 3.0.
LEGACY_PERSISTENCE_KEYS = (
    "input_trapsfilled",
    "save_trapsfilled",
    "flag_pers_cutoff",
    "modify_input",
    "override_trapdensity",
    "override_trappars",
    "override_persat",
)
PROVENANCE_KEY = "jwstflow_provenance"


# ----------------------------------------------------------------------- CRDS
def require_crds(context: str | None, server_url: str | None = None) -> None:
    """Check that CRDS can serve reference files and pin the context (environment variables).

    ``CRDS_PATH`` (the local cache) must be set. ``CRDS_SERVER_URL`` is taken from the
    environment, else from ``server_url`` (the config). Without a server the cache must
    already hold the pinned context, since CRDS then runs offline. ``CRDS_CONTEXT`` is set
    to ``context`` so a re-run uses the same reference files.
    """
    pinned = f"the context pinned in config (crds.context) is {context}" if context else "no context is pinned"
    crds_path = os.environ.get("CRDS_PATH", "").strip()
    if not crds_path:
        raise InputError(
            "CRDS is not configured: set CRDS_PATH to a local CRDS cache directory and CRDS_SERVER_URL "
            f"(e.g. https://jwst-crds.stsci.edu) before running Stage 1/2 on real data; {pinned}"
        )
    if not Path(crds_path).is_dir():
        raise InputError(
            f"CRDS_PATH={crds_path} is not a directory; create it or point it at the CRDS cache ({pinned})"
        )
    if server_url and not os.environ.get("CRDS_SERVER_URL"):
        os.environ["CRDS_SERVER_URL"] = server_url
    if not os.environ.get("CRDS_SERVER_URL"):
        # Offline, CRDS can only use a context whose mapping is already in the cache.
        if not context or not (Path(crds_path) / "mappings" / "jwst" / context).is_file():
            raise InputError(
                f"CRDS_SERVER_URL is not set and the cache CRDS_PATH={crds_path} does not hold "
                f"{context or 'a pinned context'}; set CRDS_SERVER_URL (e.g. https://jwst-crds.stsci.edu) "
                f"or sync the cache; {pinned}"
            )
    if context:
        os.environ["CRDS_CONTEXT"] = context
    os.environ.setdefault("CRDS_OBSERVATORY", "jwst")
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    logging.getLogger("jwstflow.crds").info(
        "CRDS_PATH=%s CRDS_SERVER_URL=%s CRDS_CONTEXT=%s",
        crds_path,
        os.environ.get("CRDS_SERVER_URL", "(offline)"),
        os.environ.get("CRDS_CONTEXT", "(server default)"),
    )


@contextlib.contextmanager
def crds_guard(path):
    """Turn the ``sys.exit`` CRDS raises when it cannot serve a reference file into an InputError."""
    try:
        yield
    except SystemExit as exc:
        raise InputError(
            f"{path}: CRDS could not provide the reference files (exit status {exc.code}) with "
            f"CRDS_CONTEXT={os.environ.get('CRDS_CONTEXT', '(unset)')}, CRDS_PATH={os.environ.get('CRDS_PATH')}, "
            f"CRDS_SERVER_URL={os.environ.get('CRDS_SERVER_URL', '(unset)')}; check that the server is reachable "
            "or that the cache holds this context and its references (see the CRDS messages above in the log)"
        ) from exc


def parse_steps(text: str | None) -> dict:
    """Step overrides from the ``--steps`` JSON (``{step: {parameter: value}}``)."""
    if not text:
        return {}
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--steps is not valid JSON ({exc})") from exc
    if not isinstance(steps, dict) or not all(isinstance(v, dict) for v in steps.values()):
        raise InputError("--steps must be a JSON object {step name: {parameter: value}}")
    return steps


# ----------------------------------------------------------------------- parameters
def stage1_step_parameters(
    steps_config: dict, persistence_in: str | None, persistence_out: str | None = None, ramp_only: bool = False
) -> dict:
    """Detector1Pipeline ``steps`` dict: the config's overrides plus what the workflow enforces.

    ``suppress_one_group`` is always False; the persistence step reads the open persistence
    windows of the previous exposure on the detector (``persistence_in``; None for the first
    one) and writes its own (``persistence_out``). Persistence file keys given in the config
    are replaced, legacy trapsfilled keys dropped. Raises InputError if the persistence step
    is switched on without a ``persistence_time``. ``ramp_only`` skips ramp fitting and gain
    scaling (the pipeline then returns the ramp).
    """
    steps = copy.deepcopy(steps_config or {})
    ramp_fit = steps.setdefault("ramp_fit", {})
    if ramp_fit.get("suppress_one_group", False) is not False:
        log.warning(
            "stage1: ramp_fit.suppress_one_group=%r in the config is overridden to False",
            ramp_fit["suppress_one_group"],
        )
    ramp_fit["suppress_one_group"] = False
    if ramp_only:
        ramp_fit["skip"] = True
        steps.setdefault("gain_scale", {})["skip"] = True

    persistence = steps.setdefault("persistence", {})
    for key in LEGACY_PERSISTENCE_KEYS:
        if key in persistence:
            log.warning(
                "stage1: persistence.%s is not a jwst 3.0 parameter (trapsfilled persistence was "
                "replaced by persistence windows); ignored",
                key,
            )
            del persistence[key]
    for key in PERSISTENCE_FILE_KEYS:
        if key in persistence:
            log.warning("stage1: persistence.%s is set by the workflow; the config value is ignored", key)
            del persistence[key]
    if persistence_in:
        persistence["persistence_array_file"] = str(persistence_in)
    if persistence_out:
        persistence["save_persistence"] = str(persistence_out)
    if persistence.get("skip", True) is False and not persistence.get("persistence_time"):
        raise InputError(
            "stage1.steps.persistence: skip is false but persistence_time (seconds) is not set; "
            "jwst's persistence step needs the length of the persistence window"
        )
    return steps


# ----------------------------------------------------------------------- running
def persistence_record(written: Path, inputs, cfg_hash: str | None) -> dict:
    """ASDF tree for the persistence product: jwst's per-detector windows (if the step wrote any) and provenance."""
    import asdf

    tree = dict(asdf.load(written)) if written.exists() else {}
    if not written.exists():
        log.info("persistence step did not write windows (skipped or no persistence_time): empty record")
    tree[PROVENANCE_KEY] = {key: value for key, value, _ in wfutils.provenance_cards(inputs, cfg_hash, "stage1")}
    return tree


def write_asdf(tree: dict, path) -> None:
    """Write an ASDF tree atomically."""
    import asdf

    with wfutils.atomic_output(path) as tmp:
        asdf.AsdfFile(tree).write_to(str(tmp))


def run_detector1(uncal: Path, steps: dict, workdir: Path):
    """Run Detector1Pipeline on one exposure; return the rate ImageModel (the RampModel if ramp_fit is skipped)."""
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    from jwst.pipeline import Detector1Pipeline

    try:
        pipeline = Detector1Pipeline(steps=steps)
    except Exception as exc:  # stpipe raises a configobj ValidationError for unknown parameters
        raise InputError(f"stage1.steps: not accepted by jwst's Detector1Pipeline ({exc})") from exc
    pipeline.output_dir = str(workdir)
    pipeline.save_results = False
    with crds_guard(uncal):
        rate = pipeline.run(str(uncal))
    if rate is None:
        raise InputError(f"{uncal}: Detector1Pipeline produced no rate image (ramp fitting returned nothing)")
    return rate


def add_common_arguments(parser) -> None:
    """Options shared by the Stage 1 and Stage 2 scripts: CRDS pinning, provenance, log."""
    parser.add_argument("--crds-context", help="CRDS context to pin, e.g. jwst_1413.pmap")
    parser.add_argument("--crds-server-url", help="CRDS server used when CRDS_SERVER_URL is not set")
    parser.add_argument("--config-hash", help="hash of the workflow config (provenance)")
    parser.add_argument("--log", help="log file")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("uncal", help="the exposure's _uncal.fits file")
    parser.add_argument("--out", required=True, help="rate image to write (_rate.fits; _ramp.fits with --ramp-only)")
    parser.add_argument(
        "--ramp-only", action="store_true", help="stop before ramp fitting and write the ramp (for snowball_flag.py)"
    )
    parser.add_argument("--persistence-in", help="persistence record of the previous exposure on this detector")
    parser.add_argument("--persistence-out", help="persistence record of this exposure to write (.asdf)")
    parser.add_argument("--steps", help="JSON {step: {parameter: value}} of Detector1Pipeline overrides")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    wfutils.setup_logging(args.log)
    uncal = Path(args.uncal)
    if not uncal.is_file():
        raise InputError(f"{uncal}: file does not exist")
    if args.persistence_in and not Path(args.persistence_in).is_file():
        raise InputError(f"{args.persistence_in}: persistence record of the previous exposure does not exist")
    if args.persistence_out and Path(args.persistence_out).suffix != ".asdf":
        raise InputError(f"{args.persistence_out}: the persistence record is an ASDF file (.asdf)")
    steps_config = parse_steps(args.steps)
    require_crds(args.crds_context, args.crds_server_url)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{uncal.stem}.", dir=out.parent) as tmp:
        workdir = Path(tmp)
        jwst_persistence = workdir / "persistence.asdf"
        steps = stage1_step_parameters(
            steps_config, args.persistence_in, jwst_persistence if args.persistence_out else None, args.ramp_only
        )
        log.info("Detector1Pipeline on %s with steps %s", uncal, json.dumps(steps, sort_keys=True))
        rate = run_detector1(uncal, steps, workdir)
        inputs = [uncal] + ([Path(args.persistence_in)] if args.persistence_in else [])
        if args.persistence_out:
            write_asdf(persistence_record(jwst_persistence, inputs, args.config_hash), args.persistence_out)
        wfutils.save_model(rate, out, inputs, args.config_hash, "stage1")
    log.info("wrote %s", out)


if __name__ == "__main__":
    wfutils.run_cli(main)
