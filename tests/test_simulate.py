"""The synthetic survey: geometry, injected effects and their truth, JWST-compatible files."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest

import simulate_survey as sim
from wflib import survey_plan

NAME_RE = re.compile(r"^jw\d{5}\d{3}\d{3}_\d{2}\d\d{2}_\d{5}_(nrc[ab][1-4]|nrc[ab]long|mirimage)$")


# ----------------------------------------------------------------------------- plan
def test_galaxy_plan_has_the_requested_exposures(workflow_config):
    cfg = workflow_config["simulation"]
    layout = cfg["layouts"]["phangs_galaxy"]
    plan = survey_plan.plan_target("G", 24.17, 15.78, layout, cfg["scale"])
    science = [e for e in plan if e.role == "science"]
    nircam_pointings = 4 * 4  # 2x2 tiles, 4 dithers
    expected_nircam = nircam_pointings * (8 * 1 + 2 * 3)  # F200W on 8 SW detectors, 3 LW bands on 2
    assert sum(e.instrument == "NIRCAM" for e in science) == expected_nircam
    assert sum(e.instrument == "MIRI" for e in science) == 4 * 4 * 4
    assert sum(e.role == "offfield" for e in plan) == nircam_pointings * 4
    assert all(NAME_RE.match(e.name) for e in plan)
    assert len({e.name for e in plan}) == len(plan)
    assert all(b.start_mjd >= a.start_mjd for a, b in zip(plan, plan[1:], strict=False))


def test_detector_shapes_keep_amplifiers_and_scale():
    assert survey_plan.detector_shape("NRC_SW", 1.0) == (2048, 2048)
    assert survey_plan.detector_shape("MIRI", 1.0) == (1024, 1032)
    ny, nx = survey_plan.detector_shape("NRC_SW", 0.125)
    assert (ny, nx) == (256, 256) and nx % 4 == 0


def test_previous_exposure_is_on_the_same_detector(workflow_config):
    cfg = workflow_config["simulation"]
    plan = survey_plan.plan_target("G", 24.17, 15.78, cfg["layouts"]["ceers_deep"], cfg["scale"])
    previous = survey_plan.previous_on_detector(plan)
    by_name = {e.name: e for e in plan}
    for exp in plan:
        if previous[exp.name]:
            prev = by_name[previous[exp.name]]
            assert prev.detector == exp.detector and prev.start_mjd < exp.start_mjd


# ----------------------------------------------------------------------------- effects (pure functions)
def test_pink_series_has_equal_power_per_octave():
    rng = np.random.default_rng(1)
    power = np.zeros(1025)
    for _ in range(200):
        power += np.abs(np.fft.rfft(sim.pink_series(2048, rng))) ** 2
    octaves = [power[2**k : 2 ** (k + 1)].sum() for k in range(2, 10)]
    assert max(octaves) / min(octaves) < 1.5


def test_one_over_f_rows_are_constant_within_an_amplifier():
    pattern = sim.one_over_f_pattern((64, 64), 1.0, 0.0, np.random.default_rng(2))
    for amp in range(4):
        block = pattern[:, amp * 16 : (amp + 1) * 16]
        assert np.allclose(block, block[:, :1])
    assert not np.allclose(pattern[:, 0], pattern[:, 20])


def test_pointing_error_moves_the_visit_centre_by_the_requested_amount():
    ra0, dec0 = 150.0, 2.0
    rot = sim.pointing_error_matrix(ra0, dec0, 0.7, -0.4, 0.01)
    moved = rot @ sim.unit_vector(ra0, dec0)
    ra1 = math.degrees(math.atan2(moved[1], moved[0])) % 360
    dec1 = math.degrees(math.asin(moved[2]))
    east, north = sim.tangent_offsets(np.array([ra1]), np.array([dec1]), ra0, dec0)
    assert east[0] == pytest.approx(0.7, abs=1e-6) and north[0] == pytest.approx(-0.4, abs=1e-6)


def test_tangent_projection_round_trips():
    xi, eta = np.array([-30.0, 0.0, 12.5]), np.array([5.0, 0.0, -40.0])
    ra, dec = sim.tangent_to_radec(xi, eta, 24.17, 15.78)
    xi2, eta2 = sim.tangent_offsets(ra, dec, 24.17, 15.78)
    assert np.allclose(xi, xi2, atol=1e-7) and np.allclose(eta, eta2, atol=1e-7)


def test_gaussian_sources_conserve_flux():
    image = np.zeros((101, 101))
    pixscale = 0.031
    sim.add_gaussian_sources(image, [50.3], [49.8], [100.0], [0.0], [(0.85, 0.03), (0.15, 0.09)], pixscale)
    flux_ujy = image.sum() * pixscale**2 / sim.MJYSR_PER_JY_ARCSEC2 * 1e6
    assert flux_ujy == pytest.approx(100.0, rel=1e-4)


# ----------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def small_survey(tmp_path_factory, workflow_config):
    """One galaxy target rendered in F200W and F770W at 1/16 scale, through the CLI entry point."""
    cfg = copy.deepcopy(workflow_config["simulation"])
    cfg["scale"] = 0.0625
    layout = cfg["layouts"]["phangs_galaxy"]
    layout["nircam"]["filters"] = ["F200W"]
    layout["miri"]["filters"] = ["F770W"]
    layout["miri_offfield"]["filters"] = ["F770W"]
    root = tmp_path_factory.mktemp("sim")
    target = {
        "target": "TESTGAL",
        "ra": 24.17,
        "dec": 15.78,
        "layout": "phangs_galaxy",
        "program": 9003,
        "distance_mpc": 9.8,
    }
    sim.simulate_target(root, cfg, target, ["F200W", "F770W"])
    return root, cfg, target


def test_exposures_open_as_jwst_image_models(small_survey):
    from stdatamodels.jwst import datamodels

    root, _, _ = small_survey
    files = sorted((root / "cal").glob("*_cal.fits"))
    assert len(files) == 16 * 8 + 16 + 16
    model = datamodels.open(files[0])
    assert isinstance(model, datamodels.ImageModel)
    assert model.meta.bunit_data == "MJy/sr" and model.meta.bunit_err == "MJy/sr"
    for ext in ("data", "err", "dq", "var_poisson", "var_rnoise", "var_flat"):
        assert getattr(model, ext).shape == model.data.shape
    assert model.meta.instrument.name == "NIRCAM" and model.meta.exposure.type == "NRC_IMAGE"
    assert model.meta.observation.program_number == "09003"
    assert model.meta.wcsinfo.s_region.startswith("POLYGON")
    assert model.meta.wcs.available_frames == ["detector", "v2v3", "world"]
    from astropy.io import fits

    header = fits.getheader(files[0], 0)
    assert header["WFVERS"] and header["WFSTEP"] == "simulate_exposures" and header["WFNINPUT"] == 1


def test_header_wcs_is_off_by_the_injected_pointing_error(small_survey):
    """The file's WCS differs from the one the pixels were rendered with by the truth-file error."""
    from stdatamodels.jwst import datamodels

    root, cfg, target = small_survey
    truth = json.loads((root / "truth" / "sky_truth.json").read_text())
    plan = {e.name: e for e in sim.target_plan(target, cfg)}
    checked = 0
    for path in (
        sorted((root / "cal").glob("*nrca1_cal.fits"))[:4] + sorted((root / "cal").glob("*mirimage_cal.fits"))[:2]
    ):
        model = datamodels.open(path)
        exp = plan[path.name[: -len("_cal.fits")]]
        err = truth["pointing_errors"][exp.visit_id]
        true_model = sim.detector_model(exp, sim.true_attitude(exp), cfg["scale"])
        ny, nx = model.data.shape
        ra_h, dec_h = model.meta.wcs(nx / 2, ny / 2)
        ra_t, dec_t = true_model.meta.wcs(nx / 2, ny / 2)
        # expected header position: the error rotation applied to the true position
        rot = sim.pointing_error_matrix(
            err["ra_center"], err["dec_center"], err["east_arcsec"], err["north_arcsec"], err["rotation_deg"]
        )
        v = rot @ sim.unit_vector(ra_t, dec_t)
        ra_e, dec_e = math.degrees(math.atan2(v[1], v[0])) % 360, math.degrees(math.asin(v[2]))
        dx, dy = sim.tangent_offsets(np.array([ra_h]), np.array([dec_h]), ra_e, dec_e)
        assert math.hypot(dx[0], dy[0]) < 1e-3  # arcsec
        shift = sim.tangent_offsets(np.array([ra_h]), np.array([dec_h]), ra_t, dec_t)
        assert math.hypot(shift[0][0], shift[1][0]) > 0.04  # the error is really there
        checked += 1
    assert checked == 6


