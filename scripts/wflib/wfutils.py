"""Small helpers shared by the workflow scripts: logging, atomic writes, provenance, input checks."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_IMAGE_EXTENSIONS = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")
SURFACE_BRIGHTNESS_UNIT = "MJy/sr"
CONFIG_HASH_ENV = "JWSTFLOW_CONFIG_HASH"


class InputError(RuntimeError):
    """A user-facing problem with an input file; the message names the file and the fault."""


def workflow_version() -> str:
    """Version string from pyproject.toml (the single source of the workflow version)."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["version"]


def config_hash(config: dict) -> str:
    """Short SHA-256 of a configuration, independent of key order."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setup_logging(log_file: str | None = None, name: str = "jwstflow") -> logging.Logger:
    """Log to ``log_file`` (Snakemake's per-job log) or stderr, one line per decision."""
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return logging.getLogger(name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it into place only on success.

    The temporary name keeps the final suffix (jwst picks the writer from it) and
    carries the process id, so concurrent jobs never share a temporary file. Temporary
    files of ``path`` left by an earlier, killed attempt (Snakemake runs one job per output
    at a time) are removed first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")
    leftover = re.compile(rf"\.{re.escape(final.stem)}\.tmp\d+(\..+)?{re.escape(final.suffix)}")
    for stale in final.parent.glob(glob.escape(f".{final.stem}.tmp") + "*"):
        if stale != tmp and leftover.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def provenance_cards(inputs, cfg_hash: str | None, step: str) -> list[tuple[str, str, str]]:
    """FITS primary-header cards recording the workflow version, config hash, step and inputs."""
    cards = [
        ("WFVERS", workflow_version(), "jwst-mosaic workflow version"),
        ("WFCFGHSH", cfg_hash or os.environ.get(CONFIG_HASH_ENV, "standalone"), "hash of the resolved workflow config"),
        ("WFSTEP", step, "workflow step that wrote this file"),
        ("WFNINPUT", len(list(inputs)), "number of input files"),
    ]
    for i, name in enumerate(inputs, start=1):
        cards.append((f"WFIN{i:04d}", Path(str(name)).name[:68], "input file"))
    return cards


def save_model(model, path, inputs, cfg_hash: str | None, step: str, cards=()) -> None:
    """Write a jwst datamodel atomically with provenance cards (and extra ``cards``) in the primary header."""
    model.meta.filename = Path(path).name
    model.extra_fits = {"PRIMARY": {"header": [list(c) for c in (*provenance_cards(inputs, cfg_hash, step), *cards)]}}
    # written through a file object: given a path, stdatamodels would record the temporary name
    # in FILENAME (its on_save hook renames meta.filename after the path)
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        model.to_fits(stream)


def write_hdulist(hdul, path, inputs, cfg_hash: str | None, step: str) -> None:
    """Write an astropy HDUList atomically with provenance cards in the primary header."""
    for key, value, comment in provenance_cards(inputs, cfg_hash, step):
        hdul[0].header[key] = (value, comment)
    with atomic_output(path) as tmp:
        hdul.writeto(tmp, overwrite=True)


def write_text(text: str, path) -> None:
    """Write a small text file (JSON, ECSV, TSV) atomically."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def check_image_file(path, extensions=REQUIRED_IMAGE_EXTENSIONS, unit=SURFACE_BRIGHTNESS_UNIT) -> None:
    """Fail early with a clear message if ``path`` is not a usable JWST image FITS file."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("exception")
            names = {hdu.name for hdu in hdul}
            missing = [ext for ext in extensions if ext not in names]
            if missing:
                raise InputError(f"{path}: missing FITS extension(s) {', '.join(missing)}")
            sci = hdul["SCI"]
            if sci.data is None:
                raise InputError(f"{path}: SCI extension holds no data")
            bunit = sci.header.get("BUNIT")
            if unit and bunit != unit:
                raise InputError(f"{path}: SCI unit is {bunit!r}, expected {unit!r}")
    except InputError:
        raise
    except Exception as exc:  # astropy raises many types for damaged files
        raise InputError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc


def parse_params(text: str | None, defaults: dict) -> dict:
    """``defaults`` updated by the JSON object ``text``; unknown keys are an error naming them."""
    params = json.loads(json.dumps(defaults))
    if not text:
        return params
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise InputError("--params must be a JSON object")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    params.update(given)
    return params


def int_list(text: str) -> list[int]:
    """Command-line type of a comma-separated list of integers ("3,7,15")."""
    return [int(v) for v in text.split(",") if v.strip()]


def add_run_options(parser, params_help: str | None = None) -> None:
    """The options every step shares: ``--params`` (a JSON object, when ``params_help`` says
    what it holds), ``--config-hash`` (recorded in the provenance headers) and ``--log``."""
    if params_help is not None:
        parser.add_argument("--params", default="{}", help=params_help)
    parser.add_argument("--config-hash", default=None, help="hash of the workflow config (provenance headers)")
    parser.add_argument("--log", help="log file (default: stderr)")


def run_cli(main) -> None:
    """Run a script's ``main`` and turn InputError into a one-line message and exit code 2."""
    try:
        main()
    except InputError as exc:
        logging.getLogger("jwstflow").error(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
