"""Stage 1/2 of the real-data path (rules/stage12.smk, scripts/run_stage1.py, scripts/run_stage2.py).

Offline, jwst cannot get CRDS reference files, so the pipelines never run to the end here.
Tested instead: the pure step-parameter and association builders, that the default config's
step overrides are accepted by jwst 3.0's pipelines, the persistence hand-over between
exposures with jwst's own PersistenceStep (it needs no reference file), the CRDS guard and
the conversion of CRDS's ``sys.exit`` into a clear error, and the DAG with Snakemake dry runs
on a fake real-data directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asdf
import numpy as np
import pytest
import yaml
from astropy.io import fits

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

import run_stage1  # noqa: E402
import run_stage2  # noqa: E402
from wflib import wfutils  # noqa: E402

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
UNREACHABLE_CRDS = "http://127.0.0.1:9"  # connection refused at once: CRDS gives up with sys.exit

# Fake real data: (name, instrument, detector, filter, pupil, start MJD, observation, dither).
NRC1 = "jw01234001001_02101_00001_nrca1"
NRC2 = "jw01234001001_02101_00002_nrca1"
MIRI_SCI = "jw01234002001_02101_00001_mirimage"
MIRI_OFF1 = "jw01234003001_02101_00001_mirimage"
MIRI_OFF2 = "jw01234003001_02101_00002_mirimage"
MIRI_OFF_LATE = "jw01234004001_02101_00001_mirimage"
REAL_EXPOSURES = [
    (NRC1, "NIRCAM", "NRCA1", "F200W", "CLEAR", 60100.10, "001", 1),
    (NRC2, "NIRCAM", "NRCA1", "F200W", "CLEAR", 60100.11, "001", 2),
    (MIRI_SCI, "MIRI", "MIRIMAGE", "F770W", None, 60100.20, "002", 1),
    (MIRI_OFF1, "MIRI", "MIRIMAGE", "F770W", None, 60100.25, "003", 1),
    (MIRI_OFF2, "MIRI", "MIRIMAGE", "F770W", None, 60100.26, "003", 2),
    (MIRI_OFF_LATE, "MIRI", "MIRIMAGE", "F770W", None, 60102.00, "004", 1),  # off-field visit far in time
]
SHEET_COLUMNS = [
    "target",
    "ra",
    "dec",
    "distance_mpc",
    "input",
    "layout",
    "program",
    "input_level",
    "offfield_obs",
    "notes",
]


# ----------------------------------------------------------------------- fixtures
def minimal_extensions(path):
    """Tiny extensions of an uncal (ramp in DN) or rate (DN/s) file, enough to pass scripts/validate_inputs.py."""
    if path.name.endswith("_uncal.fits"):
        sci = fits.ImageHDU(np.ones((1, 2, 8, 8), np.uint16), name="SCI")
        sci.header["BUNIT"] = "DN"
        return [sci, fits.ImageHDU(np.zeros((8, 8), np.uint32), name="PIXELDQ"),
                fits.ImageHDU(np.zeros((1, 2, 8, 8), np.uint8), name="GROUPDQ")]  # fmt: skip
    sci = fits.ImageHDU(np.ones((8, 8), np.float32), name="SCI")
    sci.header["BUNIT"] = "DN/s"
    extra = [fits.ImageHDU(np.ones((8, 8), np.float32), name=n) for n in ("ERR", "VAR_POISSON", "VAR_RNOISE")]
    return [sci, fits.ImageHDU(np.zeros((8, 8), np.uint32), name="DQ"), *extra]


@pytest.fixture(scope="module")
def workflow_setup(tmp_path_factory):
    """A real target (uncal files: primary headers and tiny arrays) and a tiny simulated one, plus config override."""
    root = tmp_path_factory.mktemp("stage12")
    input_dir, rate_dir = root / "input", root / "rates"
    input_dir.mkdir()
    rate_dir.mkdir()
    rate_names = (NRC1, MIRI_SCI, MIRI_OFF1)
    files = [(input_dir / f"{e[0]}_uncal.fits", e) for e in REAL_EXPOSURES]
    files += [(rate_dir / f"{e[0]}_rate.fits", e) for e in REAL_EXPOSURES if e[0] in rate_names]
    for path, (_name, instrument, detector, filt, pupil, start, obs, dither) in files:
        header = fits.Header()
        header["INSTRUME"] = instrument
        header["DETECTOR"] = detector
        header["FILTER"] = filt
        if pupil:
            header["PUPIL"] = pupil
        header["EXPSTART"] = start
        header["PROGRAM"] = "01234"
        header["OBSERVTN"] = obs
        header["VISIT"] = "001"
        header["EFFEXPTM"] = 100.0
        header["PATT_NUM"] = dither
        fits.HDUList([fits.PrimaryHDU(header=header), *minimal_extensions(path)]).writeto(path)
    rows = [
        ["REALGAL", "10.0", "-5.0", "5.0", str(input_dir), "", "1234", "uncal", "003,004", "fake real data"],
        ["RATEGAL", "11.0", "-5.0", "5.0", str(rate_dir), "", "1234", "rate", "003", "fake real data, rate level"],
        ["SIMTGT", "150.0", "2.0", "", "simulate", "tiny", "9100", "", "", "tiny simulated field"],
    ]
    sheet = root / "targets.tsv"
    sheet.write_text("\n".join("\t".join(r) for r in [SHEET_COLUMNS, *rows]) + "\n")
    override = root / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "targets_sheet": str(sheet),
                # exercise jwst's own off-field subtraction in Image2 (off by default, where
                # corrections.miri_background does it after Stage 2)
                "stage2": {"miri_offfield_background": True},
                "simulation": {
                    "layouts": {
                        "tiny": {
                            "sky": "deep",
                            "pa_v3": 0.0,
                            "nircam": {
                                "filters": ["F200W"],
                                "tiles": [1, 1],
                                "dithers": 2,
                                "exptime": 100.0,
                                "tile_overlap": 0.0,
                            },
                        }
                    }
                },
            }
        )
    )
    workdir = root / "workdir"
    workdir.mkdir()
    return {"root": root, "input": input_dir, "rates": rate_dir, "override": override, "workdir": workdir}


def dry_run(setup, *targets, extra_configs=()):
    """``snakemake -n -p`` in the fixture's workdir; returns (returncode, combined output)."""
    cmd = [
        str(SNAKEMAKE),
        *targets,
        "-n",
        "-p",
        "--cores",
        "1",
        "-d",
        str(setup["workdir"]),
        "-s",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(setup["override"]),
        *map(str, extra_configs),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def parse_jobs(text):
    """Jobs of a dry run: rule, wildcards, inputs and shell command of each."""
    jobs = []
    for chunk in re.split(r"^(?=(?:local)?rule \S+:$)", text, flags=re.M):
        head = re.match(r"(?:local)?rule (\S+):$", chunk, flags=re.M)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", chunk, flags=re.M))
        shell = re.search(r"^Shell command: (.*)$", chunk, flags=re.M)
        wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if "=" in kv)
        jobs.append(
            {
                "rule": head.group(1),
                "wildcards": wildcards,
                "input": [p for p in fields.get("input", "").split(", ") if p],
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


@pytest.fixture(scope="module")
def real_dag(workflow_setup):
    """Dry run asking for the cal files of every science exposure of the real target."""
    science = [NRC1, NRC2, MIRI_SCI]
    code, text = dry_run(workflow_setup, *[f"results/REALGAL/stage2/{n}_cal.fits" for n in science])
    assert code == 0, text
    jobs = parse_jobs(text)
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], {})[job["wildcards"].get("name")] = job
    return by_rule


