"""1/f destriping (issue #3): pure functions on small arrays, then the simulator's truth.

The simulated exposures are rendered at ``simulation.scale = 0.25`` (512 x 512 detectors,
4 amplifiers of 128 columns; LW bands only, to stay fast).  Residual stripes are measured with
``tests/bench/stripe_metric`` (profile of corrected - (input - STRIPES): the stripes left plus
any sky removed, without the pixel noise of the metric).  At this scale sources are as large in
pixels as on the real detectors while amplifier rows are 4x shorter and the galaxy 4x smaller,
so the thresholds (measured value + ~25%) are looser than the benchmark's full-size numbers
(tests/bench/destripe.py, where the issue's targets are judged).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parent / "bench"))  # after scripts/: bench/destripe.py is the benchmark

import stripe_metric as sm  # noqa: E402

import destripe  # noqa: E402
import destripe_multitile as dmt  # noqa: E402
from wflib import (
    masks,  # noqa: E402
    wfutils,  # noqa: E402
)

SCALE = 0.25
# local block background for the galaxy at scale 0.25 (16 columns x 65 rows is the full-size setting;
# the galaxy shrinks with the scale, 16 x 33 measured best here)
GALAXY_LOCAL = {
    "method": "median_filter",
    "highpass": "local",
    "fallback_fraction": 0.5,
    "local_block": 16,
    "local_length": 33,
}


# ----------------------------------------------------------------------------- pure functions
def test_clipped_profile_matches_astropy_sigma_clip():
    from astropy.stats import sigma_clipped_stats

    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (50, 300))
    x[:, :25] += 12.0  # a bright source in every row
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    x[7] = np.nan  # an empty row
    med, std, n = masks.clipped_profile(x, axis=1, sigma=3.0, maxiters=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sigma_clipped_stats(x, axis=1, sigma=3.0, maxiters=5)
    assert np.allclose(med, ref[1], equal_nan=True, atol=1e-9)
    assert np.allclose(std, ref[2], equal_nan=True, atol=1e-9)
    assert np.isnan(med[7]) and n[7] == 0
    mean, _, _ = masks.clipped_profile(x, axis=1, statistic="mean")
    assert np.allclose(mean, ref[0], equal_nan=True, atol=1e-9)


def test_multiscale_noise_keeps_structure_above_the_largest_scale():
    y = np.arange(2000)
    slow = np.sin(2 * np.pi * y / 3000.0)
    fast = 0.3 * np.sin(2 * np.pi * y / 12.0)
    noise = destripe.multiscale_noise(slow + fast, [3, 7, 15, 31, 63, 127])
    inner = slice(200, 1800)
    assert np.std((noise - fast)[inner]) < 0.1 * np.std(fast)
    everything = destripe.multiscale_noise(slow + fast, [4000])  # a scale above the length: all scales
    assert np.allclose(everything, slow + fast - np.median(slow + fast))


def test_row_profiles_fall_back_to_the_full_row_when_an_amplifier_row_is_masked():
    ny, nx = 40, 64
    offsets = np.array([1.0, 2.0, 3.0, 4.0])
    image = np.repeat(offsets, nx // 4)[None, :] + np.zeros((ny, 1))
    use = np.ones((ny, nx), bool)
    use[10, 16:30] = False  # 14 of 16 pixels: 87.5% masked
    use[11, 16:26] = False  # 62.5% masked
    amps = destripe.amplifier_slices(nx)
    region = np.ones((ny, nx), bool)
    prof, fallback = destripe.row_profiles(image, use, amps, region, 3.0, 5, 0.8)
    assert fallback[1, 10] and not fallback[1, 11] and fallback.sum() == 1
    assert prof[1, 11] == 2.0 and prof[0, 10] == 1.0
    assert prof[1, 10] == pytest.approx(np.median(image[10][use[10]]))


def _striped_frame(seed, ny=128, nx=64):
    rng = np.random.default_rng(seed)
    stripes = rng.normal(0, 0.01, ny)
    data = (1.0 + stripes[:, None] + rng.normal(0, 0.001, (ny, nx))).astype(np.float32)
    dq = np.zeros((ny, nx), np.uint32)
    dq[:4] = dq[-4:] = 1
    dq[:, :4] = dq[:, -4:] = 1
    return data, dq, stripes


def _check_rows_follow_stripes(result, data, stripes, method, column=20):
    ny = data.shape[0]
    assert np.isfinite(result.model).all(), method
    inner = slice(4, ny - 4)
    rows = result.model[inner, column]
    expected = stripes[inner] - np.median(stripes[inner])
    good = np.isfinite(data[inner, column])
    assert np.std(rows[good] - expected[good]) < 0.002, method
    assert (result.model[:4] == 0).all() and (result.model[:, -4:] == 0).all(), method


def test_nan_pixels_rows_and_columns_get_a_finite_model():
    data, dq, stripes = _striped_frame(4)
    data[60:63] = np.nan  # three rows without data
    data[:, 5] = np.nan  # a dead column
    data[np.random.default_rng(9).uniform(size=data.shape) < 0.05] = np.nan  # scattered NaNs
    for method in ("row_median", "median_filter", "remstriping"):
        params = {"method": method, "scales": [1000], "column_scales": [1000], "highpass": "none"}
        result = destripe.stripe_model(data, dq, params)
        _check_rows_follow_stripes(result, data, stripes, method)
        # the missing rows lie between their neighbours' values
        lo, hi = sorted((result.model[59, 20], result.model[63, 20]))
        assert lo - 1e-6 <= result.model[61, 20] <= hi + 1e-6, method
    params = {"method": "median_filter", "highpass": "local", "local_block": 8, "local_length": 17}
    assert np.isfinite(destripe.stripe_model(data, dq, params).model).all()


def test_all_masked_rows_are_interpolated_not_measured():
    """Rows flagged in DQ (finite garbage values) or covered by a source on every amplifier."""
    data, dq, stripes = _striped_frame(10)
    data[40:43] = 50.0  # flagged rows with garbage values: must not enter the model
    dq[40:43] = 1
    data[80:82] += 30.0  # a row-wide bright "source": masked on every amplifier
    for method in ("row_median", "median_filter", "remstriping"):
        params = {"method": method, "scales": [1000], "column_scales": [1000], "highpass": "none"}
        result = destripe.stripe_model(data, dq, params)
        assert np.isfinite(result.model).all(), method
        assert result.mask[40:43].all() and (result.mask[40:43] & destripe.MASK_BITS["unusable"]).all(), method
        assert np.abs(result.model).max() < 0.1, method  # neither the garbage nor the source became a stripe
        lo, hi = sorted((result.model[39, 20], result.model[43, 20]))
        assert lo - 1e-6 <= result.model[41, 20] <= hi + 1e-6, method
        # the rows measured (unmasked at this column) follow the stripes; masked ones were interpolated
        measured = result.mask[:, 20] == 0
        assert measured.sum() > 70 and result.mask[80:82, 20].all(), method
        residual = result.model[measured, 20] - stripes[measured]
        assert np.std(residual) < 0.002, method
    empty = np.ones_like(dq)  # everything flagged: a zero model, not an error
    assert not destripe.stripe_model(data, empty, {"method": "row_median"}).model.any()


def test_butterworth_highpass_removes_smooth_emission_and_keeps_stripes():
    yy, xx = np.mgrid[0:256, 0:256]
    emission = 5.0 * np.exp(-((xx - 128.0) ** 2 + (yy - 100.0) ** 2) / (2 * 120.0**2))
    stripes = 0.01 * np.sign(np.sin(2 * np.pi * yy / 8.0))
    out = destripe.butterworth_highpass(emission + stripes, cutoff=0.005 * 8)
    inner = (slice(40, 216), slice(40, 216))
    assert np.std(out[inner] - stripes[inner]) < 0.2 * np.std(stripes)


def test_tiered_mask_finds_extended_and_compact_sources():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:256, 0:256]
    image = rng.normal(0, 1.0, (256, 256))
    image += 1.5 * np.exp(-((xx - 70) ** 2 + (yy - 70) ** 2) / (2 * 25.0**2))  # faint and extended
    image += 30.0 * np.exp(-((xx - 190) ** 2 + (yy - 180) ** 2) / (2 * 1.5**2))  # compact
    bits = masks.tiered_source_mask(image, np.ones(image.shape, bool), ring_radius=0)
    assert bits[70, 70] & 0b0011  # found by a large-kernel tier
    assert bits[180, 190] > 0
    assert (bits > 0).mean() < 0.35
    assert masks.gaussian_pedestal(rng.normal(2.5, 0.1, 20000)) == pytest.approx(2.5, abs=0.01)


def test_fast_pixel_mapping_matches_reproject():
    from astropy.wcs import WCS

    def tan(crval, rot_deg, crpix):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = crval
        w.wcs.crpix = crpix
        c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
        w.wcs.cd = (0.031 / 3600) * np.array([[-c, s], [s, c]])
        return w

    w_in = tan([150.0, 2.0], 20.0, [64.5, 64.5])
    w_out = tan([150.0002, 2.0001], 20.3, [70.0, 60.0])
    rng = np.random.default_rng(6)
    data = rng.normal(0, 1, (128, 128)).astype(np.float32)
    fast = dmt.resample(data, dmt.PixelMap(w_out, (128, 128), w_in).coords())
    exact = dmt.reproject_exact(data, w_in, w_out, (128, 128))
    both = np.isfinite(fast) & np.isfinite(exact)
    assert both.sum() > 8000
    assert np.max(np.abs(fast[both] - exact[both])) < 1e-3


def _dithered_exposures(seed, with_stripes=True, n=256, shifts=((0, 0), (23, 37), (-29, 61), (41, -47))):
    """Four dithers of one 4-amplifier detector over a structured sky, each with its own per-amplifier
    row stripes on scales of 40-250 rows. Returns the exposures and their true stripe images."""
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : n + 200, 0 : n + 200].astype(float)
    sky = 1.0 + 0.5 * np.exp(-((xx - 150) ** 2 + (yy - 170) ** 2) / (2 * 60.0**2))
    sky += 0.2 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    rows = np.arange(n)[:, None]
    exposures, truths = [], []
    for dx, dy in shifts:
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0, 2.0]
        wcs.wcs.crpix = [100.5 - dx, 100.5 - dy]  # detector (x, y) sees sky pixel (x + 100 + dx, y + 100 + dy)
        wcs.wcs.cd = (0.031 / 3600) * np.diag([-1.0, 1.0])
        stripes = np.zeros((n, n), np.float32)
        for amp in range(4):
            for scale in (40, 90, 250):
                stripes[:, amp * 64 : (amp + 1) * 64] += 0.01 * np.sin(2 * np.pi * rows / scale + rng.uniform(0, 7))
        data = sky[100 + dy : 100 + dy + n, 100 + dx : 100 + dx + n] + rng.normal(0, 0.002, (n, n))
        data = (data + (stripes if with_stripes else 0.0)).astype(np.float32)
        usable = np.ones((n, n), bool)
        usable[:4] = usable[-4:] = usable[:, :4] = usable[:, -4:] = False
        exposures.append(dmt.Exposure(f"d{dx}_{dy}", np.where(usable, data, np.nan), usable, wcs))
        truths.append(stripes)
    return exposures, truths


def _amp_row_residual(models, truths, exposures):
    """The benchmark's residual ratio (stripe_metric) of stripes - model, levels removed."""
    sums = []
    for model, truth, exp in zip(models, truths, exposures, strict=True):
        dq = (~exp.usable).astype(np.uint32)
        sums.append(sm.exposure_residual(-model, np.zeros_like(truth), {"STRIPES": truth}, dq))
    return sm.pooled_ratio(sums)


