"""`snakemake --lint` and `ruff check scripts tests` are clean (STYLE.md, "Small things")."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINT_HEADER = re.compile(r"Lints for (?:rule (?P<rule>\S+) \(line \d+, (?P<rfile>[^)]+)\)|snakefile (?P<sfile>.+)):$")
LINT_ITEM = re.compile(r"\s+\* (?P<msg>.+?):?$")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def summarize_lints(output: str) -> str:
    """One line per distinct lint and file, with the rules it was raised for.

    `snakemake --lint` repeats each finding for every rule it applies to (one per band for
    the per-band rules); the summary keeps the assertion message readable.
    """
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    where = None
    for line in output.splitlines():
        header = LINT_HEADER.match(line)
        if header:
            where = (header["rfile"] or header["sfile"], header["rule"] or "")
        elif where and (item := LINT_ITEM.match(line)):
            found[(where[0], item["msg"])].append(where[1])
    if not found:
        return output[-5000:]
    lines = []
    for (path, message), rules in sorted(found.items()):
        path = str(Path(path).relative_to(REPO)) if Path(path).is_absolute() and REPO in Path(path).parents else path
        named = [r for r in rules if r]
        scope = f" [{len(named)} rules: {', '.join(named[:3])}{', ...' if len(named) > 3 else ''}]" if named else ""
        lines.append(f"{path}: {message}{scope}")
    return "\n".join(lines)


def test_snakemake_lint_is_clean():
    result = run(str(BIN / "snakemake"), "--lint", "--nolock")
    assert result.returncode == 0, "snakemake --lint reports:\n" + summarize_lints(result.stdout)


def test_ruff_is_clean():
    result = run(str(BIN / "ruff"), "check", "--output-format", "concise", "scripts", "tests")
    assert result.returncode == 0, "ruff check scripts tests reports:\n" + result.stdout[-5000:]
