"""Benchmark of the demo run: one JSON line with wall time, per-rule time and peak memory.

Reads the Snakemake benchmark files ``benchmarks/<rule>/<target>[/<filter>].tsv`` that the
rules write (columns ``s`` in seconds and ``max_rss`` in MB, among others). Per-band rules
such as ``simulate_exposures_NGC0628_F200W`` write under their stem
(``benchmarks/simulate_exposures/NGC0628/F200W.tsv``), so the first folder names the rule.

    python tests/bench/demo.py --run              # run `snakemake --cores 2`, time it, report
    python tests/bench/demo.py --run --forceall   # the same from scratch
    python tests/bench/demo.py --wall-seconds 412 # report on an earlier run

Output (one line)::

    {"bench": "demo", "wall_s": 412.3, "wall_source": "measured",
     "rules": {"drizzle_tile": {"jobs": 15, "s_total": 60.1, "max_rss_mb": 812.4}, ...},
     "peak_rss_mb": 1904.2}

The sum of the rules' seconds is CPU-side work, not wall time (jobs run in parallel). Without
``--run`` or ``--wall-seconds``, wall time is estimated from the benchmark files: from the
earliest (modification time - s) to the latest modification time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def number(text) -> float | None:
    """A benchmark cell as float; None for empty, 'NA', '-' and other non-numbers."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_benchmark(path: Path) -> list[dict]:
    """Rows of one Snakemake benchmark TSV (several when the rule uses `repeat`)."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def collect(bench_dir: Path, since: float | None = None) -> dict:
    """Aggregate every benchmark file under ``bench_dir`` by rule stem (its first folder).

    A file counts as one job; its seconds are the mean over repeats. ``since`` (epoch seconds)
    keeps only files written after that time, i.e. by the run just measured.
    """
    rules: dict[str, dict] = {}
    starts, ends = [], []
    for path in sorted(bench_dir.rglob("*.tsv")):
        mtime = path.stat().st_mtime
        if since is not None and mtime < since:
            continue
        rows = read_benchmark(path)
        seconds = [s for s in (number(r.get("s")) for r in rows) if s is not None]
        rss = [m for m in (number(r.get("max_rss")) for r in rows) if m is not None]
        if not seconds:
            continue
        stem = path.relative_to(bench_dir).parts[0]
        entry = rules.setdefault(stem, {"jobs": 0, "s_total": 0.0, "max_rss_mb": None})
        entry["jobs"] += 1
        entry["s_total"] += sum(seconds) / len(seconds)
        if rss:
            entry["max_rss_mb"] = max(rss) if entry["max_rss_mb"] is None else max(entry["max_rss_mb"], max(rss))
        starts.append(mtime - max(seconds))
        ends.append(mtime)
    for entry in rules.values():
        entry["s_total"] = round(entry["s_total"], 2)
    peaks = [e["max_rss_mb"] for e in rules.values() if e["max_rss_mb"] is not None]
    return {
        "rules": dict(sorted(rules.items())),
        "peak_rss_mb": max(peaks) if peaks else None,
        "span_s": round(max(ends) - min(starts), 2) if ends else None,
    }


def run_demo(cores: int, forceall: bool, extra: list[str]) -> float:
    """Run the demo with this interpreter's snakemake from the repository root; wall seconds."""
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores",
        str(cores),
        *(["--forceall"] if forceall else []),
        *extra,
    ]
    print("running:", " ".join(cmd), file=sys.stderr)
    start = time.monotonic()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.monotonic() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the demo (snakemake --cores N) and time it")
    parser.add_argument("--forceall", action="store_true", help="with --run: rerun every job, not just missing ones")
    parser.add_argument("--cores", type=int, default=2, help="with --run: cores for snakemake (default 2)")
    parser.add_argument("--wall-seconds", type=float, help="wall time of an earlier run, measured elsewhere")
    parser.add_argument(
        "--benchmarks-dir",
        type=Path,
        default=REPO / "benchmarks",
        help="folder of benchmark TSV files (default: benchmarks/ of the repository)",
    )
    parser.add_argument("snakemake_args", nargs="*", help="with --run: extra snakemake arguments (after --)")
    args = parser.parse_args(argv)

    since = None
    if args.run:
        since = time.time()
        wall, source = run_demo(args.cores, args.forceall, args.snakemake_args), "measured"
    elif args.wall_seconds is not None:
        wall, source = args.wall_seconds, "given"
    else:
        wall, source = None, "benchmark file times"

    if not args.benchmarks_dir.is_dir():
        parser.error(f"{args.benchmarks_dir} does not exist; run the demo first (make demo) or pass --run")
    stats = collect(args.benchmarks_dir, since=since)
    if not stats["rules"]:
        parser.error(f"no benchmark rows in {args.benchmarks_dir}" + (" written by this run" if since else ""))
    if wall is None:
        wall = stats["span_s"]
    print(
        json.dumps(
            {
                "bench": "demo",
                "wall_s": round(wall, 2),
                "wall_source": source,
                "rules": stats["rules"],
                "peak_rss_mb": stats["peak_rss_mb"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
