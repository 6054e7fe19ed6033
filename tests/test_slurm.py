"""`--profile slurm` on a real one-node Slurm cluster (issue 8).

tests/slurm/cluster-up.sh installs and starts munge, slurmctld and slurmd on this machine; the
small demo (DEEPFIELD1, one band, 1/16 scale) then runs three times at once:

- ``snakemake --profile profiles/slurm``: every job through sbatch;
- ``snakemake --cores 2``: the same configuration locally, for the comparison of products;
- ``make install-profile`` (into a temporary HOME) then ``snakemake --profile slurm`` for the sky
  model alone, whose first attempt asks Slurm for 100 MB: Slurm kills it at that limit and the
  profile's ``retries`` resubmits it with the rule's 2 GB.

Skipped, with the reason, when the cluster cannot be set up (not root, packages not installable,
daemons not coming up, another Slurm in the way). The daemons are stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN, REPO

pytestmark = pytest.mark.workflow

SLURM_SCRIPTS = REPO / "tests" / "slurm"
TARGET, BAND = "DEEPFIELD1", "F444W"
MOSAIC = f"results/{TARGET}/mosaic/{TARGET}_{BAND}_i2d.fits"
SKY = f"results/{TARGET}/truth/sky_truth.json"
# Every Slurm job starts a Snakemake of its own (~4 s); a stuck status loop must not hang CI.
RUN_TIMEOUT_S = 1200
# The profile waits 20 s before its first squeue (kind to a shared controller); 5 s here, so
# that a chain of 13 short jobs does not spend most of its time waiting for the next check.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "5")
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
JOB_BLOCK = re.compile(r"^ *(?:rule|checkpoint) (\w+):\n(?: +\w+: .*\n)*? +resources: (.*)$", re.MULTILINE)


# ----------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster; stopped (only the daemons this test started) at the end."""
    if os.geteuid() != 0:
        pytest.skip("Slurm test needs root: tests/slurm/cluster-up.sh installs munge/slurm and starts their daemons")
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "JWST_SLURM_TEST_DIR": str(state)}
    up = subprocess.run([str(SLURM_SCRIPTS / "cluster-up.sh")], env=env, capture_output=True, text=True, timeout=900)
    message = (up.stdout + up.stderr).strip()
    if up.returncode in (2, 3, 4, 5):  # not root, apt failed, daemons down, a foreign Slurm in the way
        down(env)
        pytest.skip(f"no Slurm cluster (cluster-up.sh exit {up.returncode}): {message[-1500:]}")
    assert up.returncode == 0, message
    print(message)
    recorded = (state / "pids").read_text().split()
    try:
        yield state
    finally:
        down(env)
        pids = [int(p) for p in recorded[1::2]]
        left = [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not left, f"cluster-down.sh left daemons running: {left}"
        assert not list_processes("slurmstepd"), "slurmstepd processes left after cluster-down.sh"


def down(env):
    result = subprocess.run(
        [str(SLURM_SCRIPTS / "cluster-down.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    print(result.stdout + result.stderr)


def list_processes(name):
    return [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and read_comm(p) == name]


def read_comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def scontrol_job(jobid: str) -> dict:
    """`scontrol show job` as a dictionary (MinJobAge of the test cluster keeps finished jobs an hour)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True, check=True)
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


# ----------------------------------------------------------------------------- the runs
def write_config(workdir: Path) -> Path:
    """One target, one band, 1/16 scale; steps that need more sources than that have are off, and
    so are the products after the mosaic (each rule is then submitted once)."""
    override = {
        "targets": [TARGET],
        "simulation": {"scale": 0.0625, "layouts": {"ceers_deep": {"nircam": {"filters": [BAND]}}}},
        "anchoring": {"enabled": False},
        # the Slurm path, not the science: no PSF matching, finishing, report (tested elsewhere)
        "psf": {"enabled": False},
        "finishing": {part: {"enabled": False} for part in ("background", "depth", "release")},
        "report": {"enabled": False},
        "corrections": {
            step: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for step in ("align_relative", "align_absolute")
        },
    }
    path = workdir / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def snakemake_env(**extra) -> dict:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
        # site values of profiles/slurm/site.env.example: empty = the plugin's choice
        "JWST_SLURM_ACCOUNT": "",
        "JWST_SLURM_PARTITION": "",
        "JWST_SLURM_BIGMEM_PARTITION": "",
        **extra,
    }
    env.pop("XDG_CONFIG_HOME", None)  # `--profile slurm` must be found in $HOME/.config/snakemake
    return env


def start(workdir: Path, *args: str, env: dict, targets=()) -> subprocess.Popen:
    """Snakemake in ``workdir`` (its results/, logs/ and Slurm logs go there) under `timeout -k`."""
    config = write_config(workdir)
    cmd = ["timeout", "-k", "30", str(RUN_TIMEOUT_S), str(BIN / "snakemake"), "-s", str(REPO / "Snakefile")]
    cmd += list(targets)  # before the options that take several values
    cmd += ["--configfile", str(REPO / "config" / "config.yaml"), str(config), *args]
    log = open(workdir / "snakemake.out", "w")
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, workdir: Path) -> str:
    proc.wait(timeout=RUN_TIMEOUT_S + 60)
    output = (workdir / "snakemake.out").read_text()
    assert proc.returncode != 124, f"snakemake in {workdir} timed out:\n{output[-3000:]}"
    assert proc.returncode == 0, f"snakemake in {workdir} failed ({proc.returncode}):\n{output[-5000:]}"
    return output


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The three runs, started together (the Slurm runs spend most of their time waiting)."""
    slurm_dir, local_dir, retry_dir = (tmp_path_factory.mktemp(n) for n in ("slurm", "local", "retry"))
    home = tmp_path_factory.mktemp("home")
    install = subprocess.run(
        ["make", "-C", str(REPO), "install-profile"], env=snakemake_env(HOME=str(home)), capture_output=True, text=True
    )
    assert install.returncode == 0, install.stdout + install.stderr
    t0 = time.monotonic()
    procs = {
        "slurm": start(slurm_dir, "--profile", str(REPO / "profiles" / "slurm"), *FAST_STATUS, env=snakemake_env()),
        "local": start(local_dir, "--cores", "2", env=snakemake_env()),
        "retry": start(
            retry_dir,
            "--profile",
            "slurm",
            *FAST_STATUS,
            "--set-resources",
            "simulate_sky:mem_mb=100 if attempt == 1 else 2000",
            targets=[SKY],
            env=snakemake_env(HOME=str(home)),
        ),
    }
    dirs = {"slurm": slurm_dir, "local": local_dir, "retry": retry_dir}
    outputs = {name: finish(proc, dirs[name]) for name, proc in procs.items()}
    print(json.dumps({"slurm_test_runs_wall_s": round(time.monotonic() - t0, 1)}))
    return {
        "slurm": (slurm_dir, outputs["slurm"]),
        "local": (local_dir, outputs["local"]),
        "retry": (retry_dir, outputs["retry"]),
        "home": home,
    }


def submissions(output: str) -> list[tuple[str, str, str]]:
    """(Snakemake job or group id, Slurm job id, Slurm log path) of every sbatch, in order."""
    return SUBMITTED.findall(output)


def rule_resources(output: str) -> dict[str, dict]:
    """Rule -> resources of its job, from the job blocks Snakemake prints (also those inside a
    group job's listing); in this one-band DAG every rule has one job."""
    found = {}
    for rule, resources in JOB_BLOCK.findall(output):
        found[rule] = dict(kv.split("=", 1) for kv in resources.split(", ") if "=" in kv)
    return found


def rule_of_comment(comment: str, rules) -> str:
    """Rule of a Slurm job from the plugin's --comment: rule_<rule>[_wildcards_...] for a job,
    rule_<group>_<rule> for a group job (one rule per group here)."""
    for rule in sorted(rules, key=len, reverse=True):
        if comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards_") or comment.endswith(f"_{rule}"):
            return rule
    raise AssertionError(f"no rule of this run matches the Slurm comment {comment!r}")


# ----------------------------------------------------------------------------- the tests
def test_profile_is_installed_as_a_link(runs):
    link = runs["home"] / ".config" / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles" / "slurm").resolve()


def test_every_job_went_through_sbatch_with_its_memory(runs):
    workdir, output = runs["slurm"]
    submitted = submissions(output)
    resources = rule_resources(output)
    rows = []
    for _, slurm_id, log in submitted:
        record = scontrol_job(slurm_id)
        rule = rule_of_comment(record["Comment"], resources)
        mem_mb, minutes = int(resources[rule]["mem_mb"]), int(resources[rule]["runtime"])
        rows.append((slurm_id, rule, str(mem_mb), record["MinMemoryNode"], record["JobState"]))
        assert record["JobState"] == "COMPLETED", f"Slurm job {slurm_id} ({rule}): {record['JobState']}"
        assert record["MinMemoryNode"] == f"{mem_mb}M", f"{rule}: mem_mb {mem_mb} -> {record['MinMemoryNode']}"
        assert record["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00", f"{rule}: runtime {minutes}"
        assert Path(log).is_relative_to(workdir / "logs" / "slurm") and Path(log).stat().st_size > 0, log
    print("Slurm job id, rule, mem_mb asked by Snakemake, MinMemoryNode in Slurm, state")
    print("\n".join(" ".join(row) for row in rows))
    # every job of the DAG went through sbatch, each once; only the local `all` did not
    rules = [row[1] for row in rows]
    assert sorted(rules) == sorted(set(resources) - {"all"}) and len(rules) >= 10, rules
    mems = {rule: int(mem) for _, rule, mem, _, _ in rows}
    # the profile's set-resources replaced the simulator's own 1.5 GB ...
    assert mems[f"simulate_exposures_{TARGET}_{BAND}"] == 3000
    # ... and its groups packed the tile jobs (one tile per band at this scale)
    grouped = {rule for rule, (_, _, log) in zip(rules, submitted, strict=True) if "/group_" in log}
    assert {"median_tile", "drizzle_tile"} <= grouped, grouped
    assert len(set(mems.values())) >= 5, mems


def test_slurm_products_equal_local_products(runs):
    from astropy.io import fits

    slurm_dir, _ = runs["slurm"]
    local_dir, _ = runs["local"]
    local_files = sorted(p.relative_to(local_dir) for p in (local_dir / "results").rglob("*.fits"))
    slurm_files = sorted(p.relative_to(slurm_dir) for p in (slurm_dir / "results").rglob("*.fits"))
    assert slurm_files == local_files and Path(MOSAIC) in local_files
    diffs = {}
    for rel in local_files:
        with fits.open(local_dir / rel) as a, fits.open(slurm_dir / rel) as b:
            assert [h.name for h in a] == [h.name for h in b], rel
            for ha, hb in zip(a, b, strict=True):
                if ha.data is None or not hasattr(ha.data, "dtype") or ha.data.dtype.names:
                    continue
                x, y = np.asarray(ha.data, float), np.asarray(hb.data, float)
                assert x.shape == y.shape and np.array_equal(np.isnan(x), np.isnan(y)), f"{rel}[{ha.name}]"
                finite = np.isfinite(x)
                diffs[f"{rel}[{ha.name}]"] = float(np.max(np.abs(x[finite] - y[finite]), initial=0.0))
    mosaic = {k.split("[")[1][:-1]: v for k, v in diffs.items() if k.startswith(MOSAIC)}
    print(
        json.dumps(
            {
                "files": len(local_files),
                "arrays": len(diffs),
                "max_abs_diff_all": max(diffs.values()),
                "mosaic_max_abs_diff": mosaic,
            }
        )
    )
    assert {"SCI", "ERR", "WHT", "CON"} <= set(mosaic)
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


def test_job_killed_by_slurm_is_retried(runs):
    retry_dir, output = runs["retry"]
    local_dir, _ = runs["local"]
    submitted = submissions(output)
    assert len(submitted) == 2, output[-3000:]
    (first_job, first_id, first_log), (second_job, second_id, _) = submitted
    first, second = scontrol_job(first_id), scontrol_job(second_id)
    assert first["MinMemoryNode"] == "100M" and first["JobState"] in ("FAILED", "OUT_OF_MEMORY"), first
    assert "exceeded memory limit" in Path(first_log).read_text().lower()
    assert second["MinMemoryNode"] == "2000M" and second["JobState"] == "COMPLETED", second
    assert f"SLURM-job '{first_id}' failed" in output
    assert "1 of 1 steps (100%) done" in output
    # the retried job made the same sky as the local run
    assert json.loads((retry_dir / SKY).read_text()) == json.loads((local_dir / SKY).read_text())
    print(f"killed: Slurm job {first_id} (100 MB, {first['JobState']}); retried as {second_id} (2000 MB, COMPLETED)")


def test_no_snakemake_left_running(runs):
    """Every run finished; no Snakemake of these runs is still waiting on Slurm."""
    for name in ("slurm", "retry"):
        workdir, _ = runs[name]
        assert not any((workdir / ".snakemake" / "locks").glob("*")), f"{name}: lock files left"
    assert shutil.which("squeue")
    queue = subprocess.run(["squeue", "-h", "-t", "PENDING,RUNNING"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == "", queue.stdout
