"""MIRI off-field background (scripts/miri_background.py): the stack, the pairing, and the
residual noise after subtraction on small synthetic exposures with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

import miri_background as mb
from wflib import wfutils

SHAPE = (64, 80)
NOISE = 0.08  # MJy/sr per pixel
LYOT = (slice(40, 62), slice(2, 20))
IMAGER = (slice(0, 64), slice(28, 80))


def detector_dq() -> np.ndarray:
    """MIRI-like DQ: imager and Lyot regions usable, the rest DO_NOT_USE + NON_SCIENCE."""
    dq = np.full(SHAPE, 1 | 512, np.uint32)
    dq[LYOT] = 0
    dq[IMAGER] = 0
    return dq


def pattern() -> np.ndarray:
    """Fixed detector pattern of the background (flat-field structure x thermal level), MJy/sr."""
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return 5.0 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0)


def make_exposure(path, data, mid_mjd, visit, filter_name="F770W", instrument="MIRI"):
    from stdatamodels.jwst import datamodels

    dq = detector_dq()
    data = np.where((dq & 1) > 0, np.nan, data)
    model = datamodels.ImageModel(data.astype(np.float32))
    model.dq = dq
    var = np.where((dq & 1) > 0, np.nan, NOISE**2 / 2)
    model.var_poisson = var.astype(np.float32)
    model.var_rnoise = var.astype(np.float32)
    model.var_flat = np.zeros(SHAPE, np.float32)
    model.err = np.sqrt(model.var_poisson + model.var_rnoise)
    model.meta.instrument.name = instrument
    model.meta.instrument.filter = filter_name
    model.meta.instrument.detector = "MIRIMAGE"
    model.meta.exposure.type = "MIR_IMAGE"
    model.meta.exposure.mid_time = mid_mjd
    model.meta.observation.visit_id = visit
    model.meta.bunit_data = "MJy/sr"
    w = model.meta.wcsinfo
    w.ctype1, w.ctype2 = "RA---TAN", "DEC--TAN"
    w.crval1, w.crval2, w.crpix1, w.crpix2 = 24.17, 15.78, 40.0, 32.0
    w.cdelt1, w.cdelt2 = -0.11 / 3600, 0.11 / 3600
    w.cunit1 = w.cunit2 = "deg"
    w.pc1_1, w.pc1_2, w.pc2_1, w.pc2_2 = 1.0, 0.0, 0.0, 1.0
    model.save(str(path))
    return path


def add_sources(image, rng, n=6):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    for _ in range(n):
        x0, y0, amp = rng.uniform(0, SHAPE[1]), rng.uniform(0, SHAPE[0]), rng.uniform(1, 10)
        image = image + amp * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / 1.5**2)
    return image


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    """Two off-field visits (4 dithers each, one 6 h before the science, one 2 days before) and
    4 science exposures: background = pattern + per-exposure offset (+ Lyot extra level)."""
    rng = np.random.default_rng(21)
    root = tmp_path_factory.mktemp("bkg")
    lyot = np.zeros(SHAPE, bool)
    lyot[LYOT] = True
    off, sci, truth = [], [], {}
    for visit, mjd in (("09001001001", 60000.0), ("09001001002", 60001.75)):
        for k in range(4):
            level = pattern() + rng.normal(0, 0.1) + np.where(lyot, 0.3 + rng.normal(0, 0.05), 0.0)
            data = add_sources(level, rng) + rng.normal(0, NOISE, SHAPE)
            off.append(
                make_exposure(root / f"jw{visit}_02201_0000{k + 1}_mirimage_cal.fits", data, mjd + k / 1440, visit)
            )
    sky = add_sources(np.zeros(SHAPE), rng, 30) + 2.0
    for k in range(4):
        offset = rng.normal(0, 0.1)
        data = sky + pattern() + offset + np.where(lyot, 0.3, 0.0) + rng.normal(0, NOISE, SHAPE)
        name = f"jw09001002001_02101_0000{k + 1}_mirimage"
        sci.append(make_exposure(root / f"{name}_cal.fits", data, 60002.0 + k / 1440, "09001002001"))
        truth[name] = sky
    return root, sci, off, truth


# ----------------------------------------------------------------------------- pure functions
def test_clipped_median_stack_rejects_sources_and_keeps_the_pattern():
    rng = np.random.default_rng(22)
    frames = np.array([pattern() + rng.normal(0, NOISE, SHAPE) for _ in range(8)])
    frames[3, 10:15, 10:15] += 50.0  # a star in one dither
    frames[5, 30:33, 40:43] = np.nan
    background, n_used = mb.combine_background(frames, clip_sigma=1.5)
    resid = background - pattern()
    assert abs(resid[10:15, 10:15].mean()) < 3 * NOISE / np.sqrt(7)
    assert np.std(resid) < 1.55 * NOISE / np.sqrt(8)  # 1.5-sigma clip + median: ~1.45x the ideal mean
    assert n_used.max() <= 8 and n_used[31, 41] <= 7


def test_frames_are_normalised_region_by_region():
    rng = np.random.default_rng(23)
    regions = mb.science_regions(detector_dq())
    assert len(regions) == 2  # imager and Lyot parts
    offsets = rng.normal(0, 0.1, (4, 2))
    cube = np.array([pattern() + offsets[k, 0] * regions[0] + offsets[k, 1] * regions[1] for k in range(4)])
    out, shifts = mb.normalize_frames(cube, regions)
    assert np.allclose(shifts, offsets - offsets.mean(axis=0), atol=1e-6)
    assert np.allclose(out[0][regions[0]], out[3][regions[0]], atol=1e-6)


def test_pairing_by_time_explicit_and_all():
    sci = {"a": ("S1", 60002.0), "b": ("S2", 60010.0)}
    off = {"O1": 60001.9, "O2": 60009.5, "O3": 60003.0}
    params = dict(mb.DEFAULTS)
    assert mb.pair_visits(sci, off, params) == {"a": ("O1",), "b": ("O2",)}
    assert mb.pair_visits(sci, off, {**params, "n_visits": 2})["a"] == ("O1", "O3")
    explicit = {**params, "pairing": "explicit", "pairs": {"S1": ["O3"], "S2": ["O1", "O2"]}}
    assert mb.pair_visits(sci, off, explicit) == {"a": ("O3",), "b": ("O1", "O2")}
    assert mb.pair_visits(sci, off, {**params, "pairing": "all"})["a"] == ("O1", "O2", "O3")
    with pytest.raises(wfutils.InputError, match="S2 has no entry"):
        mb.pair_visits(sci, off, {**params, "pairing": "explicit", "pairs": {"S1": ["O1"]}})


def test_fill_holes_only_inside_the_science_regions():
    image = np.ones((20, 20))
    image[5:8, 5:8] = np.nan
    where = np.zeros((20, 20), bool)
    where[:, :15] = True
    image[:, 16:] = np.nan
    out = mb.fill_holes(image, where)
    assert np.all(out[5:8, 5:8] == 1.0) and np.all(np.isnan(out[:, 16:]))


# ----------------------------------------------------------------------------- command line
def test_residual_background_is_at_the_noise_level(exposures, tmp_path, capsys):
    from astropy.io import fits
    from astropy.stats import sigma_clipped_stats

    root, sci, off, truth = exposures
    report_path = tmp_path / "pairs.json"
    mb.main(
        [
            *map(str, sci),
            "--offfield",
            *map(str, off),
            "--out-dir",
            str(tmp_path / "out"),
            "--report",
            str(report_path),
            "--background-dir",
            str(tmp_path / "bkg"),
            "--params",
            json.dumps({"max_time_gap_hours": 2.0}),
        ]
    )
    report = json.loads(report_path.read_text())
    assert {tuple(e["offfield_visits"]) for e in report["science"]} == {("09001001002",)}  # closest in time
    assert "MIRI backgrounds vary in time" in capsys.readouterr().err  # 6 h > 2 h: warned
    assert len(list((tmp_path / "bkg").glob("*_bkg.fits"))) == 1
    regions = mb.science_regions(detector_dq())
    expected = NOISE * np.sqrt(1 + 1 / 4)  # science noise plus an ideal mean of 4 off-field frames
    for path in sci:
        out = fits.getdata(tmp_path / "out" / path.name, "SCI").astype(float)
        resid = out - truth[path.name.replace("_cal.fits", "")]
        for region in regions:
            _, _, std = sigma_clipped_stats(resid[region] - np.nanmedian(resid[region]), sigma=5)
            assert std < 1.2 * expected
        with fits.open(tmp_path / "out" / path.name) as hdul, fits.open(path) as before:
            assert np.nanmedian(hdul["VAR_RNOISE"].data) > np.nanmedian(before["VAR_RNOISE"].data)
            assert hdul[0].header["WFSTEP"] == "miri_background"


def test_wrong_instrument_and_band_are_refused(exposures, tmp_path):
    rng = np.random.default_rng(24)
    root, sci, off, _ = exposures
    nircam = make_exposure(
        tmp_path / "nrc_cal.fits", pattern() + rng.normal(0, NOISE, SHAPE), 60002.0, "V", instrument="NIRCAM"
    )
    with pytest.raises(wfutils.InputError, match="nrc_cal.fits: instrument is NIRCAM, expected MIRI"):
        mb.main([str(nircam), "--offfield", *map(str, off), "--out-dir", str(tmp_path / "o")])
    other = make_exposure(tmp_path / "f1000w_cal.fits", pattern(), 60002.0, "V", filter_name="F1000W")
    with pytest.raises(wfutils.InputError, match="share one filter"):
        mb.main([str(other), "--offfield", *map(str, off), "--out-dir", str(tmp_path / "o")])
