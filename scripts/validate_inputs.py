"""Early validation of the input exposures of a target (issue 13: bad inputs are rejected early).

Every exposure is checked before any correction touches it, and a bad one is reported with
its file name and the fault:

- per file: readable FITS (not something else), not truncated (the file holds every byte its
  headers announce), the extensions of its input level (uncal: SCI, PIXELDQ, GROUPDQ; rate:
  SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE; cal: also VAR_FLAT), image extensions of one shape,
  the SCI unit of its level (DN, DN/s, MJy/sr: a rate file handed over as cal, or the
  reverse, is caught), a primary header naming the exposure, not all-NaN and not all-zero
  data, and (cal level) a WCS that evaluates to finite sky positions over the detector;
- per group (a target's files at one level): the instrument and filter are ones the workflow
  processes (the channels of ``mosaic.scale_multiple`` in the config), no two files claim the
  same exposure (program, observation, visit, visit group, sequence, activity, exposure,
  detector from the primary header), and a filter's exposures come from one instrument.

``validate`` stops with every fault listed (``on_bad: stop``) or drops the bad files and
returns them with their faults (``on_bad: skip``). The workflow runs it twice: while the
exposure table is built (rules/common.smk, real-data inputs, where a skip can still take an
exposure out of the DAG; results cached by file size and modification time), and as the rule
``validate_inputs`` on the cal-level files entering the corrections (simulated, made by
Stage 2 or given), which links the validated files under ``results/<t>/validated/`` for the
first correction step and writes the per-band report. See the README, "Bad inputs".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wflib import survey_plan, wfutils

log = logging.getLogger("jwstflow.validate_inputs")

FITS_BLOCK = 2880
# Level -> (extensions that must exist, accepted SCI units).
LEVELS = {
    "uncal": (("SCI", "PIXELDQ", "GROUPDQ"), ("DN",)),
    "rate": (("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE"), ("DN/s",)),
    "cal": (("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"), ("MJy/sr",)),
}
IDENTITY_KEYS = ("PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE", "DETECTOR")
HEADER_KEYS = ("INSTRUME", "DETECTOR", "FILTER")
CHECK_VERSION = 1  # bump when the checks change: cached results are then redone


@dataclass
class FileCheck:
    """The verdict on one file: what it claims to be and what is wrong with it."""

    path: str
    identity: str = ""
    instrument: str = ""
    filter: str = ""
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def message(self) -> str:
        return f"{self.path}: " + "; ".join(self.faults)


# ----------------------------------------------------------------------- pure checks
def truncation_fault(file_size: int, hdu_ends: list[int]) -> str | None:
    """A fault if a file of ``file_size`` bytes is shorter than its HDUs need (``hdu_ends``: the
    byte where each HDU's data ends) or is not made of whole 2880-byte FITS blocks."""
    needed = max(hdu_ends, default=0)
    if needed > file_size:
        return f"truncated: the FITS headers need {needed} bytes, the file has {file_size}"
    if file_size % FITS_BLOCK:
        return f"truncated: {file_size} bytes is not a whole number of {FITS_BLOCK}-byte FITS blocks"
    return None


def data_fault(sci: np.ndarray) -> str | None:
    """A fault if the science array carries no information: all NaN (no finite pixel) or all zero."""
    if sci.size == 0:
        return "SCI is empty"
    finite = np.isfinite(sci)
    if not finite.any():
        return "SCI is all NaN (no finite pixel)"
    if not np.any(sci[finite]):
        return "SCI is all zero"
    return None


def unit_fault(bunit, level: str) -> str | None:
    units = LEVELS[level][1]
    if bunit is None and level == "uncal":
        return None
    if bunit not in units:
        other = [lv for lv, (_, u) in LEVELS.items() if bunit in u]
        hint = f" (a {other[0]}-level file given as {level}?)" if other else ""
        return f"SCI unit is {bunit!r}, expected {' or '.join(map(repr, units))} at input level {level}{hint}"
    return None


def exposure_identity(header) -> str:
    """MAST-style name of the exposure a primary header describes ('' if the keys are missing)."""
    try:
        p, o, v, g, s, a, e, d = (str(header[k]).strip() for k in IDENTITY_KEYS)
    except KeyError:
        return ""
    return f"jw{p.zfill(5)}{o.zfill(3)}{v.zfill(3)}_{g.zfill(2)}{s}{a.zfill(2)}_{e.zfill(5)}_{d.lower()}"


def group_faults(checks: list[FileCheck], channels) -> None:
    """Faults that only a group of files shows, appended to ``checks`` in place: unknown
    instrument or filter (channels not in ``channels``), two files claiming one exposure,
    a filter whose files come from more than one instrument."""
    instruments = {survey_plan.CHANNELS[c]["instrument"] for c in channels}
    for c in checks:
        if not c.instrument or not c.filter:
            continue
        if c.instrument not in instruments:
            c.faults.append(
                f"instrument {c.instrument!r} is not processed by this workflow "
                f"(config mosaic.scale_multiple has {', '.join(sorted(instruments))})"
            )
            continue
        try:
            channel = survey_plan.channel_of(c.filter)
        except ValueError:
            c.faults.append(f"filter {c.filter!r} is not a NIRCam or MIRI imaging filter this workflow knows")
            continue
        if channel not in channels:
            c.faults.append(f"filter {c.filter} ({channel}) has no pixel scale in config mosaic.scale_multiple")
        elif survey_plan.CHANNELS[channel]["instrument"] != c.instrument:
            c.faults.append(
                f"mixed instruments in the {c.filter} group: this file is {c.instrument}, "
                f"{c.filter} is a {survey_plan.CHANNELS[channel]['instrument']} filter"
            )
    seen: dict[str, FileCheck] = {}
    # the file whose name is its exposure (MAST naming) keeps it; any other claimant is the duplicate
    for c in sorted(checks, key=lambda c: (not Path(c.path).name.startswith(f"{c.identity}_"), c.path)):
        if not c.identity:
            continue
        if c.identity in seen:
            c.faults.append(f"duplicate exposure: claims exposure {c.identity}, as does {seen[c.identity].path}")
        else:
            seen[c.identity] = c


# ----------------------------------------------------------------------- one file
def check_file(path, level: str) -> FileCheck:
    """Every single-file check of ``path`` at input ``level``; never raises for a bad file."""
    from astropy.io import fits

    path = Path(path)
    check = FileCheck(str(path))
    if not path.is_file():
        check.faults.append("file does not exist")
        return check
    with open(path, "rb") as fh:
        if fh.read(9) != b"SIMPLE  =":
            check.faults.append("not a FITS file (it does not start with a SIMPLE card)")
            return check
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            ends = [info["datLoc"] + info["datSpan"] for info in map(hdul.fileinfo, range(len(hdul)))]
            fault = truncation_fault(path.stat().st_size, ends)
            if fault:
                check.faults.append(fault)
                return check
            _check_headers(hdul, level, check)
            if check.faults:
                return check
            sci = hdul["SCI"].data
            if level == "uncal" and sci.ndim == 4:
                sci = sci[0, -1]  # last group of the first integration: the ramp holds no more news
            fault = data_fault(np.asarray(sci))
            if fault:
                check.faults.append(fault)
            elif level == "cal":
                fault = wcs_fault(hdul)
                if fault:
                    check.faults.append(fault)
    except Exception as exc:  # astropy raises many types for damaged files
        check.faults.append(f"not a readable FITS file ({type(exc).__name__}: {exc})")
    return check


def _check_headers(hdul, level, check: FileCheck) -> None:
    primary = hdul[0].header
    missing = [k for k in HEADER_KEYS if k not in primary]
    if missing:
        check.faults.append(f"primary header lacks {', '.join(missing)}")
    check.instrument = str(primary.get("INSTRUME", "")).strip()
    check.filter = str(primary.get("FILTER", "")).strip()
    check.identity = exposure_identity(primary)
    names = [hdu.name for hdu in hdul]
    needed = LEVELS[level][0]
    absent = [e for e in needed if e not in names]
    if absent:
        check.faults.append(f"missing extension(s) {', '.join(absent)} (input level {level} needs {', '.join(needed)})")
        return
    sci = hdul["SCI"]
    if not sci.header.get("NAXIS"):
        check.faults.append("SCI extension holds no data")
        return
    for ext in needed[1:]:  # shapes from the headers: no array is read for this
        shape = hdul[ext].shape
        if shape and level != "uncal" and shape[-2:] != sci.shape[-2:]:
            check.faults.append(f"{ext} shape {shape} differs from SCI {sci.shape}")
    fault = unit_fault(sci.header.get("BUNIT"), level)
    if fault:
        check.faults.append(fault)


def wcs_fault(hdul) -> str | None:
    """A fault if the exposure's WCS (the gwcs in the ASDF extension, which the jwst steps use) is
    missing or gives non-finite sky positions at the detector corners and centre."""
    import io

    import asdf

    if "ASDF" not in hdul:
        return "no WCS: no ASDF extension holding the gwcs (was assign_wcs run?)"
    try:
        raw = hdul["ASDF"].data[0][0].tobytes()
        with asdf.open(io.BytesIO(raw), lazy_load=True, memmap=False) as af:
            wcs = af.tree.get("meta", {}).get("wcs")
            if wcs is None:
                return "no WCS: meta.wcs is empty (was assign_wcs run?)"
            ny, nx = hdul["SCI"].data.shape[-2:]
            x = np.array([0.0, nx - 1, 0.0, nx - 1, (nx - 1) / 2])
            y = np.array([0.0, 0.0, ny - 1, ny - 1, (ny - 1) / 2])
            ra, dec = wcs(x, y)[:2]
    except Exception as exc:
        return f"WCS does not evaluate ({type(exc).__name__}: {exc})"
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        return f"WCS does not evaluate: non-finite RA/Dec at {int(bad.sum())} of 5 test pixels (corners, centre)"
    return None


# ----------------------------------------------------------------------- many files
def load_cache(path) -> dict:
    try:
        cache = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return cache if cache.get("version") == CHECK_VERSION else {}


@contextlib.contextmanager
def fast_asdf():
    """asdf without schema validation on read, for a batch of WCS checks: validating each file's
    tree is most of the cost, and evaluating the WCS is the check that matters here."""
    import asdf

    with asdf.config_context() as cfg:
        cfg.validate_on_read = False
        yield


def check_files(paths, level: str, cache_file=None) -> list[FileCheck]:
    """``check_file`` for each path; with ``cache_file``, files whose size and modification time
    are unchanged since the last call reuse the stored verdict (the exposure table is built at
    every parse of the Snakefile, also inside each job)."""
    entries = load_cache(cache_file).get("files", {}) if cache_file else {}
    checks, changed = [], False
    with fast_asdf():
        for path in paths:
            stat = Path(path).stat() if Path(path).is_file() else None
            key = f"{level}:{Path(path).resolve()}"
            stamp = [stat.st_size, stat.st_mtime_ns] if stat else None
            entry = entries.get(key)
            if entry and stamp and entry["stamp"] == stamp:
                checks.append(
                    FileCheck(**{**entry["check"], "path": str(path), "faults": list(entry["check"]["faults"])})
                )
                continue
            check = check_file(path, level)
            checks.append(check)
            if stamp:
                entries[key] = {"stamp": stamp, "check": asdict(check)}
                changed = True
    if cache_file and changed:
        try:
            wfutils.write_text(json.dumps({"version": CHECK_VERSION, "files": entries}), cache_file)
        except OSError as exc:  # a read-only working directory only costs the cache
            log.warning("cannot write the validation cache %s (%s)", cache_file, exc)
    return checks


def validate(
    paths,
    level: str,
    on_bad: str = "stop",
    channels=("NRC_SW", "NRC_LW", "MIRI"),
    cache_file=None,
    stop_note: str = "validation.on_bad_exposure: stop; `skip` drops them instead",
):
    """Check ``paths`` (one target's files at ``level``). Returns (good, skipped) FileChecks.

    ``on_bad``: ``stop`` raises ``wfutils.InputError`` listing every bad file and its faults;
    ``skip`` returns the bad files in ``skipped`` (for the caller to announce) and the rest in ``good``.
    """
    if on_bad not in ("stop", "skip"):
        raise ValueError(f"on_bad must be 'stop' or 'skip', got {on_bad!r}")
    checks = check_files(paths, level, cache_file)
    group_faults(checks, channels)
    bad = [c for c in checks if not c.ok]
    if bad and on_bad == "stop":
        lines = "\n".join(f"  {c.message()}" for c in bad)
        raise wfutils.InputError(
            f"{len(bad)} of {len(checks)} exposure file(s) failed validation ({stop_note}):\n{lines}"
        )
    return [c for c in checks if c.ok], bad


def report_lines(good, skipped) -> str:
    """TSV: one row per file, status ok or skipped, and the faults."""
    rows = ["file\texposure\tinstrument\tfilter\tstatus\tfaults"]
    for c in sorted([*good, *skipped], key=lambda c: Path(c.path).name):
        status = "ok" if c.ok else "skipped"
        rows.append("\t".join([c.path, c.identity, c.instrument, c.filter, status, "; ".join(c.faults)]))
    return "\n".join(rows) + "\n"


def link_validated(paths, link_dir) -> list[Path]:
    """Relative symbolic links ``link_dir/<name>`` to each validated file (the gate the first
    correction step reads through; the files themselves are never touched)."""
    link_dir = Path(link_dir)
    link_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for path in paths:
        link = link_dir / Path(path).name
        tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(Path(path).resolve(), link_dir.resolve()))
        os.replace(tmp, link)
        links.append(link)
    return links