def test_joint_solve_ties_amplifiers_that_pass_one_sees_only_pairwise():
    """Pass 1 (row medians of each exposure minus the others) leaves 0.66 of these stripes; the joint
    least-squares solve before it leaves 0.43 (0.48 without pass 1 after it)."""
    pass_one = {"consensus": True, "match_resampling": True, "large_scale": False}
    exposures, truths = _dithered_exposures(1)
    alone = _amp_row_residual(dmt.destripe_exposures(exposures, pass_one), truths, exposures)
    joint = _amp_row_residual(dmt.destripe_exposures(exposures, {**pass_one, "joint": True}), truths, exposures)
    joint_only = _amp_row_residual(
        dmt.destripe_exposures(exposures, {**pass_one, "joint": True, "iterations": 0}), truths, exposures
    )
    assert alone > 0.6
    assert joint < 0.5 and joint_only < 0.55
    # without stripes, the solve moves rows by a fraction of the noise of one row (0.002 / sqrt(60))
    clean, _ = _dithered_exposures(1, with_stripes=False)
    models = dmt.destripe_exposures(clean, {"joint": True, "iterations": 0, "large_scale": False})
    assert max(float(np.std(m[e.usable])) for m, e in zip(models, clean, strict=True)) < 0.0005


# ----------------------------------------------------------------------------- simulated data
@pytest.fixture(scope="module")
def survey(tmp_path_factory, workflow_config):
    """Deep field F444W (6 exposures) and galaxy F335M (8) at scale 0.25, plus the galaxy without 1/f."""
    cfg = workflow_config["simulation"]
    root = tmp_path_factory.mktemp("destripe")
    deep = sm.simulate(root / "deep", cfg, "ceers_deep", ["F444W"], SCALE)
    galaxy = sm.simulate(root / "galaxy", cfg, "phangs_galaxy", ["F335M"], SCALE)
    no_1f = {**sm.BENCH_EFFECTS, "one_over_f": {"enabled": False}}
    galaxy_clean = sm.simulate(root / "galaxy_no1f", cfg, "phangs_galaxy", ["F335M"], SCALE, effects=no_1f)
    return {
        "deep": sm.exposures_of(deep, "F444W"),
        "galaxy": sm.exposures_of(galaxy, "F335M"),
        "galaxy_clean": sm.exposures_of(galaxy_clean, "F335M"),
    }