def test_fits_wcs_approximation_matches_gwcs(small_survey):
    from astropy.io import fits
    from astropy.wcs import WCS
    from stdatamodels.jwst import datamodels

    root, _, _ = small_survey
    path = sorted((root / "cal").glob("*nrcb4_cal.fits"))[0]
    model = datamodels.open(path)
    fits_wcs = WCS(fits.getheader(path, "SCI"))
    x, y = np.array([5.0, 60.0, 120.0]), np.array([7.0, 64.0, 110.0])
    ra_g, dec_g = model.meta.wcs(x, y)
    ra_f, dec_f = fits_wcs.pixel_to_world_values(x, y)
    assert np.allclose(ra_g, ra_f, atol=1e-7) and np.allclose(dec_g, dec_f, atol=1e-7)


def test_noise_matches_the_error_arrays(small_survey):
    """SCI minus every injected component, divided by ERR, is unit-variance noise."""
    from astropy.io import fits

    root, _, _ = small_survey
    ratios = []
    for path in sorted((root / "cal").glob("*_cal.fits"))[::7]:
        with fits.open(path) as cal, fits.open(root / "truth" / "exp" / path.name.replace("_cal", "_truth")) as truth:
            model = truth["SKY"].data + truth["BKG"].data
            for name in ("STRIPES", "WISP", "PERSIST", "CR", "SNOWBALL"):
                if name in truth:
                    model = model + truth[name].data
            resid = (cal["SCI"].data - model) / cal["ERR"].data
            good = np.isfinite(resid) & (cal["DQ"].data == 0) & (truth["SKY"].data < 50)
            ratios.append(resid[good])
    resid = np.concatenate(ratios)
    assert np.std(resid) == pytest.approx(1.0, abs=0.05)
    assert abs(np.median(resid)) < 0.05


