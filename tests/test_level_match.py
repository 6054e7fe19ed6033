"""Level matching (scripts/level_match.py): the least-squares solve, the pair cuts, the two stages,
and the edge cases of issue #4 on small synthetic images with known offsets."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import level_match as lm
from wflib import wfutils


# ----------------------------------------------------------------------------- helpers
def galaxy_sky(shape=(160, 200), seed=1) -> np.ndarray:
    """Bright extended emission filling the field plus compact sources (MJy/sr)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(xx - shape[1] / 2, (yy - shape[0] / 2) / 0.8)
    sky = 20.0 * np.exp(-r / 40.0) + 3.0 * np.exp(
        -0.5 * ((np.sin(np.arctan2(yy - 80, xx - 100) * 2 - r / 15)) / 0.3) ** 2
    )
    for _ in range(150):
        x0, y0, amp, s = rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), rng.uniform(1, 200), rng.uniform(0.7, 2.5)
        sky += amp * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
    return sky


def cutouts(sky, boxes, offsets, rng, noise=0.05, holes=True, cosmic_rays=True):
    """Images (lm.Projected) cut from ``sky`` at (y0, x0, ny, nx) with offsets, noise, NaN holes, outliers."""
    items = []
    for (y0, x0, ny, nx), off in zip(boxes, offsets, strict=True):
        img = sky[y0 : y0 + ny, x0 : x0 + nx] + off + rng.normal(0, noise, (ny, nx))
        if holes:
            img[rng.uniform(0, 1, img.shape) < 0.01] = np.nan
            img[5:12, 5:15] = np.nan
        if cosmic_rays:
            hits = rng.uniform(0, 1, img.shape) < 0.005
            img[hits] += rng.uniform(5, 50, hits.sum())
        items.append(lm.Projected(img, y0, x0))
    return items


def make_model(path, data, crpix, visit="09001002001", dq=None, filter_name="F770W", instrument="MIRI"):
    """Small calibrated ImageModel on a north-up TAN WCS (0.11 arcsec pixels) for the CLI tests."""
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel(np.asarray(data, np.float32))
    model.dq = np.zeros(data.shape, np.uint32) if dq is None else dq.astype(np.uint32)
    model.err = np.full(data.shape, 0.05, np.float32)
    model.meta.instrument.name = instrument
    model.meta.instrument.filter = filter_name
    model.meta.instrument.detector = "MIRIMAGE" if instrument == "MIRI" else "NRCA1"
    model.meta.exposure.type = "MIR_IMAGE" if instrument == "MIRI" else "NRC_IMAGE"
    model.meta.observation.visit_id = visit
    model.meta.bunit_data = "MJy/sr"
    w = model.meta.wcsinfo
    w.ctype1, w.ctype2 = "RA---TAN", "DEC--TAN"
    w.crval1, w.crval2 = 24.17, 15.78
    w.crpix1, w.crpix2 = crpix
    w.cdelt1, w.cdelt2 = -0.11 / 3600, 0.11 / 3600
    w.cunit1 = w.cunit2 = "deg"
    w.pc1_1, w.pc1_2, w.pc2_1, w.pc2_2 = 1.0, 0.0, 0.0, 1.0
    model.save(str(path))
    return path


def cli_images(tmp_path, sky, boxes, offsets, rng, visits=None, noise=0.02):
    """Write one FITS image per box of ``sky``; the WCS places each cutout at its box (integer pixels)."""
    paths = []
    for k, ((y0, x0, ny, nx), off) in enumerate(zip(boxes, offsets, strict=True)):
        data = sky[y0 : y0 + ny, x0 : x0 + nx] + off + rng.normal(0, noise, (ny, nx))
        visit = visits[k] if visits else "09001002001"
        # pixel (i, j) of the cutout is sky pixel (y0 + i, x0 + j); the sky's pixel (0, 0) sits at crpix 1, 1
        paths.append(make_model(tmp_path / f"img{k:02d}_cal.fits", data, (1.0 - x0, 1.0 - y0), visit))
    return paths


def run_cli(tmp_path, paths, params=None):
    argv = [*map(str, paths), "--out-dir", str(tmp_path / "out"), "--report", str(tmp_path / "report.json")]
    argv += ["--qa-png", str(tmp_path / "graph.png")]
    if params:
        argv += ["--params", json.dumps(params)]
    lm.main(argv)
    return json.loads((tmp_path / "report.json").read_text())