def load(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        return hdul["SCI"].data.astype(np.float32), hdul["DQ"].data.copy()


def pooled(paths, params, highpass=None):
    sums = []
    for path in paths:
        sci, dq = load(path)
        truth = sm.read_truth(sm.truth_path(path))
        corrected = sci - destripe.stripe_model(sci, dq, params).model
        sums.append(sm.exposure_residual(corrected, sci, truth, dq, highpass=highpass))
    return sm.pooled_ratio(sums)


def test_switching_1f_off_in_the_simulator_equals_removing_the_truth_stripes(survey):
    """The flux tests use SCI - STRIPES as 'the exposure with 1/f switched off'; check it is exact."""
    for noisy, clean in zip(survey["galaxy"][:3], survey["galaxy_clean"][:3], strict=True):
        assert noisy.name == clean.name
        sci, _ = load(noisy)
        sci_clean, _ = load(clean)
        stripes = sm.read_truth(sm.truth_path(noisy))["STRIPES"]
        good = np.isfinite(sci)
        assert np.allclose(sci[good] - stripes[good], sci_clean[good], atol=1e-5)


def test_deep_field_single_exposure_destriping(survey):
    """Sparse sky: row medians see the stripes on every scale.  1.0 = no correction.

    Measured at scale 0.25: row_median 0.22, median filter on all scales 0.23, remstriping
    0.39 (0.35 with the full-row fallback only above 95% masked), published median filter
    0.33 below 128 rows (it leaves larger scales to the multi-exposure step).
    """
    assert pooled(survey["deep"], {"method": "row_median"}) < 0.28
    assert pooled(survey["deep"], {"method": "median_filter", "highpass": "none", "scales": [4095]}) < 0.29
    assert pooled(survey["deep"], {"method": "remstriping"}) < 0.5
    assert pooled(survey["deep"], {"method": "remstriping", "fallback_fraction": 0.95}) < 0.45
    assert pooled(survey["deep"], {"method": "median_filter"}, highpass=129) < 0.42


def test_deep_field_default_setting_beats_remstriping(survey, workflow_config):
    """The configured deep-field setting (local background over whole columns, every scale).

    Measured at scale 0.25: 0.099 (remstriping with the 95% fallback 0.23); full size (the
    benchmark): 0.052 in F444W, 0.030 in F200W.
    """
    cfg = workflow_config["corrections"]["destripe"]
    deep = dict(cfg["params"])
    for override in cfg["overrides"]:
        if "ceers_deep" in override.get("layouts", []):
            deep.update(override.get("params", {}))
    ours = pooled(survey["deep"], deep)
    assert ours < 0.15
    assert ours < 0.6 * pooled(survey["deep"], {"method": "remstriping", "fallback_fraction": 0.95})


def test_galaxy_single_exposure_destriping_keeps_the_galaxy(survey):
    """Emission everywhere: row medians remove the galaxy as "stripes"; the local background keeps it.

    Measured at scale 0.25 (F335M, the galaxy centre on the detectors): row_median ~50,
    published median filter ~2, local background ~1.1 below 128 rows.  The full-size benchmark
    has the numbers that matter; here the ordering and the scale of the failure are checked.
    """
    row_median = pooled(survey["galaxy"], {"method": "row_median"}, highpass=129)
    published = pooled(survey["galaxy"], {"method": "median_filter"}, highpass=129)
    local = pooled(survey["galaxy"], GALAXY_LOCAL, highpass=129)
    assert row_median > 5
    assert local < 1.4
    assert local < 0.8 * published


def flux_changes(paths, params):
    """Median |change| (MJy/sr) and summed change / summed sky over exposures without 1/f noise."""
    changes, total, sky = [], 0.0, 0.0
    for path in paths:
        sci, dq = load(path)
        truth = sm.read_truth(sm.truth_path(path))
        change = -destripe.stripe_model(sci, dq, params).model
        valid = sm.valid_pixels(sci, dq)
        changes.append(np.abs(change[valid]))
        total += change[valid].sum(dtype=np.float64)
        sky += truth["SKY"][valid].sum(dtype=np.float64)
    return float(np.median(np.concatenate(changes))), total / sky


def test_no_flux_is_removed_without_1f_noise(survey):
    """Measured at scale 0.25: local 0.0011 MJy/sr and -0.02%; published median filter 0.006 and -0.2%."""
    median_change, summed = flux_changes(survey["galaxy_clean"], GALAXY_LOCAL)
    assert median_change <= 0.0015
    assert abs(summed) <= 0.001
    assert flux_changes(survey["galaxy_clean"], {"method": "row_median"})[0] > 0.05  # the baseline's failure


def test_real_image_without_1f_is_left_alone():
    """DSS image of M13 shipped with astropy, scaled to a JWST-like sky noise of 0.015 MJy/sr."""
    import astropy
    from astropy.io import fits

    path = Path(astropy.__file__).parent / "io" / "fits" / "hdu" / "compressed" / "tests" / "data" / "m13.fits"
    if not path.exists():
        pytest.skip("astropy test image m13.fits not installed")
    raw = fits.getdata(path).astype(np.float64)[2:298, 2:298]
    sky = np.median(raw)
    image = ((raw - sky) * 0.015 / (1.4826 * np.median(np.abs(raw - sky))) + 0.1).astype(np.float32)
    dq = np.zeros(image.shape, np.uint32)
    dq[:4] = dq[-4:] = dq[:, :4] = dq[:, -4:] = 1
    model = destripe.stripe_model(image, dq, GALAXY_LOCAL).model[dq == 0]
    assert np.median(np.abs(model)) <= 0.0015
    assert abs(model.sum()) <= 0.001 * (image[dq == 0] - 0.1).sum()


def test_multi_exposure_destriping_reduces_large_scale_stripes(survey, tmp_path):
    """Galaxy F335M, 4 dithers per module: the CLI writes every exposure; large scales shrink."""
    single_dir = tmp_path / "single"
    for path in survey["galaxy"]:
        destripe.main([str(path), str(single_dir / path.name), "--params", json.dumps(GALAXY_LOCAL)])
    out_dir = tmp_path / "multi"
    params = {"consensus": True, "match_resampling": True, "large_scale": False}
    dmt.main(["--out-dir", str(out_dir), "--params", json.dumps(params), *map(str, sorted(single_dir.glob("*.fits")))])
    before, after = [], []
    for path in survey["galaxy"]:
        sci, dq = load(path)
        truth = sm.read_truth(sm.truth_path(path))
        single, _ = load(single_dir / path.name)
        multi, _ = load(out_dir / path.name)
        before.append(sm.exposure_residual(single, sci, truth, dq))
        after.append(sm.exposure_residual(multi, sci, truth, dq))
    assert sm.pooled_ratio(after) < 0.9 * sm.pooled_ratio(before)


# ----------------------------------------------------------------------------- files and edge cases
def test_cli_writes_corrected_model_mask_and_qa(survey, tmp_path):
    from astropy.io import fits

    path = survey["deep"][0]
    before = fits.getdata(path, "SCI").copy()
    out, model_out, png = tmp_path / "out_cal.fits", tmp_path / "stripes.fits", tmp_path / "qa.png"
    destripe.main(
        [str(path), str(out), "--method", "remstriping", "--noise-model", str(model_out), "--qa-png", str(png)]
    )
    assert np.array_equal(fits.getdata(path, "SCI"), before, equal_nan=True)  # input untouched
    corrected = fits.getdata(out, "SCI")
    with fits.open(model_out) as hdul:
        stripes = hdul["STRIPES"].data
        assert {"STRIPES", "MASK", "ROWS", "COLUMNS"} <= {h.name for h in hdul}
        assert hdul["MASK"].data.max() >= 2 and hdul[0].header["METHOD"] == "remstriping"
    good = np.isfinite(before)
    assert np.allclose(corrected[good], before[good] - stripes[good], atol=1e-6)
    assert np.array_equal(np.isnan(corrected), np.isnan(before))
    assert fits.getheader(out)["WFSTEP"] == "destripe"
    assert png.stat().st_size > 10_000


def test_params_json_and_command_line_precedence():
    args = destripe.build_parser().parse_args(
        [
            "in.fits",
            "out.fits",
            "--params",
            json.dumps({"method": "remstriping", "fallback_fraction": 0.9}),
            "--fallback-fraction",
            "0.7",
        ]
    )
    params = destripe.params_from_args(args)
    assert params["method"] == "remstriping" and params["fallback_fraction"] == 0.7
    assert params["scales"] == [3, 7, 15, 31, 63, 127]
    with pytest.raises(wfutils.InputError, match="unknown destripe parameter"):
        destripe.resolve_params({"scale": [3]})


def test_miri_and_non_nircam_inputs_are_refused(tmp_path):
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel((64, 64))
    model.meta.instrument.name = "MIRI"
    model.meta.instrument.detector = "MIRIMAGE"
    model.meta.bunit_data = "MJy/sr"
    path = tmp_path / "jw_mirimage_cal.fits"
    model.save(str(path))
    with pytest.raises(wfutils.InputError, match=r"jw_mirimage_cal\.fits.*MIRI.*NIRCam only"):
        destripe.main([str(path), str(tmp_path / "out.fits")])
    copy = tmp_path / "other" / path.name.replace("jw_", "jw2_")
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    with pytest.raises(wfutils.InputError, match="NIRCam only"):
        dmt.main(["--out-dir", str(tmp_path / "m"), str(path), str(copy)])
    assert not (tmp_path / "out.fits").exists()
    niriss = datamodels.ImageModel((64, 64))
    niriss.meta.instrument.name = "NIRISS"
    niriss.meta.instrument.detector = "NIS"
    niriss_path = tmp_path / "jw_nis_cal.fits"
    niriss.save(str(niriss_path))
    with pytest.raises(wfutils.InputError, match="instrument is NIRISS, not NIRCAM"):
        destripe.main([str(niriss_path), str(tmp_path / "out.fits")])
    cube = datamodels.CubeModel((2, 64, 64))  # a rateints-like 3-D file
    cube.meta.instrument.name = "NIRCAM"
    cube.meta.instrument.detector = "NRCA1"
    cube_path = tmp_path / "jw_nrca1_rateints.fits"
    cube.save(str(cube_path))
    with pytest.raises(wfutils.InputError, match="3 axes"):
        destripe.main([str(cube_path), str(tmp_path / "out.fits")])
    assert not (tmp_path / "out.fits").exists()


def test_missing_dq_extension_is_refused_clearly(survey, tmp_path):
    from astropy.io import fits

    path = survey["deep"][1]
    no_dq = tmp_path / "nodq_cal.fits"
    with fits.open(path) as hdul:
        del hdul["DQ"]
        hdul.writeto(no_dq)
    with pytest.raises(wfutils.InputError, match=r"nodq_cal\.fits: no DQ extension"):
        destripe.main([str(no_dq), str(tmp_path / "out_cal.fits")])
    # the pure function documents its fallback: without DQ every finite pixel is usable
    sci, dq = load(path)
    truth = sm.read_truth(sm.truth_path(path))
    corrected = sci - destripe.stripe_model(sci, None, {"method": "row_median"}).model
    assert np.sqrt(np.divide(*sm.exposure_residual(corrected, sci, truth, dq)[:2])) < 0.5


def test_subarray_uses_whole_rows(tmp_path):
    from stdatamodels.jwst import datamodels

    rng = np.random.default_rng(7)
    ny, nx = 160, 160
    stripes = rng.normal(0, 0.01, ny)
    model = datamodels.ImageModel((ny, nx))
    model.data = (0.2 + stripes[:, None] + rng.normal(0, 0.002, (ny, nx))).astype(np.float32)
    model.dq = np.zeros((ny, nx), np.uint32)
    model.err = np.full((ny, nx), 0.002, np.float32)
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = "NRCB1"
    model.meta.exposure.type = "NRC_IMAGE"
    model.meta.subarray.name = "SUB160"
    model.meta.cal_step.flat_field = "COMPLETE"
    model.meta.bunit_data = "MJy/sr"
    path = tmp_path / "sub_cal.fits"
    model.save(str(path))
    out, model_out = tmp_path / "out_cal.fits", tmp_path / "m.fits"
    destripe.main([str(path), str(out), "--method", "row_median", "--noise-model", str(model_out)])
    from astropy.io import fits

    stripes_model = fits.getdata(model_out, "STRIPES")
    rows = fits.getdata(model_out, "ROWS")
    assert rows.shape == (1, ny)  # one "amplifier": whole rows
    assert np.std(stripes_model[:, 0] - stripes_model[:, -1]) < 2e-3  # no border, no amplifier steps
    assert np.std(stripes_model[:, 80] - (stripes - np.median(stripes))) < 2e-3


def test_rate_level_pattern_is_measured_on_flat_fielded_data():
    """A rate image carries the flat's structure; measured without the flat it would look like stripes."""
    rng = np.random.default_rng(8)
    ny, nx = 256, 256
    yy = np.arange(ny)[:, None]
    flat = (1.0 + 0.05 * np.sin(2 * np.pi * yy / 10.0)) * np.ones((1, nx))  # row-structured response
    stripes = rng.normal(0, 0.002, ny)[:, None]
    rate = (2.0 * flat + stripes + rng.normal(0, 0.001, (ny, nx))).astype(np.float32)
    params = {"method": "row_median", "columns": False}
    inner = slice(4, ny - 4)
    truth = stripes[inner, 0] - stripes[inner, 0].mean()
    with_flat = destripe.stripe_model(rate, None, params, flat=flat).model[inner, 100]
    without = destripe.stripe_model(rate, None, params).model[inner, 100]
    assert np.std(with_flat - truth) < 0.3 * np.std(truth)
    assert np.std(without - truth) > 10 * np.std(truth)


def test_multitile_refuses_mixed_filters(survey, tmp_path):
    with pytest.raises(wfutils.InputError, match="mix filters"):
        dmt.main(["--out-dir", str(tmp_path), str(survey["deep"][0]), str(survey["galaxy"][0])])