def merge_reports(reports, skipped) -> str:
    """One target's report: the rows of its band reports plus the files skipped upstream."""
    header, rows = None, []
    for report in reports:
        lines = Path(report).read_text().splitlines()
        header = lines[0]
        rows += lines[1:]
    extra = report_lines([], skipped).splitlines()
    return "\n".join([header or extra[0], *sorted(rows + extra[1:], key=lambda r: Path(r.split("\t")[0]).name)]) + "\n"


# ----------------------------------------------------------------------- entry point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="exposure files of one target (and band); with --merge, reports")
    parser.add_argument("--level", choices=sorted(LEVELS), default="cal", help="input level of the files")
    parser.add_argument("--on-bad", choices=("stop", "skip"), default="stop", help="stop, or drop bad files")
    parser.add_argument("--channels", default="NRC_SW,NRC_LW,MIRI", help="channels the config processes")
    parser.add_argument("--report", help="TSV report of every file (status ok / skipped, faults)")
    parser.add_argument(
        "--skipped",
        default="[]",
        help="JSON list of {path, faults} skipped upstream (at parse time), added to the report",
    )
    parser.add_argument("--merge", action="store_true", help="inputs are band reports: merge them into --report")
    parser.add_argument("--link-dir", help="link each validated file here under its own name")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    skipped = [FileCheck(path=s["path"], faults=list(s["faults"])) for s in json.loads(args.skipped)]
    for c in skipped:
        log.warning("skipped before the run: %s", c.message())
    if args.merge:
        wfutils.write_text(merge_reports(args.inputs, skipped), args.report)
        return
    if not args.inputs:
        raise wfutils.InputError("no input files: a target (or band) with no exposures")
    note = f"--on-bad {args.on_bad}" + ("; files made inside the workflow cannot be skipped" if args.link_dir else "")
    good, bad = validate(args.inputs, args.level, args.on_bad, tuple(args.channels.split(",")), stop_note=note)
    for c in bad:
        log.warning("skipping %s (--on-bad skip)", c.message())
    log.info("%d of %d file(s) valid at level %s", len(good), len(args.inputs), args.level)
    if args.link_dir:
        link_validated([c.path for c in good], args.link_dir)
    if args.report:
        wfutils.write_text(report_lines(good, [*bad, *skipped]), args.report)


if __name__ == "__main__":
    wfutils.run_cli(main)
