"""The per-band runner of per-exposure scripts (scripts/each_exposure.py) writes exactly what the
script writes when run alone on each exposure, and stops with the script's message on a bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import each_exposure
import noise_model
from wflib import wfutils

SHAPE = (128, 128)


def make_exposure(path, seed):
    from stdatamodels.jwst import datamodels

    rng = np.random.default_rng(seed)
    data = 0.2 + rng.normal(0.0, 0.05, SHAPE)
    model = datamodels.ImageModel(data.astype(np.float32))
    model.dq = np.zeros(SHAPE, np.uint32)
    model.var_rnoise = np.full(SHAPE, 0.04**2, np.float32)
    model.var_poisson = np.full(SHAPE, 0.03**2, np.float32)
    model.var_flat = np.zeros(SHAPE, np.float32)
    model.err = np.sqrt(model.var_rnoise + model.var_poisson)
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.filter = "F200W"
    model.meta.instrument.detector = "NRCA1"
    model.meta.bunit_data = "MJy/sr"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    root = tmp_path_factory.mktemp("each")
    return [make_exposure(root / f"jw09001001001_02101_0000{k}_nrca1_cal.fits", k) for k in (1, 2)]


def test_runner_output_equals_the_script_run_alone(exposures, tmp_path):
    params = json.dumps({"pedestal": True})
    each_exposure.main(
        [
            "noise_model",
            "--out-dir",
            str(tmp_path / "batch"),
            "--output",
            "{name}_cal.fits",
            "--args",
            f"--params '{params}'",
            *map(str, exposures),
        ]
    )
    for path in exposures:
        alone = tmp_path / "alone" / path.name
        noise_model.main(["--params", params, str(path), str(alone)])
        batch = tmp_path / "batch" / path.name
        with fits.open(alone) as a, fits.open(batch) as b:
            for ext in ("SCI", "ERR", "VAR_RNOISE"):
                np.testing.assert_array_equal(a[ext].data, b[ext].data)
            assert a[0].header["PEDESTAL"] == pytest.approx(0.2, abs=0.01)
            assert b[0].header["WFSTEP"] == "noise_model"


def test_per_file_options_and_a_bad_format_are_checked():
    argv = each_exposure.script_argv(
        "/data/jw1_cal.fits",
        each_exposure.Path("/out"),
        "{name}_cal.fits",
        each_exposure.parse_per_file(["noise-model=models/{name}_stripes.fits"]),
        ["--method", "row_median"],
        "x.log",
    )
    assert argv == [
        "--method",
        "row_median",
        "--noise-model",
        "/out/models/jw1_stripes.fits",
        "--log",
        "x.log",
        "/data/jw1_cal.fits",
        "/out/jw1_cal.fits",
    ]
    with pytest.raises(wfutils.InputError, match="OPTION=FORMAT"):
        each_exposure.parse_per_file(["noise-model=models/stripes.fits"])


def test_beside_inputs_sit_next_to_each_ramp():
    """snowball_flag: RAMP RATE --gain G --readnoise R, G and R next to the ramp, the rate under --out-dir."""
    beside = each_exposure.parse_per_file(["gain={name}_gain.fits", "readnoise={name}_readnoise.fits"], "--beside")
    argv = each_exposure.script_argv(
        "/sim/ramps/jw1_ramp.fits", each_exposure.Path("/out"), "{name}_rate.fits", [], [], None, beside=beside
    )
    assert argv == [
        "--gain",
        "/sim/ramps/jw1_gain.fits",
        "--readnoise",
        "/sim/ramps/jw1_readnoise.fits",
        "/sim/ramps/jw1_ramp.fits",
        "/out/jw1_rate.fits",
    ]
    with pytest.raises(wfutils.InputError, match="--beside"):
        each_exposure.parse_per_file(["gain=gain.fits"], "--beside")


def test_a_missing_exposure_stops_the_run_naming_it(exposures, tmp_path):
    missing = tmp_path / "jw09001001001_02101_00009_nrca1_cal.fits"
    with pytest.raises(wfutils.InputError, match="00009_nrca1"):
        each_exposure.main(
            [
                "noise_model",
                "--out-dir",
                str(tmp_path / "out"),
                "--output",
                "{name}_cal.fits",
                str(exposures[0]),
                str(missing),
            ]
        )
