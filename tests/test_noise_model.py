"""Per-exposure noise corrections and the mosaic's correlated noise, judged against the simulator's truth."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

import correlated_noise
import noise_model
import simulate_survey as sim

FILTER = "F200W"


# ----------------------------------------------------------------------------- pure functions
def box_smoothed_noise(shape, rng, size=2):
    """White noise averaged over size x size boxes, rescaled to unit pixel variance."""
    from scipy.ndimage import uniform_filter

    field = uniform_filter(rng.standard_normal(shape), size=size, mode="wrap")
    return field / field.std()


def test_block_variance_of_white_noise_with_and_without_a_gradient():
    rng = np.random.default_rng(1)
    noise = 2.0 * rng.standard_normal((700, 700))
    good = np.ones(noise.shape, bool)
    for statistic in ("pairs", "biweight"):
        var, n = noise_model.block_sky_variance(noise, good, 7, statistic)
        assert n == 100 * 100
        assert var == pytest.approx(4.0, rel=0.05), statistic
    ramp = np.linspace(0, 1.0, 700)[None, :] * np.ones((700, 1))  # light smoother than a block
    assert noise_model.block_sky_variance(noise + ramp, good, 7, "pairs")[0] == pytest.approx(4.0, rel=0.05)
    assert noise_model.block_sky_variance(noise + ramp, good, 7, "biweight")[0] > 6.0


def test_block_variance_includes_pixel_correlations():
    """7x7 block sums of 2x2-box-correlated noise: 169/49 x the pixel variance per pixel (the point of the blocks).

    With rho(dx, dy) = (2 - |dx|)(2 - |dy|) / 4, var(sum of a 7x7 block) = [sum_dx (7 - |dx|)(2 - |dx|) / 2]^2 = 169;
    neighbouring blocks share a covariance of 6.5, so their differences give (169 - 6.5) / 49.
    """
    field = box_smoothed_noise((700, 700), np.random.default_rng(2))
    good = np.ones(field.shape, bool)
    assert noise_model.block_sky_variance(field, good, 7, "biweight")[0] == pytest.approx(169 / 49, rel=0.07)
    assert noise_model.block_sky_variance(field, good, 7, "pairs")[0] == pytest.approx(162.5 / 49, rel=0.07)


def test_rnoise_scale_modes():
    # measured 1.5e-4 = 5e-5 readout + 1e-4 other: "total" scales readout x 1, "rnoise" sets readout to the total
    assert noise_model.rnoise_scale(1.5e-4, 5e-5, 1e-4, "total") == pytest.approx(1.0)
    assert noise_model.rnoise_scale(2.0e-4, 5e-5, 1e-4, "total") == pytest.approx(2.0)
    assert noise_model.rnoise_scale(1.5e-4, 5e-5, 1e-4, "rnoise") == pytest.approx(3.0)


def test_zero_variances_become_infinite():
    arrays = {"var_rnoise": np.array([0.0, 1.0], np.float32), "var_poisson": np.array([2.0, 0.0], np.float32)}
    counts = noise_model.zero_variances_to_inf(arrays, ["var_rnoise", "var_poisson"])
    assert counts == {"var_rnoise": 1, "var_poisson": 1}
    assert np.isinf(arrays["var_rnoise"][0]) and np.isinf(arrays["var_poisson"][1]) and arrays["var_rnoise"][1] == 1


def test_autocorrelation_factor_of_white_and_correlated_noise():
    rng = np.random.default_rng(3)
    good = np.ones((600, 600), bool)
    assert correlated_noise.acf_factor(rng.standard_normal(good.shape), good, 6) == pytest.approx(1.0, abs=0.05)
    # 2x2 box average: sum of the autocorrelation = (sum k)^2 / sum k^2 = 4 -> factor 2
    assert correlated_noise.acf_factor(box_smoothed_noise(good.shape, rng), good, 6) == pytest.approx(2.0, rel=0.05)


def test_block_and_aperture_ratios_of_noise_with_the_right_errors():
    rng = np.random.default_rng(4)
    sigma = np.full((600, 600), 0.5)
    data = sigma * rng.standard_normal(sigma.shape)
    good = np.ones(sigma.shape, bool)
    assert correlated_noise.block_ratio(data, sigma, good, 4)[0] == pytest.approx(1.0, abs=0.07)
    ratio, n = correlated_noise.aperture_ratio(data, sigma, good, radius_px=3.2)
    assert n > 3000 and ratio == pytest.approx(1.0, abs=0.05)


def in_memory_exposure(rng, shape=(512, 512), pedestal=0.3, excess=1.0):
    """A small ImageModel: pedestal + a few sources + noise whose variance is ``excess`` x the arrays'."""
    from stdatamodels.jwst import datamodels

    var_rn, var_p = 4e-5, 6e-5
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = rng.uniform(20, 490, (30, 2))
    sources = sum(0.05 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2)) for x, y in centres)
    model = datamodels.ImageModel(shape)
    model.data = (pedestal + sources + rng.standard_normal(shape) * math.sqrt(excess * (var_rn + var_p))).astype(
        np.float32
    )
    model.var_rnoise = np.full(shape, var_rn, np.float32)
    model.var_poisson = np.full(shape, var_p, np.float32)
    model.var_flat = np.zeros(shape, np.float32)
    model.dq = np.zeros(shape, np.uint32)
    return model


