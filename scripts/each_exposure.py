"""Run a per-exposure script on many exposures in one process (one import of jwst, not one per file).

A per-exposure correction (``destripe.py INPUT OUTPUT``, ``noise_model.py INPUT OUTPUT``,
``miri_lyot_split.py --imager-out A --lyot-out B INPUT``, ``flag_outliers.py --exposure INPUT
--out CRF MEDIAN...``) costs a few seconds of imports
for well under a second of work on a small exposure. The workflow therefore runs it once
per band through this runner, which calls the script's ``main`` for each input in turn:
memory is still that of one exposure, and each exposure's files are exactly what the
script run alone writes. Per-file paths are formats of ``{name}``, the input file name
without ``_cal.fits``, ``_ramp.fits`` (or ``.fits``): ``--per-file`` outputs under ``--out-dir``,
``--beside`` inputs next to each input (``snowball_flag.py RAMP RATE --gain G --readnoise R``):

    python scripts/each_exposure.py destripe --out-dir DIR --output '{name}_cal.fits' \\
        --per-file noise-model='models/{name}_stripes.fits' --args '--params {...}' INPUT...

A failing exposure stops the run with the script's own message (naming the file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import time
from pathlib import Path

from wflib import wfutils

log = logging.getLogger("each_exposure")
RUNNABLE = (
    "snowball_flag",
    "wisp_subtract",
    "persistence_mask",
    "destripe",
    "noise_model",
    "miri_lyot_split",
    "flag_outliers",
)


def exposure_stem(path: str) -> str:
    name = Path(path).name
    for suffix in ("_cal.fits", "_ramp.fits", ".fits"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_per_file(items: list[str], flag: str = "--per-file") -> list[tuple[str, str]]:
    """``OPTION=FORMAT`` pairs, e.g. ``noise-model=models/{name}_stripes.fits``, given with ``flag``."""
    pairs = []
    for item in items:
        option, sep, fmt = item.partition("=")
        if not sep or not option or "{name}" not in fmt:
            raise wfutils.InputError(f"{flag} {item!r}: expected OPTION=FORMAT with {{name}} in FORMAT")
        pairs.append((option.lstrip("-"), fmt))
    return pairs


def script_argv(
    path: str, out_dir: Path, output: str | None, per_file, common: list[str], log_file, input_option=None, beside=()
) -> list[str]:
    """Command line of the script for one input (positional, or the value of ``--input_option``)."""
    name = exposure_stem(path)
    argv = list(common)
    for option, fmt in per_file:
        argv += [f"--{option}", str(out_dir / fmt.format(name=name))]
    for option, fmt in beside:
        argv += [f"--{option}", str(Path(path).parent / fmt.format(name=name))]
    if log_file:
        argv += ["--log", log_file]
    argv += [f"--{input_option}", path] if input_option else [path]
    if output:
        argv.append(str(out_dir / output.format(name=name)))
    return argv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=RUNNABLE, help="per-exposure script (module in scripts/)")
    parser.add_argument("inputs", nargs="+", help="exposures")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--output", help="positional output file name format, e.g. '{name}_cal.fits' (none if absent)")
    parser.add_argument("--per-file", action="append", default=[], help="OPTION=FORMAT, repeatable")
    parser.add_argument("--beside", action="append", default=[], help="OPTION=FORMAT of an input next to each input")
    parser.add_argument("--input-option", help="pass each input as --OPTION PATH instead of positionally")
    parser.add_argument("--args", default="", help="options passed to every call (one shell-quoted string)")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    names = [Path(p).name for p in args.inputs]
    if len(set(names)) != len(names):
        raise wfutils.InputError("two inputs share a file name; their outputs would overwrite each other")
    module = importlib.import_module(args.script)
    per_file = parse_per_file(args.per_file)
    beside = parse_per_file(args.beside, "--beside")
    common = shlex.split(args.args)
    out_dir = Path(args.out_dir)
    start = time.time()
    for k, path in enumerate(args.inputs, start=1):
        argv = script_argv(path, out_dir, args.output, per_file, common, args.log, args.input_option, beside)
        module.main(argv)
        elapsed = time.time() - start
        log.info("%s %d/%d done (%s, %.1f s so far)", args.script, k, len(args.inputs), Path(path).name, elapsed)


if __name__ == "__main__":
    wfutils.run_cli(main)
