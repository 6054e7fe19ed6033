"""Bad inputs are rejected early, with a message naming the file and the fault (issue 13).

A corpus of broken exposures is made from valid simulator files (1/16 scale, rendered once per
session): each kind is checked by ``scripts/validate_inputs.py`` next to the valid files, in
`stop` mode (an error naming the file and the fault) and in `skip` mode (that file dropped, the
others valid). The workflow-level cases -- a real target's bad file stops Snakemake before any
job or is skipped and reported, a target with no exposures, a bad `validation` value -- are
Snakemake dry runs plus one small run of the validation jobs.

Kinds covered elsewhere and not repeated here: duplicated target in the sheet and an out-of-range
config value (tests/test_config.py), a reference catalogue with wrong columns or off the field
(tests/test_astrometry.py::test_wrong_catalog_columns_and_catalog_off_the_field), a wide-field
anchor image that does not overlap (tests/test_anchor.py::test_cli_uses_the_proxy_card_and_reports_no_overlap).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import BIN, REPO

import validate_inputs as vi
from wflib import wfutils

SCALE = 0.0625
TARGET = {"target": "CORPUS", "ra": 214.825, "dec": 52.825, "layout": "corpus", "program": 9005, "distance_mpc": None}
BAND = "F277W"


@pytest.fixture(scope="session")
def valid_files(tmp_path_factory, workflow_config):
    """Six valid F277W cal exposures (1 tile, 3 dithers, 2 LW detectors) of a sparse field."""
    import simulate_survey

    sim = copy.deepcopy(workflow_config["simulation"])
    sim["scale"] = SCALE
    sim["layouts"]["corpus"] = {
        "sky": "deep",
        "pa_v3": 130.0,
        "nircam": {"filters": [BAND], "tiles": [1, 1], "dithers": 3, "exptime": 1000.0, "tile_overlap": 0.0},
    }
    root = tmp_path_factory.mktemp("corpus_sim")
    simulate_survey.simulate_target(root, sim, TARGET, [BAND])
    files = sorted((root / "cal").glob("*_cal.fits"))
    assert len(files) == 6
    return files


# ----------------------------------------------------------------------------- the corpus
def _edit(src, dst, edit):
    shutil.copyfile(src, dst)
    with fits.open(dst, mode="update") as hdul:
        edit(hdul)


def _drop(ext):
    def edit(hdul):
        del hdul[ext]

    return edit


def _set_header(ext, key, value):
    def edit(hdul):
        hdul[ext].header[key] = value

    return edit


def _fill(value):
    def edit(hdul):
        hdul["SCI"].data[...] = value

    return edit


def _shrink_err(hdul):
    hdul["ERR"].data = hdul["ERR"].data[:-8]


def _del_key(key):
    def edit(hdul):
        del hdul[0].header[key]

    return edit


def truncated(src, dst):
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.6)])


def not_fits(src, dst):
    dst.write_text("<html><body>502 Bad Gateway</body></html>\n")


def wcs_nan(src, dst):
    """The gwcs gets a NaN shift in front of the detector -> v2v3 transform."""
    from astropy.modeling.models import Shift
    from stdatamodels.jwst import datamodels

    with datamodels.open(str(src)) as model:
        wcs = model.meta.wcs
        wcs.set_transform("detector", "v2v3", (Shift(np.nan) & Shift(0.0)) | wcs.get_transform("detector", "v2v3"))
        model.meta.wcs = wcs
        model.save(str(dst))


def duplicate(src, dst):
    shutil.copyfile(src, dst)  # another name, same exposure in the header


# kind -> (how to make it from a valid file, its own file name or None (replaces the first valid file),
#          input level, expected fault text)
CORPUS = {
    "truncated FITS": (truncated, None, "cal", "truncated"),
    "not a FITS file": (not_fits, None, "cal", "not a FITS file"),
    "missing SCI": (lambda s, d: _edit(s, d, _drop("SCI")), None, "cal", "missing extension(s) SCI"),
    "missing ERR": (lambda s, d: _edit(s, d, _drop("ERR")), None, "cal", "missing extension(s) ERR"),
    "missing DQ": (lambda s, d: _edit(s, d, _drop("DQ")), None, "cal", "missing extension(s) DQ"),
    "missing VAR_FLAT": (lambda s, d: _edit(s, d, _drop("VAR_FLAT")), None, "cal", "missing extension(s) VAR_FLAT"),
    "DN/s where MJy/sr is expected": (
        lambda s, d: _edit(s, d, _set_header("SCI", "BUNIT", "DN/s")),
        None,
        "cal",
        "SCI unit is 'DN/s', expected 'MJy/sr' at input level cal (a rate-level file given as cal?)",
    ),
    "MJy/sr at rate level": (
        lambda s, d: shutil.copyfile(s, d),  # a cal file named as a rate file
        None,
        "rate",
        "SCI unit is 'MJy/sr', expected 'DN/s' at input level rate (a cal-level file given as rate?)",
    ),
    "all-NaN data": (lambda s, d: _edit(s, d, _fill(np.nan)), None, "cal", "SCI is all NaN"),
    "all-zero data": (lambda s, d: _edit(s, d, _fill(0.0)), None, "cal", "SCI is all zero"),
    "WCS that does not evaluate": (wcs_nan, None, "cal", "WCS does not evaluate"),
    "two files claiming one exposure": (
        duplicate,
        "{exposure}99_cal.fits",  # another name, the header of the first valid file
        "cal",
        "duplicate exposure: claims exposure {exposure}, as does {folder}/{exposure}_cal.fits",
    ),
    "filter not in the config": (
        lambda s, d: _edit(s, d, _set_header(0, "FILTER", "F999W")),
        None,
        "cal",
        "filter 'F999W' is not a NIRCam or MIRI imaging filter",
    ),
    "instrument not in the config": (
        lambda s, d: _edit(s, d, _set_header(0, "INSTRUME", "NIRISS")),
        None,
        "cal",
        "instrument 'NIRISS' is not processed by this workflow",
    ),
    "mixed instruments in one group": (
        lambda s, d: _edit(s, d, _set_header(0, "INSTRUME", "MIRI")),
        None,
        "cal",
        "mixed instruments in the F277W group: this file is MIRI, F277W is a NIRCAM filter",
    ),
    "extensions of different shapes": (lambda s, d: _edit(s, d, _shrink_err), None, "cal", "ERR shape"),
    "primary header without FILTER": (
        lambda s, d: _edit(s, d, _del_key("FILTER")),
        None,
        "cal",
        "primary header lacks FILTER",
    ),
}


def corpus_dir(valid_files, tmp_path, kind):
    """The valid files plus one bad file of ``kind`` (replacing the first valid file unless it has
    a name of its own). At rate level the valid files become rate-like (DN/s, ``_rate.fits``).
    Returns (directory, bad file, level)."""
    make, name, level, _ = CORPUS[kind]
    suffix = f"_{level}.fits"
    folder = tmp_path / kind.replace(" ", "_").replace("/", "_")
    folder.mkdir()
    for path in valid_files:
        copy = folder / path.name.replace("_cal.fits", suffix)
        if level == "rate":
            _edit(path, copy, _set_header("SCI", "BUNIT", "DN/s"))
        else:
            shutil.copyfile(path, copy)
    exposure = valid_files[0].name.removesuffix("_cal.fits")
    bad = folder / (name.format(exposure=exposure) if name else f"{exposure}{suffix}")
    bad.unlink(missing_ok=True)
    make(valid_files[0], bad)
    return folder, bad, level


def corpus_inputs(folder, level):
    return sorted(folder.glob(f"jw*_{level}.fits"))


def test_the_corpus_has_at_least_15_kinds():
    assert len(CORPUS) >= 15


def test_valid_files_pass(valid_files):
    good, skipped = vi.validate(valid_files, "cal", "stop")
    assert len(good) == 6 and not skipped


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_each_bad_kind_stops_with_the_file_and_fault_and_skip_keeps_the_others(valid_files, tmp_path, kind):
    folder, bad, level = corpus_dir(valid_files, tmp_path, kind)
    expected = CORPUS[kind][3].format(exposure=valid_files[0].name.removesuffix("_cal.fits"), folder=folder)
    inputs = corpus_inputs(folder, level)
    before = {p.name: p.read_bytes() for p in inputs}
    with pytest.raises(wfutils.InputError) as stop:
        vi.validate(inputs, level, "stop")
    message = str(stop.value)
    assert f"{bad}: " in message and expected in message, message
    assert "1 of" in message, f"only the bad file may be rejected:\n{message}"
    good, skipped = vi.validate(inputs, level, "skip")
    assert [c.path for c in skipped] == [str(bad)]
    assert any(expected in f for f in skipped[0].faults)
    assert sorted(c.path for c in good) == sorted(str(p) for p in inputs if p != bad)
    assert {p.name: p.read_bytes() for p in inputs} == before, "validation modified an input"


def test_a_channel_missing_from_the_config_is_named(valid_files):
    with pytest.raises(wfutils.InputError, match=r"_cal.fits: filter F277W \(NRC_LW\) has no pixel scale in config"):
        vi.validate(valid_files, "cal", "stop", channels=("NRC_SW", "MIRI"))


def test_the_command_line_names_the_file_and_exits_2(valid_files, tmp_path):
    folder, bad, _ = corpus_dir(valid_files, tmp_path, "all-NaN data")
    report = tmp_path / "report.tsv"
    result = subprocess.run(
        [str(BIN / "python"), str(REPO / "scripts" / "validate_inputs.py"), "--report", str(report),
         *map(str, corpus_inputs(folder, "cal"))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{bad}: SCI is all NaN" in result.stderr
    assert not report.exists()


def test_exposure_without_overlap_is_named_by_level_matching(tmp_path, capsys):
    """An exposure that overlaps no other keeps its level; the log names it (the others are matched)."""
    from test_level_match import cli_images, galaxy_sky, run_cli

    rng = np.random.default_rng(21)
    boxes = [(0, 0, 60, 70), (5, 20, 60, 70), (110, 150, 40, 40)]
    paths = cli_images(tmp_path, galaxy_sky(), boxes, [0.1, -0.1, 0.3], rng)
    report = run_cli(tmp_path, paths, {"stages": ["mosaic"]})
    assert f"{paths[2].name} overlaps no other image; its level is left unmatched" in capsys.readouterr().err
    offsets = [im["offset_mjysr"] for im in report["images"]]
    assert offsets[2] == 0.0
    assert offsets[0] - offsets[1] == pytest.approx(0.2, abs=0.01)


# ----------------------------------------------------------------------------- through the workflow
SHEET_HEADER = "target\tra\tdec\tdistance_mpc\tinput\tlayout\tprogram\tinput_level\tofffield_obs\tnotes"


def real_target_setup(tmp_path, folder, on_bad="stop", extra=None):
    """A work directory whose sheet has one real target reading ``folder`` at cal level."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    sheet = workdir / "targets.tsv"
    row = f"REAL\t{TARGET['ra']}\t{TARGET['dec']}\t\t{folder}\t\t9005\tcal\t\tcorpus"
    sheet.write_text(f"{SHEET_HEADER}\n{row}\n")
    override = {
        "targets_sheet": str(sheet),
        "validation": {"on_bad_exposure": on_bad},
        "anchoring": {"enabled": False},
        "corrections": {
            step: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for step in ("align_relative", "align_absolute")
        },
        **(extra or {}),
    }
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    return workdir