# ----------------------------------------------------------------------- Stage 1 parameters
def test_stage1_suppress_one_group_always_false():
    config_steps = {"ramp_fit": {"suppress_one_group": True, "algorithm": "OLS_C"}, "jump": {"rejection_threshold": 5}}
    steps = run_stage1.stage1_step_parameters(config_steps, None)
    assert steps["ramp_fit"]["suppress_one_group"] is False
    assert steps["ramp_fit"]["algorithm"] == "OLS_C"
    assert steps["jump"] == {"rejection_threshold": 5}
    assert config_steps["ramp_fit"]["suppress_one_group"] is True  # the config is not modified
    assert run_stage1.stage1_step_parameters({}, None)["ramp_fit"]["suppress_one_group"] is False


def test_stage1_ramp_only_stops_after_the_jump_step():
    """--ramp-only (snowball flagging on real data): jwst's pipeline skips ramp fitting and gain
    scaling and so returns the ramp after the jump step; without it nothing is skipped."""
    from jwst.pipeline import Detector1Pipeline

    ramp_only = Detector1Pipeline(steps=run_stage1.stage1_step_parameters({}, None, None, ramp_only=True))
    assert ramp_only.ramp_fit.skip and ramp_only.gain_scale.skip and not ramp_only.jump.skip
    full = Detector1Pipeline(steps=run_stage1.stage1_step_parameters({}, None, None))
    assert not full.ramp_fit.skip and not full.gain_scale.skip