def test_exposure_correction_recovers_pedestal_and_excess_noise():
    rng = np.random.default_rng(5)
    model = in_memory_exposure(rng, excess=1.5)
    model.var_poisson[10:20, 10:20] = 0.0
    report = noise_model.correct_exposure(model, {"zero_to_inf": ["var_poisson"]})
    sigma = math.sqrt(1.5e-4)
    assert report["pedestal"] == pytest.approx(0.3, abs=0.05 * sigma)
    assert report["variance_ratio"] == pytest.approx(1.5, rel=0.08)
    assert report["rnoise_scale"] == pytest.approx((1.5e-4 - 6e-5) / 4e-5, rel=0.15)
    sky = np.isfinite(model.err)
    assert np.median(model.err[sky]) ** 2 == pytest.approx(1.5e-4, rel=0.08)  # ERR follows the measured noise
    assert np.isinf(model.var_poisson[10:20, 10:20]).all() and report["zero_variances"]["var_poisson"] == 100


def test_exposure_whose_noise_matches_its_arrays_keeps_var_rnoise():
    model = in_memory_exposure(np.random.default_rng(6), excess=1.0)
    report = noise_model.correct_exposure(model, {})
    assert report["rnoise_scale"] == 1.0 and abs(report["variance_ratio_sigma"]) < 3