def test_truth_table_records_injected_scalars(small_survey):
    from astropy.table import Table

    root, cfg, _ = small_survey
    table = Table.read(root / "truth" / "F770W.ecsv", format="ascii.ecsv")
    science = table[[not n.endswith("mirimage") or "_021" in n for n in table["exposure"]]]
    assert len(science) > 0
    offsets = np.asarray(table["offset_mjysr"], float)
    assert 0.03 < np.std(offsets) < 0.3  # MIRI dither offsets ~0.1 MJy/sr
    assert np.all(np.asarray(table["lyot_offset_mjysr"], float) != 0)
    wisp = Table.read(root / "truth" / "F200W.ecsv", format="ascii.ecsv")
    scales = np.asarray(wisp["wisp_scale"], float)
    lo, hi = cfg["effects"]["wisps"]["scale_range"]
    has_wisp = np.isfinite(scales)
    assert has_wisp.sum() == 16 * 4  # A3, A4, B3, B4 of every F200W exposure
    assert np.all((scales[has_wisp] >= lo) & (scales[has_wisp] <= hi))
    assert (root / "refs" / "wisps" / "wisp_nrca3_f200w.fits").exists()


def test_references_exist_with_true_zero_level(small_survey):
    """Wide-field images carry the sky of their proxy band with no sky offset added."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    root, cfg, _ = small_survey
    refcat = Table.read(root / "refs" / "TESTGAL_refcat.ecsv", format="ascii.ecsv")
    assert {"ra", "dec", "mag"} <= set(refcat.colnames) and len(refcat) > 20
    spec = next(s for s in cfg["references"]["widefield"] if s["name"] == "IRAC1")
    with fits.open(root / "refs" / "TESTGAL_irac1.fits") as hdul:
        image, wcs = hdul["SCI"].data, WCS(hdul["SCI"].header)
    model = json.loads((root / "truth" / "sky_truth.json").read_text())["sky_model"]
    yy, xx = np.mgrid[0:8, 0:8]
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    xi, eta = sim.tangent_offsets(ra, dec, model["ra"], model["dec"])
    expected = spec["flux_ratio"] * sim.smooth_emission(model, spec["proxy_band"], xi, eta)
    # outskirts: smooth disk only; the residual is noise averaged over 64 pixels
    assert abs(np.median(image[:8, :8] - expected)) < 3 * spec["noise_mjysr"] / 8 + 1e-3


def test_simulation_is_deterministic(small_survey, tmp_path):
    from astropy.io import fits

    root, cfg, target = small_survey
    common = ["--sim", json.dumps(cfg), "--target", json.dumps(target)]
    sim.main(
        [
            "exposures",
            *common,
            "--filter",
            "F770W",
            "--sky-dir",
            str(root / "truth"),
            "--out-dir",
            str(tmp_path / "cal"),
            "--truth-dir",
            str(tmp_path / "truth"),
            "--wisp-dir",
            str(tmp_path / "wisps"),
            "--truth-table",
            str(tmp_path / "t.ecsv"),
        ]
    )
    for path in sorted((tmp_path / "cal").glob("*_cal.fits")):
        a, b = fits.getdata(path, "SCI"), fits.getdata(root / "cal" / path.name, "SCI")
        assert np.array_equal(a, b, equal_nan=True)