def snakemake(workdir, *args):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
    }
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--nolock",
           "--configfile", str(REPO / "config" / "config.yaml"), str(workdir / "override.yaml"), *args]  # fmt: skip
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env)
    return result.returncode, result.stdout


@pytest.fixture(scope="module")
def real_corpus(valid_files, tmp_path_factory):
    """A real target's input folder: the six valid files, a truncated one and one that is not FITS."""
    folder = tmp_path_factory.mktemp("real_corpus")
    for path in valid_files:
        shutil.copyfile(path, folder / path.name)
    bad = {
        "truncated": folder / "jw09005001001_02103_00004_nrcalong_cal.fits",
        "html": folder / "jw09005001001_02103_00005_nrcalong_cal.fits",
    }
    truncated(valid_files[0], bad["truncated"])
    not_fits(valid_files[0], bad["html"])
    return folder, bad


def test_workflow_stops_before_any_job_naming_each_bad_file(real_corpus, tmp_path):
    folder, bad = real_corpus
    workdir = real_target_setup(tmp_path, folder, "stop")
    code, out = snakemake(workdir, "--cores", "1")
    assert code != 0
    assert "2 of 8 exposure file(s) failed validation" in out, out[-3000:]
    assert f"{bad['truncated']}: truncated: the FITS headers need" in out
    assert f"{bad['html']}: not a FITS file" in out
    assert not (workdir / "results").exists(), "a job ran although the inputs were rejected"