def test_stage1_persistence_from_previous_exposure():
    config_steps = {
        "persistence": {
            "save_trapsfilled": True,
            "input_trapsfilled": "stale.fits",
            "persistence_array_file": "user.asdf",
            "persistence_time": 1000,
            "skip": False,
        }
    }
    steps = run_stage1.stage1_step_parameters(config_steps, "prev_persistence.asdf", "this_persistence.asdf")
    persistence = steps["persistence"]
    assert persistence["persistence_array_file"] == "prev_persistence.asdf"
    assert persistence["save_persistence"] == "this_persistence.asdf"
    assert persistence["persistence_time"] == 1000 and persistence["skip"] is False
    assert "save_trapsfilled" not in persistence and "input_trapsfilled" not in persistence

    first = run_stage1.stage1_step_parameters(config_steps, None)["persistence"]
    assert "persistence_array_file" not in first  # first exposure on the detector: nothing to carry over


def test_stage1_persistence_switched_on_needs_a_window():
    with pytest.raises(wfutils.InputError, match="persistence_time"):
        run_stage1.stage1_step_parameters({"persistence": {"skip": False}}, None)


def test_default_config_steps_are_accepted_by_jwst(monkeypatch):
    """The overrides in config/config.yaml, as the scripts build them, pass jwst 3.0's parameter validation."""
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    from jwst.pipeline import Detector1Pipeline, Image2Pipeline

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    detector1 = Detector1Pipeline(
        steps=run_stage1.stage1_step_parameters(
            config["stage1"]["steps"], "prev_persistence.asdf", "this_persistence.asdf"
        )
    )
    assert detector1.ramp_fit.suppress_one_group is False
    assert detector1.persistence.persistence_array_file == "prev_persistence.asdf"
    image2 = Image2Pipeline(steps=run_stage2.stage2_step_parameters(config["stage2"]["steps"], True))
    assert image2.resample.skip is True
    assert image2.bkg_subtract.skip is False


def synthetic_ramp(start_mjd, saturated=()):
    """A tiny NIRCam RampModel (1 integration, 4 groups) with SATURATED groups from group 1 at ``saturated`` pixels."""
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    ramp = datamodels.RampModel(data=np.zeros((1, 4, 6, 6), np.float32))
    ramp.meta.instrument.name = "NIRCAM"
    ramp.meta.instrument.detector = "NRCA1"
    ramp.meta.exposure.start_time = start_mjd
    ramp.meta.exposure.group_time = 20.0
    ramp.meta.exposure.integration_time = 80.0
    for y, x in saturated:
        ramp.groupdq[0, 1:, y, x] |= dqflags.group["SATURATED"]
    return ramp


def test_persistence_windows_carry_over_to_the_next_exposure(tmp_path, monkeypatch):
    """jwst's PersistenceStep, set up by stage1_step_parameters, flags the next exposure from the previous record."""
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    from jwst.pipeline import Detector1Pipeline
    from stdatamodels.jwst.datamodels import dqflags

    config_steps = {"persistence": {"skip": False, "persistence_time": 1000}}
    # As run_stage1.main does: jwst writes its windows to a work file, the script adds provenance
    # and writes the persistence product that the next exposure on the detector reads.
    jwst_file, product = tmp_path / "work" / "persistence.asdf", tmp_path / f"{NRC1}_persistence.asdf"
    jwst_file.parent.mkdir()
    first = Detector1Pipeline(steps=run_stage1.stage1_step_parameters(config_steps, None, jwst_file))
    first.persistence.run(synthetic_ramp(60100.0, saturated=[(2, 3)]))
    run_stage1.write_asdf(run_stage1.persistence_record(jwst_file, [f"{NRC1}_uncal.fits"], "abc"), product)
    jwst_file.unlink()

    second = Detector1Pipeline(steps=run_stage1.stage1_step_parameters(config_steps, product, None))
    result = second.persistence.run(synthetic_ramp(60100.0 + 300 / 86400))  # 300 s later, inside the window
    flagged = (result.groupdq[0] & dqflags.group["PERSISTENCE"]) > 0
    assert flagged[:, 2, 3].all()
    assert flagged.sum() == flagged.shape[0]  # only that pixel

    with asdf.open(product) as record:
        assert "NRCA1" in record.tree
        assert record.tree[run_stage1.PROVENANCE_KEY]["WFCFGHSH"] == "abc"
    # Persistence step skipped: the product is an empty record the next exposure can still read.
    assert run_stage1.persistence_record(tmp_path / "absent.asdf", [], None).keys() == {run_stage1.PROVENANCE_KEY}


