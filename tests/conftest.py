"""Shared test helpers: import path for scripts/, the workflow config, and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
BIN = Path(sys.executable).parent
# Files whose module fixtures run the workflow, longest first (their fixtures took 46, 16, 6, 6 and 2 min
# in `make test` on 2 cores, 2026-11-22). They are collected first so that `make test`'s two
# pytest-xdist workers (--dist loadfile) start them at once and fill the waits between their jobs with the short tests.
LONG_FIRST = ("test_workflow.py", "test_report.py", "test_slurm.py", "test_catalogs.py", "test_artefacts.py")


def pytest_collection_modifyitems(items):
    """Order the collected tests by LONG_FIRST, then as collected (the sort is stable)."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


def default_config() -> dict:
    """config/config.yaml as a dict (a fresh copy each call)."""
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def workflow_config() -> dict:
    return default_config()


def layouts_with_bands(bands: dict) -> dict:
    """The default simulation layouts named in ``bands`` ({layout: {instrument: filters}}) with only
    those filters; a layout's MIRI off-field visits take its MIRI filters."""
    layouts = default_config()["simulation"]["layouts"]
    for name, instruments in bands.items():
        for instrument, filters in instruments.items():
            layouts[name][instrument]["filters"] = filters
        if "miri_offfield" in layouts[name]:
            layouts[name]["miri_offfield"]["filters"] = instruments["miri"]
    return {name: layouts[name] for name in bands}


def run_snakemake(workdir: Path, *args: str, configfiles=(), timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` (results/, logs/ go there) and return the finished process."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
    }
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        *map(str, configfiles),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
