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