# ----------------------------------------------------------------------- Stage 2 parameters
def test_stage2_parameters_skip_resample_and_follow_background():
    config_steps = {"resample": {"skip": False}, "bkg_subtract": {"bkg_list": ["x.fits"], "sigma": 2.5}}
    with_bkg = run_stage2.stage2_step_parameters(config_steps, has_background=True)
    assert with_bkg["resample"]["skip"] is True
    assert with_bkg["bkg_subtract"] == {"sigma": 2.5, "skip": False}
    without = run_stage2.stage2_step_parameters({}, has_background=False)
    assert without["resample"]["skip"] is True and without["bkg_subtract"]["skip"] is True
    assert config_steps["resample"]["skip"] is False


@pytest.mark.filterwarnings("ignore:Input association file contains path information")
def test_stage2_association_miri_background_members(tmp_path):
    """Background rates are members of the science product with exptype background, as Image2Pipeline reads them."""
    from jwst.associations.load_as_asn import LoadAsLevel2Asn

    science = str(tmp_path / f"{MIRI_SCI}_rate.fits")
    backgrounds = [str(tmp_path / f"{MIRI_OFF1}_rate.fits"), str(tmp_path / f"{MIRI_OFF2}_rate.fits")]
    asn = run_stage2.stage2_association(science, backgrounds + [science], MIRI_SCI)
    assert len(asn["products"]) == 1 and asn["products"][0]["name"] == MIRI_SCI
    members = asn["products"][0]["members"]
    assert members[0] == {"expname": science, "exptype": "science"}
    assert [(m["expname"], m["exptype"]) for m in members[1:]] == [(b, "background") for b in backgrounds]

    path = tmp_path / "asn.json"
    path.write_text(json.dumps(asn))
    loaded = LoadAsLevel2Asn.load(str(path))
    assert len(loaded["products"]) == 1
    assert [m["exptype"] for m in loaded["products"][0]["members"]] == ["science", "background", "background"]


def test_stage2_association_nircam_has_no_background():
    asn = run_stage2.stage2_association(f"/data/{NRC1}_rate.fits", [], NRC1)
    assert asn["products"][0]["members"] == [{"expname": f"/data/{NRC1}_rate.fits", "exptype": "science"}]
    assert run_stage2.product_name_of(f"/data/{NRC1}_rate.fits") == NRC1


# ----------------------------------------------------------------------- CRDS guard
def test_require_crds_needs_crds_path(monkeypatch):
    monkeypatch.delenv("CRDS_PATH", raising=False)
    with pytest.raises(wfutils.InputError) as err:
        run_stage1.require_crds("jwst_1413.pmap", "https://jwst-crds.stsci.edu")
    message = str(err.value)
    assert "CRDS_PATH" in message and "CRDS_SERVER_URL" in message and "jwst_1413.pmap" in message


def test_require_crds_pins_context(monkeypatch, tmp_path):
    monkeypatch.setenv("CRDS_PATH", str(tmp_path))
    for name in ("CRDS_SERVER_URL", "CRDS_CONTEXT", "CRDS_OBSERVATORY", "STPIPE_DISABLE_CRDS_STEPPARS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(wfutils.InputError, match="CRDS_SERVER_URL is not set"):
        run_stage1.require_crds("jwst_1413.pmap")  # offline and the cache lacks the context
    run_stage1.require_crds("jwst_1413.pmap", "https://jwst-crds.stsci.edu")
    assert os.environ["CRDS_CONTEXT"] == "jwst_1413.pmap"
    assert os.environ["CRDS_SERVER_URL"] == "https://jwst-crds.stsci.edu"
    assert os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] == "true"


