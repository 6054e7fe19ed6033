"""Output-tiled drizzle and outlier detection (issue 6): tiles gathered == jwst's single pass; flags == jwst's."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import drizzle_tile
import flag_outliers
import gather_tiles
import median_tile
import mosaic_tiles
import simulate_survey as sim

FILTER = "F200W"
TILE = 700  # the 1285 x 1373 grid of the test survey -> 2 x 2 tiles
SMALL_TILE = 460  # -> 3 x 3 tiles: the middle one has no edge on the grid
OD = {"snr": "5.0 4.0", "scale": "2.0 1.5", "maskpt": 0.7}


# ----------------------------------------------------------------------------- tile geometry (pure)
@pytest.mark.parametrize("shape, size", [((1373, 1285), 700), ((100, 4097), 2048), ((5, 7), 16), ((47, 33), 16)])
def test_tiles_cover_the_grid_once_and_are_at_most_the_tile_size(shape, size):
    spec = {"shape": list(shape)}
    tiles = mosaic_tiles.tile_layout(spec, size)
    cover = np.zeros(shape, int)
    for k, t in enumerate(tiles):
        assert t.index == k
        assert min(shape[1], size // 2) <= t.x1 - t.x0 <= size
        assert min(shape[0], size // 2) <= t.y1 - t.y0 <= size
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert (cover == 1).all()
    assert len(tiles) == mosaic_tiles.tile_count(spec, size)


def test_tile_count_needs_only_the_grid_json():
    grid = {"filters": {FILTER: {"shape": [5510, 10724], "pixel_scale": 0.031, "crpix": [0, 0]}}}
    assert mosaic_tiles.tile_count(grid["filters"][FILTER], 4096) == 2 * 3
    assert mosaic_tiles.tile_count(grid["filters"][FILTER], 2048) == 3 * 6


def test_polygon_box_overlap_uses_the_polygon_not_its_bounding_box():
    diamond = np.array([[0.0, 10.0], [10.0, 0.0], [20.0, 10.0], [10.0, 20.0]])
    assert mosaic_tiles.polygon_overlaps_box(diamond, (8, 12, 8, 12))  # centre
    assert not mosaic_tiles.polygon_overlaps_box(diamond, (0, 3, 0, 3))  # inside the bbox, outside the diamond
    assert mosaic_tiles.polygon_overlaps_box(diamond, (0, 6, 0, 6))
    assert not mosaic_tiles.polygon_overlaps_box(diamond, (21, 30, 0, 30))


def test_inputs_overlapping_keeps_band_order_and_respects_the_margin():
    tile = mosaic_tiles.Tile(0, 0, 100, 0, 100)
    square = lambda x0, y0: np.array([[x0, y0], [x0 + 50, y0], [x0 + 50, y0 + 50], [x0, y0 + 50]], float)
    footprints = [("c", square(10, 10)), ("a", square(104, 0)), ("b", square(200, 200))]
    assert mosaic_tiles.inputs_overlapping(tile, footprints, margin=0) == ["c"]
    assert mosaic_tiles.inputs_overlapping(tile, footprints, margin=8) == ["c", "a"]


def test_renumber_context_moves_bits_to_band_indices():
    local = np.zeros((1, 2, 2), np.int32)
    local[0, 0, 0] = 0b01  # local input 0
    local[0, 1, 1] = 0b11  # local inputs 0 and 1
    out = np.zeros((2, 2, 2), np.int32)
    gather_tiles.renumber_context(local, {0: 5, 1: 40}, out)
    assert out[0, 0, 0] == 1 << 5 and out[1, 0, 0] == 0
    assert out[0, 1, 1] == 1 << 5 and out[1, 1, 1] == 1 << (40 - 32)
    assert gather_tiles.context_planes(32) == 1 and gather_tiles.context_planes(33) == 2


def test_time_info_counts_each_exposure_once():
    rec = lambda i, g, t0: {"index": i, "group_id": g, "exposure_time": 100.0, "measurement_time": 90.0,
                            "start_time": t0, "end_time": t0 + 0.01, "duration": 110.0}  # fmt: skip
    info = gather_tiles.time_info([rec(2, "b", 2.0), rec(0, "a", 1.0), rec(1, "a", 1.0)])
    assert info["pointings"] == 2 and info["exposure_time"] == 200.0 and info["measurement_time"] == 180.0
    assert info["start_time"] == 1.0 and info["end_time"] == 2.01


# ----------------------------------------------------------------------------- the simulated band
@pytest.fixture(scope="module")
def survey(tmp_path_factory, workflow_config):
    """Deep-field F200W (3 dithers x 8 SW detectors) at 1/8 scale with cosmic rays; levels already matched."""
    cfg = copy.deepcopy(workflow_config["simulation"])
    cfg["scale"] = 0.125
    for effect in ("one_over_f", "wisps", "snowballs", "persistence", "pointing_errors"):
        cfg["effects"][effect]["enabled"] = False
    cfg["effects"]["background"]["nircam_offset_rms_mjysr"] = 0.0
    cfg["layouts"]["ceers_deep"]["nircam"]["filters"] = [FILTER]
    root = tmp_path_factory.mktemp("tiled")
    target = {"target": "DEEP", "ra": 214.825, "dec": 52.825, "layout": "ceers_deep", "program": 9002}
    common = ["--sim", json.dumps(cfg), "--target", json.dumps(target)]
    sim.main(["sky", *common, "--out-dir", str(root / "truth"), "--references-dir", str(root / "refs")])
    sim.main(["exposures", *common, "--filter", FILTER, "--sky-dir", str(root / "truth"), "--out-dir",
              str(root / "cal"), "--truth-dir", str(root / "truth" / "exp"), "--wisp-dir", str(root / "refs"),
              "--truth-table", str(root / "truth.ecsv")])  # fmt: skip
    paths = [str(p) for p in sorted((root / "cal").glob("*_cal.fits"))]
    import mosaic_grid

    mosaic_grid.main([*paths, "--out", str(root / "grid.json"), "--ra", "214.825", "--dec", "52.825"])
    return root, paths, root / "grid.json"


@pytest.fixture(scope="module")
def single_pass(survey):
    import resample_mosaic

    root, paths, grid_path = survey
    grid = json.loads(grid_path.read_text())
    drizzle = {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}
    params = resample_mosaic.resample_parameters(grid, FILTER, drizzle)
    return resample_mosaic.resample(paths, params)


@pytest.fixture(scope="module")
def tiled(survey):
    """Tiles made both ways: all band inputs on the command line, or the tile table and the listed ones."""
    root, paths, grid_path = survey
    tiles_json = root / "tiles.json"
    mosaic_tiles.main([*paths, "--grid", str(grid_path), "--filter", FILTER, "--tile-size", str(TILE),
                       "--out", str(tiles_json)])  # fmt: skip
    table = json.loads(tiles_json.read_text())
    common = ["--grid", str(grid_path), "--filter", FILTER, "--tile-size", str(TILE)]
    tiles = []
    for row in table["tiles"]:
        out = root / f"tile_{row['index']}.fits"
        if row["index"] % 2:
            inputs = list(dict.fromkeys([table["inputs"][0], *row["inputs"]]))
            drizzle_tile.main([*inputs, *common, "--tile", str(row["index"]), "--tiles", str(tiles_json), "--out",
                               str(out)])  # fmt: skip
        else:
            drizzle_tile.main([*paths, *common, "--tile", str(row["index"]), "--out", str(out)])
        tiles.append(str(out))
    gather_tiles.main([*tiles, "--grid", str(grid_path), "--filter", FILTER, "--out", str(root / "tiled_i2d.fits")])
    from stdatamodels.jwst import datamodels

    return datamodels.open(str(root / "tiled_i2d.fits")), table


def test_tiled_mosaic_equals_the_single_pass_drizzle(single_pass, tiled):
    mosaic, table = tiled
    assert table["ntiles"] == 4
    good = single_pass.wht > 0
    assert good.mean() > 0.2
    for name in ("data", "wht", "err", "var_rnoise", "var_poisson", "var_flat"):
        ours, theirs = getattr(mosaic, name), getattr(single_pass, name)
        assert ours.shape == theirs.shape
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), name
        rel = np.abs(ours[good] - theirs[good]) / np.abs(theirs[good])
        assert np.nanmax(rel) <= 1e-5, f"{name}: max relative difference {np.nanmax(rel):.2e}"
    assert (mosaic.wht[~good] == 0).all()
    assert np.array_equal(mosaic.con, single_pass.con)  # bit i = i-th input of the band, as in jwst


@pytest.fixture(scope="module")
def zero_sky(survey):
    """(single pass, 3 x 3 tiles gathered) of the band with each exposure's median sky subtracted.

    The mosaic then crosses zero, where a relative difference is most sensitive to rounding.
    """
    from stdatamodels.jwst import datamodels

    import resample_mosaic

    root, paths, grid_path = survey
    folder = root / "zero_sky"
    folder.mkdir()
    zeroed = []
    for path in paths:
        with datamodels.open(path) as model:
            model.data = model.data - np.float32(np.nanmedian(model.data))
            zeroed.append(str(folder / path.rsplit("/", 1)[-1]))
            model.save(zeroed[-1])
    grid = json.loads(grid_path.read_text())
    drizzle = {"pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"}
    single = resample_mosaic.resample(zeroed, resample_mosaic.resample_parameters(grid, FILTER, drizzle))
    common = ["--grid", str(grid_path), "--filter", FILTER, "--tile-size", str(SMALL_TILE)]
    tiles = []
    for k in range(mosaic_tiles.tile_count(grid["filters"][FILTER], SMALL_TILE)):
        tiles.append(str(folder / f"tile_{k}.fits"))
        drizzle_tile.main([*zeroed, *common, "--tile", str(k), "--out", tiles[-1]])
    gather_tiles.main([*tiles, "--grid", str(grid_path), "--filter", FILTER, "--out", str(folder / "tiled_i2d.fits")])
    return single, datamodels.open(str(folder / "tiled_i2d.fits"))


def test_tile_pixel_maps_are_the_single_pass_maps_minus_the_tile_origin(survey, single_pass):
    from stcal.resample.utils import calc_pixmap

    _, paths, grid_path = survey
    grid = json.loads(grid_path.read_text())
    tile = mosaic_tiles.tile_of(grid["filters"][FILTER], SMALL_TILE, 4)
    assert tile.x0 > 0 and tile.y0 > 0
    with drizzle_tile.open_input(paths[0]) as ref, drizzle_tile.open_input(paths[9]) as model:
        wcs = mosaic_tiles.tile_wcs(grid, FILTER, tile, ref.meta.wcs, ref.meta.wcsinfo.instance)
        ours = calc_pixmap(model.meta.wcs, wcs, model.data.shape)
        theirs = calc_pixmap(model.meta.wcs, single_pass.meta.wcs, model.data.shape)
    assert wcs.array_shape == tile.shape
    assert np.isfinite(ours).all()
    assert np.array_equal(ours, theirs - [tile.x0, tile.y0])  # bit for bit


def test_tiled_mosaic_equals_the_single_pass_where_the_sky_crosses_zero(zero_sky):
    single, mosaic = zero_sky
    good = single.wht > 0
    ours, theirs = mosaic.data[good].astype(np.float64), single.data[good].astype(np.float64)
    near_zero = np.abs(theirs) < 1e-3 * np.nanmedian(single.err[good])
    assert near_zero.sum() > 100
    assert np.array_equal(np.isnan(mosaic.data), np.isnan(single.data))
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 where both are exactly 0
        rel = np.abs(ours - theirs) / np.abs(theirs)
    print(f"SCI: {np.count_nonzero(ours != theirs)} of {good.sum()} pixels not bit-identical, max relative "
          f"difference {np.nanmax(rel):.2e} ({np.nanmax(rel[near_zero]):.2e} where |SCI| < 1e-3 ERR); WHT: "
          f"{np.count_nonzero(mosaic.wht != single.wht)} not bit-identical")  # fmt: skip
    assert np.nanmax(rel) <= 1e-5
    # WHT: the same pixels covered, the same sums of weights up to drizzle's last-bit rounding
    assert np.array_equal(mosaic.wht > 0, good)
    assert (np.abs(mosaic.wht - single.wht) <= np.spacing(single.wht)).all()
    assert np.array_equal(mosaic.con, single.con)


def test_tiled_mosaic_has_the_single_pass_metadata_and_wcs(single_pass, tiled):
    mosaic, _ = tiled
    assert mosaic.meta.bunit_data == "MJy/sr"
    assert mosaic.meta.exposure.exposure_time == single_pass.meta.exposure.exposure_time
    assert mosaic.meta.resample.pointings == single_pass.meta.resample.pointings == 3
    assert mosaic.meta.resample.pixel_scale_ratio == pytest.approx(single_pass.meta.resample.pixel_scale_ratio)
    for key in ("crpix1", "crpix2", "crval1", "crval2", "cdelt1", "pc1_1", "pc2_2", "ctype1"):
        assert getattr(mosaic.meta.wcsinfo, key) == pytest.approx(getattr(single_pass.meta.wcsinfo, key)), key
    x, y = np.array([0.0, 600.0, 1200.0]), np.array([0.0, 700.0, 1300.0])
    ra0, dec0 = mosaic.meta.wcs(x, y, with_bounding_box=False)
    ra1, dec1 = single_pass.meta.wcs(x, y, with_bounding_box=False)
    assert np.allclose(ra0, ra1, atol=1e-10) and np.allclose(dec0, dec1, atol=1e-10)
    assert mosaic.meta.wcs.bounding_box.bounding_box() == single_pass.meta.wcs.bounding_box.bounding_box()
    assert mosaic.meta.wcsinfo.s_region == single_pass.meta.wcsinfo.s_region


def test_grid_projection_of_footprints_matches_the_output_wcs(survey, single_pass):
    _, paths, grid_path = survey
    grid = json.loads(grid_path.read_text())
    ra, dec = single_pass.meta.wcs(np.array([10.0, 700.0]), np.array([20.0, 1200.0]), with_bounding_box=False)
    x, y = mosaic_tiles.sky_to_grid(ra, dec, grid, FILTER)
    assert np.allclose(x, [10.0, 700.0], atol=1e-6) and np.allclose(y, [20.0, 1200.0], atol=1e-6)


def test_tile_jobs_open_only_the_inputs_near_their_tile(tiled, survey):
    from stdatamodels.jwst import datamodels

    _, table = tiled
    root, paths, _ = survey
    per_tile = [len(row["inputs"]) for row in table["tiles"]]
    assert max(per_tile) < len(paths)
    for row in table["tiles"]:
        with datamodels.open(str(root / f"tile_{row['index']}.fits")) as model:
            used = {r["name"] for r in model.meta.instance["tile"]["inputs"]}
        listed = {p.rsplit("/", 1)[-1] for p in row["inputs"]}
        assert used <= listed


# ----------------------------------------------------------------------------- outlier detection
@pytest.fixture(scope="module")
def outlier_flags(survey):
    """(jwst OutlierDetectionStep flags, ours from median tiles + per-exposure blot) per exposure."""
    from astropy.io import fits
    from stdatamodels.jwst.datamodels import dqflags

    import outlier_detection

    root, paths, grid_path = survey
    outlier = dqflags.pixel["OUTLIER"]
    result = outlier_detection.flag_outliers(paths, {**OD, "pixfrac": 1.0, "kernel": "square", "weight_type": "ivm"})
    theirs = []
    with result:
        for i in range(len(result)):
            model = result.borrow(i)
            theirs.append((model.dq & outlier) > 0)
            result.shelve(model, i, modify=False)
    common = ["--grid", str(grid_path), "--filter", FILTER]
    medians = []
    for k in range(mosaic_tiles.tile_count(json.loads(grid_path.read_text())["filters"][FILTER], TILE)):
        out = root / f"median_{k}.fits"
        median_tile.main([*paths, *common, "--tile", str(k), "--tile-size", str(TILE), "--out", str(out),
                          "--params", json.dumps({"maskpt": OD["maskpt"]})])  # fmt: skip
        medians.append(str(out))
    ours = []
    for i, path in enumerate(paths):
        out = root / f"crf_{i}.fits"
        flag_outliers.main([*medians, "--exposure", path, *common, "--out", str(out),
                            "--params", json.dumps({"snr": OD["snr"], "scale": OD["scale"]})])  # fmt: skip
        ours.append((fits.getdata(out, "DQ") & outlier) > 0)
    truth = [fits.getdata(root / "truth" / "exp" / p.rsplit("/", 1)[-1].replace("_cal", "_truth"), "CR") for p in paths]
    errs = [fits.getdata(p, "ERR") for p in paths]
    return theirs, ours, truth, errs


def test_outlier_flags_agree_with_jwst_and_find_the_cosmic_rays(outlier_flags):
    theirs, ours, truth, errs = outlier_flags
    both = sum(int((a & b).sum()) for a, b in zip(theirs, ours, strict=True))
    either = sum(int((a | b).sum()) for a, b in zip(theirs, ours, strict=True))
    assert either > 100
    jaccard = both / either
    strong = [(cr > 10 * np.nan_to_num(e, nan=np.inf)) for cr, e in zip(truth, errs, strict=True)]
    n_strong = sum(int(s.sum()) for s in strong)
    recall_ours = sum(int((s & f).sum()) for s, f in zip(strong, ours, strict=True)) / n_strong
    recall_jwst = sum(int((s & f).sum()) for s, f in zip(strong, theirs, strict=True)) / n_strong
    print(f"flags: jaccard {jaccard:.3f}; strong CR recall ours {recall_ours:.3f} jwst {recall_jwst:.3f} of {n_strong}")
    assert jaccard > 0.8
    assert recall_ours > 0.9 and recall_ours > recall_jwst - 0.03


def test_crf_files_flag_outliers_as_do_not_use_and_keep_the_input(survey):
    from astropy.io import fits

    root, paths, _ = survey
    dq = fits.getdata(root / "crf_0.fits", "DQ")
    sci = fits.getdata(root / "crf_0.fits", "SCI")
    flagged = (dq & 16) > 0  # OUTLIER
    assert flagged.any()
    assert ((dq[flagged] & 1) > 0).all() and np.isnan(sci[flagged]).all()  # DO_NOT_USE and NaN, as jwst does
    assert not (fits.getdata(paths[0], "DQ") & 16).any()  # the input is untouched
    assert fits.getheader(root / "crf_0.fits", 0)["WFSTEP"] == "flag_outliers"