def demeaned(values):
    values = np.asarray(values, float)
    return values - values.mean()


# ----------------------------------------------------------------------------- the linear solve
def random_graph(n, n_pairs, rng, model="offset"):
    truth = rng.normal(0, 0.1, n)
    pairs, seen = [], set()
    for i in range(n - 1):  # a spanning chain keeps the graph connected
        seen.add((i, i + 1))
    while len(seen) < n_pairs:
        i, j = sorted(rng.choice(n, 2, replace=False))
        seen.add((int(i), int(j)))
    for i, j in sorted(seen):
        rms = rng.uniform(0.05, 0.3)
        n_pix = int(rng.integers(200, 5000))
        d = truth[i] - truth[j] + rng.normal(0, 0.01)
        pair = lm.Pair(i=i, j=j, n_pixels=n_pix, offset=d, rms=rms, frac_x=1, frac_y=1)
        if model == "plane":
            pair.cells = [(float(u), float(v), d + rng.normal(0, 0.01), 100) for u, v in rng.uniform(-1, 1, (4, 2))]
        pairs.append(pair)
    return truth, pairs


@pytest.mark.parametrize("weighting", ["rms", "error"])
@pytest.mark.parametrize("model", ["offset", "plane"])
def test_least_squares_equals_numpy_lstsq(weighting, model):
    """The sparse lsqr solution is the weighted least-squares solution numpy.linalg.lstsq finds."""
    rng = np.random.default_rng(3)
    n = 12
    _, pairs = random_graph(n, 30, rng, model)
    n_terms = lm.MODEL_TERMS[model]
    ours, info = lm.solve_offsets(n, pairs, model, "mean", None, weighting)
    rows = info["rows"]
    design = np.zeros((len(rows), n * n_terms))
    rhs = np.zeros(len(rows))
    for r, (i, j, basis, value, weight) in enumerate(rows):
        for t, coef in enumerate(basis):
            design[r, i * n_terms + t] += np.sqrt(weight) * coef
            design[r, j * n_terms + t] -= np.sqrt(weight) * coef
        rhs[r] = np.sqrt(weight) * value
    if model == "offset":
        assert np.allclose(rhs, [np.sqrt(lm.pair_weight(p, weighting)) * p.offset for p in pairs])
    # zero-mean gauge: one exact constraint row per term
    gauge = np.zeros((n_terms, n * n_terms))
    for t in range(n_terms):
        gauge[t, t::n_terms] = 1.0
    reference, *_ = np.linalg.lstsq(np.vstack([design, gauge]), np.concatenate([rhs, np.zeros(n_terms)]), rcond=None)
    assert np.allclose(ours.ravel(), reference, atol=1e-9)
    # reference gauge: image 4 held at zero, the others solved by lstsq on the remaining columns
    ours_ref, _ = lm.solve_offsets(n, pairs, model, "reference", 4, weighting)
    keep = [c for c in range(n * n_terms) if c // n_terms != 4]
    sol, *_ = np.linalg.lstsq(design[:, keep], rhs, rcond=None)
    expected = np.zeros(n * n_terms)
    expected[keep] = sol
    assert np.allclose(ours_ref.ravel(), expected, atol=1e-9)
    assert np.allclose(ours_ref[4], 0.0)


def test_consistent_pairs_are_solved_exactly():
    rng = np.random.default_rng(4)
    truth, pairs = random_graph(9, 20, rng)
    for p in pairs:
        p.offset = truth[p.i] - truth[p.j]
    sol, _ = lm.solve_offsets(9, pairs)
    assert np.allclose(sol[:, 0], demeaned(truth), atol=1e-10)
    assert abs(sol[:, 0].sum()) < 1e-10


def test_pair_error_counts_correlated_pixels():
    """Resampled pixels are correlated: rms/sqrt(n) understates the scatter of a pair's median,
    the chunk estimate does not (200 noise draws of a 40 x 300 strip smoothed over 3 x 3 pixels)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(3)
    params = {**lm.DEFAULTS}
    offsets, errors, independent = [], [], []
    for _ in range(200):
        noise = uniform_filter(rng.normal(0, 0.3, (2, 40, 300)), size=(1, 3, 3), mode="reflect")
        pair = lm.measure_pair(lm.Projected(noise[0], 0, 0), lm.Projected(noise[1], 0, 0), 0, 1, params)
        offsets.append(pair.offset)
        errors.append(pair.error)
        independent.append(lm.independent_error(pair.rms, pair.n_pixels, "median"))
    scatter = np.std(offsets)
    assert np.median(errors) == pytest.approx(scatter, rel=0.2)
    assert np.median(independent) < scatter / 2


def test_pair_cuts_follow_the_paper_thresholds():
    params = dict(lm.DEFAULTS)
    big = [lm.Pair(0, k, 10000, 0.0, 0.10 + 0.001 * k, 0.9, 0.9) for k in range(1, 6)]
    tiny = lm.Pair(1, 2, 15, 0.0, 0.1, 0.5, 0.5)  # 0.15% of the mean overlap
    corner = lm.Pair(2, 3, 3000, 0.0, 0.1, 0.15, 0.2)  # diagonal corner overlap
    noisy = lm.Pair(3, 4, 8000, 0.0, 0.5, 0.9, 0.9)
    pairs = [*big, tiny, corner, noisy]
    lm.reject_pairs(pairs, params)
    assert all(p.kept for p in big)
    assert not tiny.kept and "mean overlap" in tiny.reason
    assert not corner.kept and "both axes" in corner.reason
    assert not noisy.kept and "RMS" in noisy.reason
    disabled = {**params, "min_overlap_fraction": None, "min_axis_fraction": None, "max_rms_sigma": None}
    pairs = [lm.Pair(**{**p.__dict__, "kept": True, "reason": ""}) for p in pairs]
    lm.reject_pairs(pairs, disabled)
    assert all(p.kept for p in pairs)


def test_rms_cut_never_disconnects_the_graph():
    """A noisy pair that is the only link of an image (a Lyot stack) is kept, with the reason; one
    with an alternative path is rejected; the solution of the rest does not change."""
    params = dict(lm.DEFAULTS)
    ring = [lm.Pair(k, (k + 1) % 10, 10000, 0.01 * k, 0.10 + 0.001 * k, 0.9, 0.9) for k in range(10)]
    noisy_redundant = lm.Pair(0, 2, 8000, 0.5, 0.5, 0.9, 0.9)
    noisy_bridge = lm.Pair(4, 10, 8000, 0.2, 0.45, 0.9, 0.9)  # image 10 overlaps only image 4
    pairs = [*ring, noisy_redundant, noisy_bridge]
    lm.reject_pairs(pairs, params)
    assert all(p.kept for p in ring)
    assert not noisy_redundant.kept and noisy_redundant.reason.startswith("difference RMS")
    assert noisy_bridge.kept and "only link" in noisy_bridge.reason
    assert lm.connected_components(11, pairs) == [list(range(11))]
    with_bridge, _ = lm.solve_offsets(11, pairs)
    without, _ = lm.solve_offsets(10, [*ring, noisy_redundant])
    # image 10 sits 0.2 below image 4; the ring's offsets only shift by the common gauge
    assert with_bridge[4, 0] - with_bridge[10, 0] == pytest.approx(0.2)
    assert np.allclose(np.diff(with_bridge[:10, 0]), np.diff(without[:, 0]))


# ----------------------------------------------------------------------------- two stages on arrays
def test_two_stage_matching_recovers_offsets_in_bright_emission():
    """2x2 tiles x 4 dithers over emission that fills every overlap, with noise, NaN holes and
    cosmic rays: offsets of ~0.1 MJy/sr are recovered to the noise-limited precision."""
    rng = np.random.default_rng(5)
    sky = galaxy_sky()
    boxes, groups = [], []
    for t, (ty, tx) in enumerate([(0, 0), (0, 90), (70, 0), (70, 90)]):
        for dy, dx in [(0, 0), (4, 9), (10, 3), (13, 12)]:
            boxes.append((ty + dy, tx + dx, 75, 95))
            groups.append(f"visit{t}")
    truth = rng.normal(0, 0.1, len(boxes))
    items = cutouts(sky, boxes, truth, rng)
    names = [f"img{k}" for k in range(len(items))]
    params = {**lm.DEFAULTS, "weighting": "error"}
    result = lm.match_levels(items, names, groups, params)
    err = demeaned(result["parameters"][:, 0] - truth)
    assert np.sqrt(np.mean(err**2)) < 0.002
    stages = [s["stage"] for s in result["stages"]]
    assert stages == ["visit", "mosaic"]
    # the diagonal tile overlaps are rejected by the 25 %-along-an-axis cut
    mosaic_pairs = result["stages"][1]["_pairs"]
    assert any(not p.kept and "both axes" in p.reason for p in mosaic_pairs)


def test_one_bad_exposure_with_a_huge_offset_does_not_corrupt_the_others():
    rng = np.random.default_rng(6)
    sky = galaxy_sky()
    boxes = [(0, 0, 90, 110), (5, 12, 90, 110), (12, 4, 90, 110), (15, 20, 90, 110), (8, 30, 90, 110)]
    truth = rng.normal(0, 0.1, len(boxes))
    truth[2] = 500.0  # garbage level
    items = cutouts(sky, boxes, truth, rng)
    items[2].array[::7] += rng.normal(0, 30, items[2].array[::7].shape)  # and badly striped
    result = lm.match_levels(items, [f"i{k}" for k in range(5)], ["v"] * 5, dict(lm.DEFAULTS))
    good = [0, 1, 3, 4]
    recovered = result["parameters"][good, 0]
    assert np.allclose(demeaned(recovered - truth[good]), 0.0, atol=0.004)


def test_disconnected_graph_is_split_into_components_with_a_warning(caplog):
    rng = np.random.default_rng(7)
    sky = galaxy_sky()
    boxes = [(0, 0, 50, 60), (4, 8, 50, 60), (100, 130, 50, 60), (104, 135, 50, 60)]
    truth = np.array([0.1, -0.1, 0.3, 0.5])
    items = cutouts(sky, boxes, truth, rng)
    with caplog.at_level(logging.WARNING, logger="level_match"):
        result = lm.match_levels(items, ["a", "b", "c", "d"], ["v"] * 4, {**lm.DEFAULTS, "stages": ["visit"]})
    group = result["stages"][0]["groups"][0]
    assert group["components"] == [["a", "b"], ["c", "d"]]
    assert "disconnected" in caplog.text and "2 components" in caplog.text
    sol = result["parameters"][:, 0]
    # each component is solved on its own, zero mean inside it
    assert sol[0] - sol[1] == pytest.approx(0.2, abs=0.01) and sol[0] + sol[1] == pytest.approx(0.0, abs=1e-9)
    assert sol[2] - sol[3] == pytest.approx(-0.2, abs=0.01) and sol[2] + sol[3] == pytest.approx(0.0, abs=1e-9)


def test_plane_model_recovers_slopes():
    rng = np.random.default_rng(8)
    sky = galaxy_sky()
    boxes = [(0, 0, 90, 110), (6, 14, 90, 110), (14, 5, 90, 110), (20, 25, 90, 110), (30, 40, 90, 110)]
    planes = rng.normal(0, [0.1, 0.2, 0.2], (len(boxes), 3))  # offset, slopes per arcmin
    items = []
    centre = (80.0, 100.0)
    pixel = 0.5  # arcsec per grid pixel -> slopes of 0.2 / arcmin give ~0.1 MJy/sr across an image
    for (y0, x0, ny, nx), plane in zip(boxes, planes, strict=True):
        yy, xx = np.mgrid[y0 : y0 + ny, x0 : x0 + nx]
        u, v = (xx - centre[1]) * pixel / 60.0, (yy - centre[0]) * pixel / 60.0
        img = sky[y0 : y0 + ny, x0 : x0 + nx] + plane[0] + plane[1] * u + plane[2] * v
        items.append(lm.Projected(img + rng.normal(0, 0.02, img.shape), y0, x0))
    params = {**lm.DEFAULTS, "model": "plane", "stages": ["visit"], "plane_cells": 4}
    result = lm.match_levels(items, [f"i{k}" for k in range(5)], ["v"] * 5, params, centre, pixel)
    got = result["parameters"]
    assert np.allclose(got - got.mean(axis=0), planes - planes.mean(axis=0), atol=0.01)


# ----------------------------------------------------------------------------- command line and edge cases
def test_cli_matches_files_and_ignores_flagged_pixels(tmp_path):
    """Files in, level-matched copies out; garbage in DQ-flagged (not NaN) pixels does not bias the solution."""
    from astropy.io import fits
    from stdatamodels.jwst.datamodels import dqflags

    rng = np.random.default_rng(9)
    sky = galaxy_sky()
    boxes = [(0, 0, 80, 100), (5, 10, 80, 100), (12, 3, 80, 100), (60, 80, 80, 100), (65, 90, 80, 100)]
    truth = np.array([0.05, -0.12, 0.2, -0.07, 0.1])
    visits = ["09001002001"] * 3 + ["09001002002"] * 2
    paths = cli_images(tmp_path, sky, boxes, truth, rng, visits)
    # flag a block of pixels in one image and fill it with garbage
    with fits.open(paths[1], mode="update") as hdul:
        hdul["SCI"].data[20:50, 30:70] = 1e4
        hdul["DQ"].data[20:50, 30:70] |= dqflags.pixel["DO_NOT_USE"]
    report = run_cli(tmp_path, paths, {"weighting": "error"})
    recovered = np.array([im["offset_mjysr"] for im in report["images"]])
    assert np.allclose(demeaned(recovered - truth), 0.0, atol=0.003)
    assert {s["stage"] for s in report["stages"]} == {"visit", "mosaic"}
    assert (tmp_path / "graph.png").stat().st_size > 1000
    for path, offset in zip(paths, recovered, strict=True):
        before = fits.getdata(path, "SCI")
        after = fits.getdata(tmp_path / "out" / path.name, "SCI")
        good = np.isfinite(before)
        assert np.allclose(after[good], before[good] - offset, atol=1e-4)
        assert fits.getheader(tmp_path / "out" / path.name, 0)["WFSTEP"] == "level_match"


def test_single_image_gets_zero_offset(tmp_path):
    rng = np.random.default_rng(10)
    paths = cli_images(tmp_path, galaxy_sky(), [(0, 0, 60, 70)], [0.3], rng)
    report = run_cli(tmp_path, paths)
    assert report["images"][0]["offset_mjysr"] == 0.0
    assert (tmp_path / "out" / paths[0].name).exists()


def test_two_images_without_overlap_are_reported_as_separate_components(tmp_path, capsys):
    rng = np.random.default_rng(11)
    paths = cli_images(tmp_path, galaxy_sky(), [(0, 0, 50, 60), (100, 130, 50, 60)], [0.3, -0.2], rng)
    report = run_cli(tmp_path, paths, {"stages": ["mosaic"]})
    assert [im["offset_mjysr"] for im in report["images"]] == [0.0, 0.0]
    assert report["warnings"] and "2 components" in report["warnings"][0]
    assert "WARNING level_match: mosaic: overlap graph is disconnected" in capsys.readouterr().err


def test_nan_filled_overlap_counts_as_no_overlap(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(12)
    boxes = [(0, 0, 60, 80), (0, 50, 60, 80)]  # 30 columns overlap
    paths = cli_images(tmp_path, galaxy_sky(), boxes, [0.3, -0.2], rng)
    with fits.open(paths[0], mode="update") as hdul:
        hdul["SCI"].data[:, 45:] = np.nan  # the whole overlap (plus margin for interpolation) is NaN
    report = run_cli(tmp_path, paths, {"stages": ["mosaic"]})
    stage = report["stages"][0]
    assert len(stage["components"]) == 2
    assert all(im["offset_mjysr"] == 0.0 for im in report["images"])
    assert all(not p["kept"] for p in stage["pairs"])


def test_bad_inputs_fail_with_a_message_naming_the_file(tmp_path):
    rng = np.random.default_rng(13)
    sky = galaxy_sky()
    good = cli_images(tmp_path, sky, [(0, 0, 40, 40)], [0.0], rng)[0]
    other_band = make_model(tmp_path / "f1000w_cal.fits", sky[:40, :40], (1.0, 1.0), filter_name="F1000W")
    with pytest.raises(wfutils.InputError, match="mix filters"):
        run_cli(tmp_path, [good, other_band])
    empty = make_model(tmp_path / "empty_cal.fits", np.full((40, 40), np.nan), (1.0, 1.0))
    with pytest.raises(wfutils.InputError, match="empty_cal.fits: no usable pixel"):
        run_cli(tmp_path, [good, empty])
    with pytest.raises(wfutils.InputError, match="overwrite the input"):
        lm.main([str(good), "--out-dir", str(tmp_path), "--report", str(tmp_path / "r.json")])
    with pytest.raises(wfutils.InputError, match="unknown parameter"):
        run_cli(tmp_path, [good], {"wieghting": "rms"})
