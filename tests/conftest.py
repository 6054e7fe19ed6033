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
# Files whose module fixtures run the workflow, longest first (minutes on 2 cores: ~16, ~7, ~6, ~5, ~3).
# They are collected first so that `make test`'s two pytest-xdist workers (--dist loadfile) start
# them at once and fill the waits between their jobs with the short tests.
LONG_FIRST = ("test_workflow.py", "test_report.py", "test_slurm.py", "test_catalogs.py", "test_artefacts.py")


def pytest_collection_modifyitems(items):
    """Order the collected tests by LONG_FIRST, then as collected (the sort is stable)."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


@pytest.fixture(scope="session")
def workflow_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


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