@pytest.mark.workflow
def test_workflow_skips_bad_files_reports_them_and_processes_the_others(real_corpus, valid_files, tmp_path):
    folder, bad = real_corpus
    checksums = {p.name: p.read_bytes() for p in folder.iterdir()}
    workdir = real_target_setup(tmp_path, folder, "skip")
    code, out = snakemake(workdir, "--cores", "2", "results/REAL/validation/REAL_validation.tsv")
    assert code == 0, out[-3000:]
    assert f"validation: skipping {bad['truncated']}: truncated" in out
    assert f"validation: skipping {bad['html']}: not a FITS file" in out
    rows = [
        line.split("\t") for line in (workdir / "results/REAL/validation/REAL_validation.tsv").read_text().splitlines()
    ]
    status = {Path(r[0]).name: (r[4], r[5]) for r in rows[1:]}
    assert status[bad["truncated"].name][0] == "skipped" and "truncated" in status[bad["truncated"].name][1]
    assert status[bad["html"].name] == ("skipped", "not a FITS file (it does not start with a SIMPLE card)")
    assert all(status[p.name] == ("ok", "") for p in valid_files)
    linked = sorted((workdir / "results/REAL/validated").glob("*_cal.fits"))
    assert [p.name for p in linked] == [p.name for p in valid_files]
    assert all(p.is_symlink() and p.resolve() == (folder / p.name).resolve() for p in linked)
    # the rest of the plan uses the six valid exposures only, up to the band's mosaic
    code, plan = snakemake(workdir, "-n", "-p")
    assert code == 0, plan[-3000:]
    assert "REAL_F277W_i2d.fits" in plan and "rule level_match_REAL_F277W" in plan
    inputs = [line for line in plan.splitlines() if line.strip().startswith("input:")]
    assert any(valid_files[1].name in line for line in inputs)
    for path in bad.values():
        assert not any(path.name in line for line in inputs), f"{path.name} is still an input of a job"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == checksums, "an input file was modified"


def test_target_with_no_exposures_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = snakemake(real_target_setup(tmp_path, empty), "-n")
    assert code != 0 and "target REAL: no exposures in" in out, out[-3000:]


def test_target_whose_every_exposure_is_bad_is_named(valid_files, tmp_path):
    folder = tmp_path / "allbad"
    folder.mkdir()
    for path in valid_files[:2]:
        not_fits(path, folder / path.name)
    code, out = snakemake(real_target_setup(tmp_path, folder, "skip"), "-n")
    assert code != 0 and "target REAL: no exposures left" in out and "all 2 failed validation" in out, out[-3000:]


def test_on_bad_exposure_accepts_only_stop_or_skip(valid_files, tmp_path):
    code, out = snakemake(real_target_setup(tmp_path, valid_files[0].parent, "sometimes"), "-n")
    assert code != 0 and "on_bad_exposure" in out and "sometimes" in out, out[-3000:]