def start_script(script, args, env_update, cwd):
    """Start a stage script in a clean CRDS environment (plus ``env_update``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(env_update)
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc):
    """Wait for a started script; returns (returncode, stderr)."""
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def test_stage1_cli_without_crds_path_fails_clearly(tmp_path):
    uncal = tmp_path / f"{NRC1}_uncal.fits"
    fits.PrimaryHDU().writeto(uncal)
    code, stderr = finish(
        start_script(
            "run_stage1.py", ["--out", "rate.fits", "--crds-context", "jwst_1413.pmap", str(uncal)], {}, tmp_path
        )
    )
    assert code == 2
    assert "set CRDS_PATH" in stderr and "jwst_1413.pmap" in stderr


def test_crds_exit_becomes_a_clear_error(tmp_path):
    """With CRDS unreachable jwst calls sys.exit; the scripts report the file and leave no output behind."""
    from stdatamodels.jwst import datamodels

    ramp = synthetic_ramp(60100.0)
    ramp.meta.instrument.filter = "F200W"
    ramp.meta.exposure.type = "NRC_IMAGE"
    ramp.meta.observation.date = "2024-01-01"
    ramp.meta.observation.time = "00:00:00"
    uncal = tmp_path / f"{NRC1}_uncal.fits"
    ramp.save(uncal)
    rate = datamodels.ImageModel(data=np.zeros((6, 6), np.float32))
    rate.meta.instrument.name = "MIRI"
    rate.meta.instrument.detector = "MIRIMAGE"
    rate.meta.instrument.filter = "F770W"
    rate.meta.exposure.type = "MIR_IMAGE"
    rate.meta.observation.date = "2024-01-01"
    rate.meta.observation.time = "00:00:00"
    rate.save(tmp_path / f"{MIRI_SCI}_rate.fits")
    rate.save(tmp_path / f"{MIRI_OFF1}_rate.fits")
    crds_env = {"CRDS_PATH": str(tmp_path / "crds"), "CRDS_SERVER_URL": UNREACHABLE_CRDS}
    (tmp_path / "crds").mkdir()

    out = tmp_path / "out"
    # Both scripts at once (each spends its time importing jwst).
    stage1 = start_script(
        "run_stage1.py",
        [
            "--out",
            str(out / "rate.fits"),
            "--persistence-out",
            str(out / "persistence.asdf"),
            "--crds-context",
            "jwst_1413.pmap",
            str(uncal),
        ],
        crds_env,
        tmp_path,
    )
    stage2 = start_script(
        "run_stage2.py",
        [
            str(tmp_path / f"{MIRI_SCI}_rate.fits"),
            "--out",
            str(out / "cal.fits"),
            "--crds-context",
            "jwst_1413.pmap",
            "--background",
            str(tmp_path / f"{MIRI_OFF1}_rate.fits"),
        ],
        crds_env,
        tmp_path,
    )
    code, stderr = finish(stage1)
    assert code == 2, stderr
    assert f"{uncal}: CRDS could not provide the reference files" in stderr
    code, stderr = finish(stage2)
    assert code == 2, stderr
    assert f"{MIRI_SCI}_rate.fits: CRDS could not provide the reference files" in stderr
    assert list(out.iterdir()) == []  # no partial product, no leftover temporary directory


# ----------------------------------------------------------------------- the DAG (dry runs)
def test_dag_has_stage1_and_stage2_for_every_exposure(real_dag):
    assert set(real_dag["stage2"]) == {NRC1, NRC2, MIRI_SCI}
    # Off-field exposures go through Stage 1 (they are background members), the far visit does not.
    # NIRCam (snowball flagging on: the target has no layout that switches it off) stops Stage 1
    # after the jump step; the snowball job refits its ramp.
    assert set(real_dag["stage1"]) == {MIRI_SCI, MIRI_OFF1, MIRI_OFF2}
    assert set(real_dag["stage1_jump"]) == set(real_dag["snowball_flag_real"]) == {NRC1, NRC2}
    for name, job in {**real_dag["stage1"], **real_dag["stage1_jump"]}.items():
        assert "run_stage1.py" in job["shell"]
        assert any(p.endswith(f"{name}_uncal.fits") for p in job["input"])
        assert "--crds-context jwst_1413.pmap" in job["shell"]
        assert ("--ramp-only" in job["shell"]) == (name in (NRC1, NRC2))
    for name, job in real_dag["snowball_flag_real"].items():
        assert job["input"] == [f"results/REALGAL/stage1_jump/{name}_ramp.fits"]
        assert "snowball_flag.py" in job["shell"] and "--gain crds --readnoise crds" in job["shell"]
    for name, job in real_dag["stage2"].items():
        assert "run_stage2.py" in job["shell"]
        stage = "stage1_snowball" if name in (NRC1, NRC2) else "stage1"
        assert f"results/REALGAL/{stage}/{name}_rate.fits" in job["input"]


def test_dag_persistence_follows_time_order(real_dag):
    jump, stage1 = real_dag["stage1_jump"], real_dag["stage1"]
    previous = f"results/REALGAL/stage1_jump/{NRC1}_persistence.asdf"
    assert previous in jump[NRC2]["input"]
    assert f"--persistence-in {previous}" in jump[NRC2]["shell"]
    assert not any(p.endswith("_persistence.asdf") for p in jump[NRC1]["input"])
    assert "--persistence-in" not in jump[NRC1]["shell"]
    # MIRI: the science exposure precedes the off-field visit on the same detector.
    assert f"results/REALGAL/stage1/{MIRI_SCI}_persistence.asdf" in stage1[MIRI_OFF1]["input"]


def test_dag_without_snowball_flagging_runs_the_whole_stage1(workflow_setup, tmp_path):
    """corrections.snowball_flag switched off for the target: NIRCam's Stage 1 fits its own ramps."""
    off = tmp_path / "off.yaml"
    off.write_text(
        yaml.safe_dump({"corrections": {"snowball_flag": {"overrides": [{"targets": ["REALGAL"], "enabled": False}]}}})
    )
    code, text = dry_run(workflow_setup, f"results/REALGAL/stage2/{NRC2}_cal.fits", extra_configs=[off])
    assert code == 0, text
    jobs = parse_jobs(text)
    assert {job["rule"] for job in jobs} == {"stage1", "stage2"}
    stage2 = next(job for job in jobs if job["rule"] == "stage2")
    assert stage2["input"] == [f"results/REALGAL/stage1/{NRC2}_rate.fits"]