# ----------------------------------------------------------------------------- the simulated deep field
@pytest.fixture(scope="module")
def deep_field(tmp_path_factory, workflow_config):
    """Deep-field F200W at 1/4 scale: sources, background with per-exposure offsets, noise; nothing else.

    Every exposure goes through noise_model.py, the mosaic through the tiled drizzle and
    correlated_noise.py --apply (pixel); the truth mosaic says which pixels are source-free.
    """
    import drizzle_tile
    import gather_tiles
    import mosaic_grid
    import mosaic_tiles

    cfg = copy.deepcopy(workflow_config["simulation"])
    cfg["scale"] = 0.25
    for effect in ("one_over_f", "wisps", "cosmic_rays", "snowballs", "persistence", "pointing_errors", "saturation"):
        cfg["effects"][effect]["enabled"] = False
    cfg["layouts"]["ceers_deep"]["nircam"]["filters"] = [FILTER]
    root = tmp_path_factory.mktemp("noise")
    target = {"target": "DEEP", "ra": 214.825, "dec": 52.825, "layout": "ceers_deep", "program": 9002}
    common = ["--sim", json.dumps(cfg), "--target", json.dumps(target)]
    sim.main(["sky", *common, "--out-dir", str(root / "truth"), "--references-dir", str(root / "refs")])
    sim.main(["exposures", *common, "--filter", FILTER, "--sky-dir", str(root / "truth"), "--out-dir",
              str(root / "cal"), "--truth-dir", str(root / "truth" / "exp"), "--wisp-dir", str(root / "refs"),
              "--truth-table", str(root / "truth.ecsv")])  # fmt: skip
    corrected = []
    for path in sorted((root / "cal").glob("*_cal.fits")):
        out = root / "noise" / path.name
        noise_model.main([str(path), str(out)])
        corrected.append(str(out))
    grid_path = root / "grid.json"
    mosaic_grid.main([*corrected, "--out", str(grid_path), "--ra", "214.825", "--dec", "52.825"])
    sim.main(["truth-mosaic", *common, "--filter", FILTER, "--sky-dir", str(root / "truth"), "--grid",
              str(grid_path), "--out", str(root / "truth_mosaic.fits")])  # fmt: skip
    size = 1400
    spec = json.loads(grid_path.read_text())["filters"][FILTER]
    tiles = []
    for k in range(mosaic_tiles.tile_count(spec, size)):
        tiles.append(str(root / f"tile_{k}.fits"))
        drizzle_tile.main([*corrected, "--grid", str(grid_path), "--filter", FILTER, "--tile", str(k),
                           "--tile-size", str(size), "--out", tiles[-1]])  # fmt: skip
    gather_tiles.main([*tiles, "--grid", str(grid_path), "--filter", FILTER, "--out", str(root / "mosaic_i2d.fits")])
    correlated_noise.main([str(root / "mosaic_i2d.fits"), str(root / "corrected_i2d.fits"), "--apply"])
    return root, corrected


def truth_background(root) -> dict:
    rows = [line.split() for line in (root / "truth.ecsv").read_text().splitlines() if line.startswith("jw")]
    return {r[0]: float(r[4]) + float(r[5]) for r in rows}


def test_pedestal_matches_the_true_background(deep_field):
    from astropy.io import fits

    root, corrected = deep_field
    truth = truth_background(root)
    offsets = []
    for path in corrected:
        header = fits.getheader(path, 0)
        err = np.nanmedian(fits.getdata(path, "ERR"))
        offsets.append((header["PEDESTAL"] - truth[path.rsplit("/", 1)[-1][: -len("_cal.fits")]]) / err)
    offsets = np.array(offsets)
    print("pedestal - truth in units of the pixel noise:", np.round(offsets, 3))
    assert np.abs(offsets).max() < 0.2 and abs(np.median(offsets)) < 0.1


def test_var_rnoise_is_left_alone_where_the_arrays_are_right(deep_field):
    from astropy.io import fits

    _, corrected = deep_field
    scales = np.array([fits.getheader(p, 0)["RNSCALE"] for p in corrected])
    ratios = np.array([fits.getheader(p, 0)["SKYRATIO"] for p in corrected])
    print("RNSCALE:", scales, "SKYRATIO:", np.round(ratios, 3))
    assert np.mean(scales == 1.0) >= 0.8
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)


def truth_noise_ratios(root, err_name="mosaic_i2d.fits"):
    """Pixel and 0.2" aperture scatter of (SCI - truth) over ERR on pixels the truth says are source-free."""
    from astropy.io import fits
    from scipy.ndimage import maximum_filter

    with fits.open(root / "mosaic_i2d.fits") as raw, fits.open(root / err_name) as other:
        sci, wht = raw["SCI"].data.astype(float), raw["WHT"].data
        err = other["ERR"].data.astype(float)
        header = other[0].header
    truth = np.nan_to_num(fits.getdata(root / "truth_mosaic.fits", "SCI").astype(float))
    good = (wht > 0) & np.isfinite(sci) & np.isfinite(err)
    free = good & (maximum_filter(truth, 11) < 0.03 * np.median(err[good]))
    residual = sci - truth
    residual -= np.median(residual[free])
    pixel = correlated_noise.robust_std(residual[free] / err[free])
    aperture, n = correlated_noise.aperture_ratio(residual, err, free, 0.1 / 0.031)
    return pixel, aperture, n, header