def test_dag_miri_background_is_the_closest_offfield_visit(real_dag):
    miri = real_dag["stage2"][MIRI_SCI]
    backgrounds = [f"results/REALGAL/stage1/{n}_rate.fits" for n in (MIRI_OFF1, MIRI_OFF2)]
    assert all(b in miri["input"] for b in backgrounds)
    assert not any(MIRI_OFF_LATE in p for p in miri["input"])
    assert miri["shell"].endswith("--background " + " ".join(backgrounds))
    nircam = real_dag["stage2"][NRC1]
    assert nircam["input"] == [f"results/REALGAL/stage1_snowball/{NRC1}_rate.fits"]
    assert "--background" not in nircam["shell"]


def test_rate_level_target_starts_at_stage2(workflow_setup):
    """input_level rate: Stage 2 reads the given rates (background too), no Stage 1 job."""
    rates = workflow_setup["rates"]
    code, text = dry_run(workflow_setup, *[f"results/RATEGAL/stage2/{n}_cal.fits" for n in (NRC1, MIRI_SCI)])
    assert code == 0, text
    assert {job["rule"] for job in parse_jobs(text)} == {"stage2"}
    jobs = {job["wildcards"]["name"]: job for job in parse_jobs(text)}
    assert jobs[NRC1]["input"] == [str(rates / f"{NRC1}_rate.fits")]
    assert jobs[MIRI_SCI]["input"] == [str(rates / f"{MIRI_SCI}_rate.fits"), str(rates / f"{MIRI_OFF1}_rate.fits")]
    assert jobs[MIRI_SCI]["shell"].endswith(f"--background {rates / MIRI_OFF1}_rate.fits")


def test_simulated_target_never_schedules_stage12(workflow_setup):
    code, text = dry_run(workflow_setup, "results/SIMTGT/mosaic/SIMTGT_F200W_i2d.fits")
    assert code == 0, text
    rules = {job["rule"] for job in parse_jobs(text)}
    assert rules and not rules & {"stage1", "stage2"}
    assert any(r.startswith("simulate_exposures") for r in rules)

    code, text = dry_run(workflow_setup, "results/SIMTGT/stage1/jw09100001001_02101_00001_nrca1_rate.fits")
    assert code != 0 and "SIMTGT is simulated" in text