def test_err_predicts_pixel_and_aperture_noise_after_the_corrections(deep_field):
    root, _ = deep_field
    pixel_raw, aperture_raw, n, _ = truth_noise_ratios(root)
    pixel, aperture, _, header = truth_noise_ratios(root, "corrected_i2d.fits")
    aperture_predicted = aperture / header["NCORRFAC"]  # aperture errors: sqrt(sum w^2 ERR^2) x NCORRFAC
    print(
        f'truth: pixel scatter/ERR {pixel_raw:.3f} before, {pixel:.3f} after; 0.2" apertures ({n}) '
        f"{aperture_raw:.3f} before, {aperture_predicted:.3f} after (NCORRFAC {header['NCORRFAC']:.3f}, "
        f"NCPIXRAT {header['NCPIXRAT']:.3f}, NCAPRAT {header['NCAPRAT']:.3f})"
    )
    assert n > 500
    assert pixel == pytest.approx(1.0, abs=0.1)
    assert aperture_predicted == pytest.approx(1.0, abs=0.1)
    # without the correlation correction ERR overstates the pixel scatter by the drizzle's correlation
    assert pixel_raw < 0.8
    assert header["NCORRFAC"] > 1.2 and header["NCAPPLY"] == "pixel"


def test_zero_variances_leave_no_holes_in_the_mosaic_error(deep_field):
    """CEERS Sect. 3.3.2: an exact zero in VAR_POISSON drags the drizzled variance down unless it becomes inf.

    (A zero VAR_RNOISE already gets no weight in jwst 3.0.) With inf the pixel's variance is left
    out of the weighted variance sum, so the region is never shown less noisy than around it.
    """
    from stdatamodels.jwst import datamodels

    import resample_mosaic

    root, corrected = deep_field
    grid = json.loads((root / "grid.json").read_text())
    drizzle = {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}
    params = resample_mosaic.resample_parameters(grid, FILTER, drizzle)
    pair = corrected[:1] + corrected[8:9]  # the same detector in two dithers
    errs = {}
    for label, value in (("zero", 0.0), ("inf", np.inf)):
        paths = []
        for i, path in enumerate(pair):
            with datamodels.open(path) as model:
                if i == 0:
                    model.var_poisson[200:260, 200:260] = value
                out = root / f"hole_{label}_{i}.fits"
                model.save(str(out))
                paths.append(str(out))
        mosaic = resample_mosaic.resample(paths, params)
        errs[label] = mosaic
    with datamodels.open(pair[0]) as model:
        ra, dec = model.meta.wcs(230.0, 230.0)
    x, y = errs["zero"].meta.wcs.world_to_pixel_values(ra, dec)
    x, y = int(round(float(x))), int(round(float(y)))
    hole = np.s_[y - 10 : y + 10, x - 10 : x + 10]
    ring = np.s_[y - 80 : y + 80, x + 60 : x + 100]
    zero_ratio = np.nanmedian(errs["zero"].var_poisson[hole]) / np.nanmedian(errs["zero"].var_poisson[ring])
    inf_ratio = np.nanmedian(errs["inf"].var_poisson[hole]) / np.nanmedian(errs["inf"].var_poisson[ring])
    print(f"drizzled VAR_POISSON in the hole / around it: zeros {zero_ratio:.2f}, inf {inf_ratio:.2f}")
    assert zero_ratio < 0.8
    assert inf_ratio > 0.95
