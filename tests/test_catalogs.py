"""Catalog stage (issue 11): unit tests of the pure functions, the DOLPHOT input path, and the
Done-means numbers against the truth.

The truth-based tests share one Snakemake run (module fixture ``catalog_run``): NGC0628 at 1/16
scale with only the F200W and F770W mosaics, plus the demo-size HST-like images (1024 x 1024 px,
9.84 Mpc) through every catalog rule; tests/bench/catalogs.py defines the metrics. ~12 min on a
2-core machine at load average ~11. Known misses are marked xfail(strict=True) with the measured
value in the reason, so a fix shows up.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import associations
import concentration
import detect_sources
import inject_clusters
import select_clusters
from wflib import catalog_common as cc
from wflib import wfutils

REPO = Path(__file__).resolve().parent.parent
PSF = {"F555W": {"fwhm_px": 1.675, "wing_fraction": 0.15, "wing_width": 4.0}}


# --------------------------------------------------------------------------- unit tests
def test_stamps_keep_unit_flux_and_move_by_their_phase():
    lib = cc.ProfileLibrary(PSF)
    for phase, fwhm, slope in (((0, 0), None, None), ((2, -1), None, None), ((1, 2), 2.0, 3.0)):
        stamp, half = lib.stamp("F555W", *phase, fwhm_px=fwhm, slope=slope)
        yy, xx = np.mgrid[: stamp.shape[0], : stamp.shape[1]]
        assert stamp.sum() == pytest.approx(1.0, abs=2e-3)
        assert (stamp * xx).sum() / stamp.sum() - half == pytest.approx(phase[0] / cc.OVERSAMPLE, abs=0.01)
        assert (stamp * yy).sum() / stamp.sum() - half == pytest.approx(phase[1] / cc.OVERSAMPLE, abs=0.01)


def test_fiducial_cluster_sits_at_the_origin_and_stars_are_more_concentrated():
    lib = cc.ProfileLibrary(PSF)
    radii = concentration.DEFAULTS["radii_px"]
    fid = concentration.fiducial_fluxes(lib, radii, [7.0, 8.0])
    for model, sign in (({"fwhm_px": 2.0, "slope": 3.0}, 0), ({}, 1), ({"fwhm_px": 5.0, "slope": 1.5}, -1)):
        stamp, _ = lib.stamp("F555W", 0, 0, **model)
        fluxes = cc.measured_stamp_fluxes(stamp, radii, [7.0, 8.0])[None, :]
        ci = concentration.concentration_indices(fluxes, radii, fid)
        if sign == 0:
            assert ci["mci_in"][0] == pytest.approx(0.0, abs=1e-9) and ci["mci_out"][0] == pytest.approx(0.0, abs=1e-9)
        else:
            assert np.sign(ci["mci_in"][0]) == sign and np.sign(ci["mci_out"][0]) == sign


def test_aperture_error_predicts_the_scatter_of_blank_sky():
    rng = np.random.default_rng(1)
    sci = rng.normal(0.0, 0.01, (400, 400))
    err = np.full_like(sci, 0.01)
    x, y = np.meshgrid(np.arange(20, 380, 20.0), np.arange(20, 380, 20.0))
    res = cc.aperture_fluxes(sci, err, x.ravel(), y.ravel(), [4.0])
    ratio = np.std(res["flux"][:, 0]) / np.median(res["flux_err"][:, 0])
    assert 0.85 < ratio < 1.15


def test_polygon_lower_bound_follows_the_distance():
    bounds = select_clusters.DEFAULTS["polygon_lower_bounds"]
    assert select_clusters.polygon_lower_bound(5.0, bounds) == -1.7
    assert select_clusters.polygon_lower_bound(9.84, bounds) == -1.1
    assert select_clusters.polygon_lower_bound(20.0, bounds) == -0.7


def test_model_region_holds_the_clusters_and_in_region_reads_it():
    rng = np.random.default_rng(2)
    mci_in, mci_out = rng.normal(0, 0.05, 2000), rng.normal(0, 0.1, 2000)
    params = inject_clusters.DEFAULTS
    hist, origin = inject_clusters.mci_histogram(mci_in, mci_out, 0.04, params)
    region = inject_clusters.model_region(hist, 0.3, params["smooth_bins"])
    assert inject_clusters.in_region(region, origin, 0.04, mci_in, mci_out).mean() > 0.95
    assert not inject_clusters.in_region(region, origin, 0.04, [0.8, np.nan], [1.5, 0.0]).any()


def test_synthetic_clusters_carry_photon_noise_and_its_error():
    rng = np.random.default_rng(6)
    sci, err = np.zeros((200, 200)), np.full((200, 200), 0.01)
    signal = np.full((200, 200), 2.0)  # e-/s; 200 e- per pixel in 100 s
    image, image_err = inject_clusters.with_photon_noise(sci, err, signal, 100.0, rng)
    assert image.mean() == pytest.approx(2.0, rel=0.01)
    assert image.std() == pytest.approx(math.sqrt(2.0 / 100.0), rel=0.03)
    np.testing.assert_allclose(image_err, math.sqrt(0.01**2 + 2.0 / 100.0))
    untouched, same_err = inject_clusters.with_photon_noise(sci, err, np.zeros_like(sci), 100.0, rng)
    assert not untouched.any() and np.array_equal(same_err, err)


def test_psf_fits_on_the_same_light_make_one_source():
    x, y = np.array([0.0, 0.5, 3.0, 3.8, 10.0]), np.zeros(5)
    keep = detect_sources.distinct_sources(x, y, np.array([1.0, 2.0, 5.0, 4.0, np.nan]), 1.0)
    assert keep.tolist() == [False, True, True, False, True]


def test_residual_search_separates_a_blended_star_but_not_an_extended_cluster():
    """DOLPHOT-like second pass: a star 1.8 px from a brighter one (one DAOFIND peak) is found in
    the residual; the light of an extended cluster around its fitted PSF gives no star."""
    lib = cc.ProfileLibrary(PSF)
    image = np.zeros((80, 80))
    stars = [(21.0, 21.0, 400.0), (22.4, 22.2, 250.0)]  # 1.8 px apart
    for x, y, flux in stars:
        _, _, ix, iy, px, py = cc.quantize_position(x, y)
        cc.add_stamp(image, lib.stamp("F555W", int(px), int(py))[0], int(ix), int(iy), flux)
    cc.add_stamp(image, lib.stamp("F555W", 0, 0, fwhm_px=3.0, slope=2.0)[0], 55, 50, 600.0)
    err = np.full(image.shape, 0.5)
    image += np.random.default_rng(11).normal(0, 0.5, image.shape)
    images, psfs = (
        {"F555W": (image, err)},
        {"F555W": detect_sources.psf_model_from(lib.fine_psf("F555W"), cc.OVERSAMPLE)},
    )
    params = {**detect_sources.DEFAULTS, "border_px": 4}
    detections = detect_sources.find_sources(image, err, params)
    first = detect_sources.point_source_catalog(images, psfs, detections, params)  # no noise map: one pass
    table = detect_sources.point_source_catalog(images, psfs, detections, params, noise=err)
    near_pair = lambda t: np.hypot(t["x"] - 21.7, t["y"] - 21.6) < 3
    near_cluster = lambda t: np.hypot(t["x"] - 55, t["y"] - 50) < 5
    assert near_pair(first).sum() == 1
    assert near_pair(table).sum() == 2 and sorted(table["psf_pass"][near_pair(table)]) == [1, 2]
    found = table[near_pair(table) & (table["psf_pass"] == 2)][0]
    assert min(math.hypot(found["x"] - x, found["y"] - y) for x, y, _ in stars) < 0.5
    assert near_cluster(table).sum() == near_cluster(first).sum() == 1


def test_wide_search_finds_the_extended_cluster_the_first_search_misses_once():
    """A FWHM-5 px cluster at 4 px aperture S/N ~15 is (nearly) invisible to the 2.5 px kernel; the
    wide search adds it exactly once over 20 noise draws, and never the star the first search found."""
    lib = cc.ProfileLibrary(PSF)
    params = {**detect_sources.DEFAULTS, "border_px": 4}
    near = lambda x, y, px, py: int(np.sum(np.hypot(x - px, y - py) < 3))
    found_by_narrow = 0
    for seed in range(20):
        image = np.zeros((80, 80))
        cc.add_stamp(image, lib.stamp("F555W", 0, 0)[0], 20, 20, 100.0)
        cc.add_stamp(image, lib.stamp("F555W", 0, 0, fwhm_px=5.0, slope=2.0)[0], 55, 50, 200.0)
        err = np.full(image.shape, 0.5)
        image += np.random.default_rng(seed).normal(0, 0.5, image.shape)
        narrow = detect_sources.find_sources(image, err, params)
        x, y = detect_sources.find_all_sources(image, err, params)
        assert near(x, y, 20, 20) == 1 and near(x, y, 55, 50) == 1, seed
        found_by_narrow += near(np.asarray(narrow["x_centroid"]), np.asarray(narrow["y_centroid"]), 55, 50)
    assert found_by_narrow <= 4
    off = detect_sources.find_extended(image, err, narrow, {**params, "wide_fwhm_px": 0})
    assert len(off) == 0


def test_extended_neighbour_test_tells_a_star_pair_from_a_compact_cluster():
    """A second star 1.8 px from a brighter one rejects the one-extended-source hypothesis at the
    detection significance; a PSF added 1.6 px from the centre of a compact cluster does not."""
    from scipy.stats import norm

    lib = cc.ProfileLibrary(PSF)
    psf = detect_sources.psf_model_from(lib.fine_psf("F555W"), cc.OVERSAMPLE)
    params = detect_sources.DEFAULTS
    extended = detect_sources.broadened_psfs(psf, params["extended_sigmas_px"])
    err = np.full((40, 40), 0.5)
    rng = np.random.default_rng(4)
    p_values = []
    for sources, start in (
        ([(20.0, 20.0, 400.0, ()), (21.4, 21.2, 250.0, ())], ([20.3, 21.2], [20.3, 21.0], [400.0, 200.0])),
        ([(20.0, 20.0, 600.0, (2.0, 3.0))], ([20.0, 18.3], [20.0, 19.0], [500.0, 100.0])),
    ):
        image = np.zeros(err.shape)
        for x, y, flux, model in sources:
            _, _, ix, iy, px, py = cc.quantize_position(x, y)
            cc.add_stamp(image, lib.stamp("F555W", int(px), int(py), *model)[0], int(ix), int(iy), flux)
        image += rng.normal(0, 0.5, image.shape)
        fx, fy, ff = detect_sources.fit_group(image, err, [psf, psf], *start, 5, 1.0)[:3]
        residual = image - detect_sources.render_psfs(image.shape, psf, fx, fy, ff)
        pair = (fx[0], fy[0], ff[0]), (fx[1], fy[1], ff[1])
        p_values.append(detect_sources.extended_test_pvalue(residual, err, psf, extended, *pair, params))
    assert p_values[0] < 1e-10 < norm.sf(params["nsigma"]) < 0.01 < p_values[1]


def test_single_source_makes_no_association_and_a_group_makes_one_of_its_size():
    pc_px, scale = 2.0, 16.0
    fwhm = scale / pc_px
    shape = (200, 200)
    params = associations.DEFAULTS
    lone = associations.point_map(np.array([100.0]), np.array([100.0]), shape)
    assert associations.segment(lone, fwhm, params)[0].max() == 0
    rng = np.random.default_rng(3)
    x, y = 100 + rng.normal(0, fwhm / 2.3548, 12), 100 + rng.normal(0, fwhm / 2.3548, 12)
    labels = associations.segment(associations.point_map(x, y, shape), fwhm, params)[0]
    assert labels.max() == 1 and labels[100, 100] == 1
    diameter = 2 * math.sqrt((labels > 0).sum() / math.pi)
    assert fwhm < diameter < 3 * fwhm


def test_bad_inputs_fail_with_the_file_named(tmp_path):
    from astropy.io import fits

    path = tmp_path / "v_drc.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8)), name="SCI"), fits.ImageHDU(np.ones((8, 8)), name="ERR")]
    ).writeto(path)
    with pytest.raises(wfutils.InputError, match="v_drc.fits.*PHOTFLAM"):
        cc.read_drc(path)
    with pytest.raises(wfutils.InputError, match="unknown parameter"):
        wfutils.parse_params(json.dumps({"nsigmaa": 3}), {"nsigma": 3.5})


# --------------------------------------------------------------------------- DOLPHOT input path
DOLPHOT_GLOBAL_LINES = [
    "Extension (zero for base image)",
    "Chip (for three-dimensional FITS image)",
    "Object X position on reference image (or first image, if no reference)",
    "Object Y position on reference image (or first image, if no reference)",
    "Chi for fit",
    "Signal-to-noise",
    "Object sharpness",
    "Object roundness",
    "Direction of major axis (if not round)",
    "Crowding",
    "Object type (1=bright star, 2=faint, 3=elongated, 4=hot pixel, 5=extended)",
]
DOLPHOT_FILTER_LINES = [
    "Total counts",
    "Total sky level",
    "Normalized count rate",
    "Normalized count rate uncertainty",
    "Instrumental VEGAMAG magnitude",
    "Transformed UBVRI magnitude",
    "Magnitude uncertainty",
    "Chi",
    "Signal-to-noise",
    "Sharpness",
    "Roundness",
    "Crowding",
    "Photometry quality flag",
]


def write_dolphot(path, rows, bands):
    """A DOLPHOT-format output (``path`` and ``path.columns``): 11 global + 13 columns per filter,
    one single-exposure column block that the reader must skip, positions with DOLPHOT's 0.5 origin."""
    lines = list(DOLPHOT_GLOBAL_LINES)
    for band in bands:
        lines += [f"{q}, WFC3_{band}" for q in DOLPHOT_FILTER_LINES]
    lines += [f"Normalized count rate, idxx01abq_flc.chip1 (WFC3_{bands[0]}, 350.0 sec)"]
    Path(f"{path}.columns").write_text("".join(f"{i}. {d}\n" for i, d in enumerate(lines, start=1)))
    text = []
    for row in rows:
        values = [
            0,
            1,
            row["x"] + 0.5,
            row["y"] + 0.5,
            1.0,
            row["snr"],
            row["sharp"],
            0.01,
            0,
            row["crowd"],
            row["type"],
        ]
        for band in bands:
            rate, err = row["rate"][band], row["rate_err"][band]
            values += [
                rate * 670,
                0.1,
                rate,
                err,
                25.0,
                25.0,
                0.05,
                1.0,
                rate / err,
                row["sharp"],
                0.01,
                row["crowd"],
                0,
            ]
        values += [row["rate"][bands[0]]]
        text.append(" ".join(f"{v:.5f}" if isinstance(v, float) else str(v) for v in values))
    Path(path).write_text("\n".join(text) + "\n")


@pytest.fixture(scope="module")
def small_field(tmp_path_factory, workflow_config):
    """A 256 x 256 px HST-like field (simulate_hst with fewer sources): images, PSFs, truth."""
    from astropy.table import Table

    import simulate_hst

    tmp = tmp_path_factory.mktemp("small_field")
    cfg = json.loads(json.dumps(workflow_config["simulation"]["hst"]))
    cfg.update(seed=7, shape_px=[256, 256])
    cfg["stars"]["count"], cfg["clusters"]["count"] = 120, 50
    cfg["associations"].update(scales_pc=[16], per_scale=1)
    target = {"target": "SMALL", "ra": 24.17, "dec": 15.78, "distance_mpc": 9.84}
    simulate_hst.simulate(cfg, target, tmp / "hst", tmp / "psf", tmp / "truth.ecsv", tmp / "assoc.ecsv")
    bands = list(cfg["bands"])
    images = {b: tmp / "hst" / f"SMALL_{b}_drc.fits" for b in bands}
    psfs = {b: tmp / "psf" / f"SMALL_{b}_psf.fits" for b in bands}
    return {"dir": tmp, "bands": bands, "images": images, "psfs": psfs, "truth": Table.read(tmp / "truth.ecsv")}


def test_dolphot_output_replaces_the_psf_photometry(small_field, tmp_path):
    """Raw DOLPHOT output (.phot + .columns) -> point sources at 0-based positions with DOLPHOT's
    fluxes; DAOStarFinder adds the extended clusters DOLPHOT lacks; associations keep DOLPHOT stars."""
    from astropy.table import Table

    import aperture_photometry

    truth, bands = small_field["truth"], small_field["bands"]
    kind = np.asarray(truth["kind"]).astype(str)
    rng = np.random.default_rng(5)
    rows, expected = [], []
    for i in range(len(truth)):
        flux_v = float(truth["flux_F555W"][i])
        if flux_v < 0.3:  # below what DOLPHOT would report
            continue
        is_star = kind[i] != "cluster"
        rate = {b: float(truth[f"flux_{b}"][i]) for b in bands}
        row = {
            "x": float(truth["x"][i]),
            "y": float(truth["y"][i]),
            "snr": 20.0,
            "sharp": float(rng.uniform(-0.05, 0.05)) if is_star else 0.6,
            "crowd": 0.05,
            "type": int(rng.integers(1, 3)) if is_star else 5,  # clusters come out "extended"
            "rate": rate,
            "rate_err": {b: 0.05 * max(r, 0.1) + 0.05 for b, r in rate.items()},
        }
        rows.append(row)
        expected.append(is_star)
    rows.append({**rows[0], "x": 100.0, "y": 100.0, "type": 4})  # a hot pixel: dropped
    expected.append(False)
    phot = tmp_path / "field.phot"
    write_dolphot(phot, rows, bands)

    sources, points = tmp_path / "sources.ecsv", tmp_path / "points.ecsv"
    args = [a for b in bands for a in ("--image", f"{b}={small_field['images'][b]}")]
    detect_sources.main([*args, "--dolphot", str(phot), "--sources", str(sources), "--pointsources", str(points)])
    pts = Table.read(points)
    kept = [r for r, e in zip(rows, expected, strict=True) if e]
    assert len(pts) == len(kept) > 50
    assert set(np.asarray(pts["origin"]).astype(str)) == {"dolphot"}
    np.testing.assert_allclose(pts["x"], [r["x"] for r in kept], atol=1e-4)  # DOLPHOT's 0.5 origin removed
    np.testing.assert_allclose(pts["y"], [r["y"] for r in kept], atol=1e-4)
    np.testing.assert_allclose(pts["flux_F814W"], [r["rate"]["F814W"] for r in kept], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pts["snr_F555W"], [r["rate"]["F555W"] / r["rate_err"]["F555W"] for r in kept], rtol=1e-3)

    # merged list: every DOLPHOT source, plus DAOStarFinder detections of the bright clusters it lacks
    src = Table.read(sources)
    origin = np.asarray(src["origin"]).astype(str)
    assert (origin == "dolphot").sum() == len(pts)
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    bright_clusters = (kind == "cluster") & (np.asarray(truth["flux_ap4_F555W"], float) > 10.0)
    bright_clusters &= (tx > 10) & (tx < 245) & (ty > 10) & (ty < 245)
    dao = origin == "dao"
    found = detect_sources.match_nearest(tx, ty, np.asarray(src["x"])[dao], np.asarray(src["y"])[dao], 1.5) >= 0
    assert bright_clusters.sum() >= 5
    print("bright clusters", bright_clusters.sum(), "found by DAOStarFinder", found[bright_clusters].mean())
    assert found[bright_clusters].mean() >= 0.8

    # DOLPHOT's sharpness (0 = PSF) must not be judged with DAOFIND's range: the stars stay in the maps
    assert associations.quality_mask(pts, associations.DEFAULTS).mean() > 0.9

    # the chain goes on from the merged list: photometry in every band, point sources marked for the stellar region
    out = tmp_path / "phot.ecsv"
    psf_args = [a for b in bands for a in ("--psf", f"{b}={small_field['psfs'][b]}")]
    aperture_photometry.main([*args, *psf_args, "--sources", str(sources), "--output", str(out)])
    photometry = Table.read(out)
    assert len(photometry) == len(src)
    assert inject_clusters.point_source_mask(photometry, inject_clusters.DEFAULTS)[origin == "dao"].sum() == 0


def test_dolphot_columns_without_the_v_band_fail_with_the_file_named(tmp_path):
    phot = tmp_path / "bad.phot"
    write_dolphot(phot, [], ["F814W"])
    with pytest.raises(wfutils.InputError, match=r"bad.phot.columns.*flux_F555W"):
        detect_sources.dolphot_catalog(phot, ["F555W", "F814W"])


# --------------------------------------------------------------------------- against the truth
# One Snakemake run (module fixture) of NGC0628 at 1/16 scale, reduced to the F200W mosaic (the
# JWST CI band) and one MIRI band, feeds every test below: the catalog rules run for real, with
# the demo-size HST-like images (1024 x 1024 px, 9.84 Mpc). Astrometric alignment is off at this
# scale (tests/test_workflow.py), so the simulated pointing errors are off too: the F200W mosaic
# must sit where its WCS says for its CI to mean anything.
CATALOG_RUN = {
    "targets": ["NGC0628"],
    "simulation": {
        "scale": 0.0625,
        "effects": {"pointing_errors": {"enabled": False}},
        "layouts": {
            "phangs_galaxy": {
                "nircam": {"filters": ["F200W"], "tiles": [1, 1], "dithers": 2},
                "miri": {"filters": ["F770W"], "tiles": [1, 1], "dithers": 2},
                "miri_offfield": {"filters": ["F770W"]},
            }
        },
    },
    "anchoring": {"enabled": False},
    "corrections": {
        step: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for step in ("align_relative", "align_absolute")
    },
}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_catalogs", REPO / "tests" / "bench" / "catalogs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory):
    """Workdir of the Snakemake run above (all its products), and the seconds it took."""
    import time

    import yaml
    from conftest import run_snakemake

    workdir = tmp_path_factory.mktemp("catalog_run")
    override = workdir / "override.yaml"
    override.write_text(yaml.safe_dump(CATALOG_RUN))
    t0 = time.perf_counter()
    result = run_snakemake(workdir, "--cores", "2", configfiles=[override])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, time.perf_counter() - t0


@pytest.fixture(scope="module")
def metrics(catalog_run):
    bench = load_bench()
    result = bench.evaluate(bench.workflow_paths(catalog_run[0]))
    print(json.dumps({"workflow_s": round(catalog_run[1], 1), **result}))
    return result


@pytest.mark.workflow
def test_detection_completeness_at_snr10(metrics):
    assert metrics["n_snr10_all"] > 300
    assert metrics["completeness_snr10_all"] >= 0.90
    assert metrics["completeness_snr10_resolvable"] >= 0.90


@pytest.mark.workflow
def test_aperture_photometry_bias_and_error_normalised_scatter(metrics):
    assert metrics["photometry_n"] > 100
    assert abs(metrics["photometry_bias_mag"]) <= 0.02
    assert 0.8 <= metrics["photometry_norm_scatter"] <= 1.2


@pytest.mark.workflow
def test_ninety_percent_of_clusters_selected(metrics):
    assert metrics["selection_n_clusters_snr10"] > 80
    assert metrics["selection_completeness"] >= 0.90


@pytest.mark.workflow
def test_at_most_ten_percent_of_selected_are_stars(metrics):
    assert metrics["selected_star_fraction"] <= 0.10


@pytest.mark.workflow
def test_association_sizes_follow_the_smoothing_scale(metrics):
    for scale, row in metrics["associations"].items():
        assert row["n_regions"] > 0, scale
        assert abs(row["median_over_fwhm"] - 1.0) <= 0.25, (scale, row)


@pytest.mark.workflow
def test_associations_recovered_at_16_to_64_pc(metrics):
    for scale in ("16", "32", "64"):
        assert metrics["associations"][scale]["recovered"] >= 0.8, metrics["associations"][scale]


@pytest.mark.workflow
def test_associations_recovered_at_8_pc(metrics):
    # 8 pc is 4.19 px at 9.84 Mpc: measured 0.8 (4 of 5) here since residual stars are refitted with
    # their neighbours (0.6 before); with tests/bench/catalogs.py --associations-per-scale 25
    # --n-clusters 1000: 0.80 (config seed), 0.84 (simulation seed 2), 0.68 (seed 1). From the true
    # star positions seed 1 gives 1.0: its 8 misses are groups of 10-16 members (nearest neighbours
    # 0.2-0.7 px apart, below the V PSF FWHM of 1.68 px) of which PSF photometry finds 1-5. Pooled
    # over 11 simulation seeds at the config's density (--sim-seeds): 38 of 55 (0.69)
    assert metrics["associations"]["8"]["recovered"] >= 0.8


@pytest.mark.workflow
def test_association_method_recovers_every_scale_from_true_star_positions(metrics):
    """The watershed method alone (maps of the true positions of the stars with S/N >= snr_min):
    what detection can at best give the association stage."""
    for scale, row in metrics["associations"].items():
        assert row["recovered_true_positions"] >= 0.8, (scale, row)


# --------------------------------------------------------------------------- the workflow's products
@pytest.mark.workflow
def test_catalog_products_of_the_run_are_complete_and_consistent(catalog_run):
    from astropy.io import fits
    from astropy.table import Table

    workdir, _ = catalog_run
    d = workdir / "results" / "NGC0628" / "catalogs"
    t = "NGC0628"
    mci = Table.read(d / f"{t}_sources_mci.ecsv")
    assert len(mci) > 500
    for col in ("ci13", "mci_in", "mci_out", "ra", "dec", "ci13_jwst", "mag_tot_vega_F555W", "apcor_F555W"):
        assert col in mci.colnames, col
    assert len(Table.read(d / f"{t}_sources_mci.fits")) == len(mci)
    model, poly = Table.read(d / f"{t}_candidates.ecsv"), Table.read(d / f"{t}_candidates_polygon.ecsv")
    assert 50 < len(model) < 0.5 * len(mci) and len(poly) > 20
    assert set(model["id"]) <= set(mci["id"]) and set(poly["id"]) <= set(mci["id"])
    assert np.all(np.asarray(model["candidate_model"])) and len(Table.read(d / f"{t}_candidates.fits")) == len(model)
    # provenance names this step and its own inputs only
    assert model.meta["WFSTEP"] == "select_clusters" and model.meta["WFNINPUT"] == 2
    assert "WFIN0003" not in model.meta
    # DS9: one circle per model candidate plus one per polygon-only candidate
    circles = [line for line in (d / f"{t}_candidates.reg").read_text().splitlines() if line.startswith("circle(")]
    assert len(circles) == len(set(model["id"]) | set(poly["id"]))
    # associations: one label image per scale whose labels are the table's regions
    assoc = Table.read(d / f"{t}_associations.ecsv")
    with fits.open(d / f"{t}_association_masks.fits") as hdul:
        assert hdul[0].header["WFSTEP"] == "associations"
        for scale in (8, 16, 32, 64):
            labels = hdul[f"SCALE_{scale}PC"].data
            rows = assoc[np.asarray(assoc["scale_pc"], float) == scale]
            assert labels.shape == (1024, 1024) and labels.max() == len(rows) > 0
            assert hdul[f"SCALE_{scale}PC"].header["CTYPE1"].startswith("RA")
    for png in ("mci_plane", "synthetic_mci", "associations"):
        assert (d / "qa" / f"{t}_{png}.png").stat().st_size > 10_000


@pytest.mark.workflow
def test_f200w_concentration_index_separates_clusters_from_stars(catalog_run):
    """CI(0.04"-0.12") on the run's F200W mosaic at the JWST sky's true sources: isolated stars
    share the PSF's CI, resolved clusters (sigma >= 0.02", 1-4 pc at 9.84 Mpc) lie above it.
    The catalog's ci13_jwst column is that measurement at the HST sources inside the mosaic."""
    from astropy.table import Table
    from scipy.spatial import cKDTree

    workdir, _ = catalog_run
    run = workdir / "results" / "NGC0628"
    mosaic = run / "mosaic" / "NGC0628_F200W_i2d.fits"
    _, _, _, hst_wcs = cc.read_drc(run / "hst" / "NGC0628_F555W_drc.fits", "F555W")
    sky = Table.read(run / "truth" / "sky_sources.ecsv")
    x, y = hst_wcs.world_to_pixel_values(np.asarray(sky["ra"], float), np.asarray(sky["dec"], float))
    ci = concentration.jwst_ci(mosaic, hst_wcs, x, y, dict(concentration.DEFAULTS))
    kind = np.asarray(sky["kind"]).astype(str)
    flux, sigma = np.asarray(sky["flux_2um"], float), np.asarray(sky["sigma"], float)
    xi, eta = np.asarray(sky["xi"], float), np.asarray(sky["eta"], float)
    tree = cKDTree(np.column_stack([xi, eta]))
    isolated = np.array(
        [
            all(flux[j] < 0.05 * flux[i] for j in tree.query_ball_point([xi[i], eta[i]], 0.3) if j != i)
            for i in range(len(sky))
        ]
    )
    ok = np.isfinite(ci) & isolated & (flux > 3.0)
    stars, clusters = ci[ok & (kind == "star")], ci[ok & (kind == "cluster") & (sigma >= 0.02)]
    print(
        f"F200W CI: {len(stars)} stars {np.percentile(stars, [5, 50, 95]).round(3)}, {len(clusters)} clusters "
        f"{np.percentile(clusters, [5, 50, 95]).round(3)}"
    )
    assert len(stars) >= 8 and len(clusters) >= 5
    assert np.percentile(stars, 95) - np.percentile(stars, 5) < 0.15
    assert np.mean(clusters > np.percentile(stars, 95) + 0.03) >= 0.8
    # the catalog column: measured where the HST sources fall on the mosaic, NaN elsewhere
    mci = Table.read(run / "catalogs" / "NGC0628_sources_mci.ecsv")
    col = np.asarray(mci["ci13_jwst"], float)
    assert 20 <= np.isfinite(col).sum() < len(mci)
    assert (
        np.isfinite(col).sum()
        == np.isfinite(
            concentration.jwst_ci(
                mosaic, hst_wcs, np.asarray(mci["x"], float), np.asarray(mci["y"], float), dict(concentration.DEFAULTS)
            )
        ).sum()
    )


@pytest.mark.workflow
def test_a_second_catalog_run_has_nothing_to_do(catalog_run):
    from conftest import run_snakemake

    workdir, _ = catalog_run
    result = run_snakemake(workdir, "-n", configfiles=[workdir / "override.yaml"])
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.workflow
def test_a_configured_dolphot_catalog_reaches_the_detection_rule(catalog_run):
    import yaml
    from conftest import run_snakemake

    workdir, _ = catalog_run
    phot = workdir / "dolphot" / "NGC0628.phot"
    phot.parent.mkdir(exist_ok=True)
    write_dolphot(phot, [], ["F555W"])
    override = workdir / "dolphot.yaml"
    override.write_text(yaml.safe_dump({"catalogs": {"dolphot": "dolphot/{target}.phot"}}))
    result = run_snakemake(
        workdir,
        "-n",
        "-p",
        "results/NGC0628/catalogs/NGC0628_sources.ecsv",
        configfiles=[workdir / "override.yaml", override],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--dolphot dolphot/NGC0628.phot" in result.stdout


def test_stellar_region_holds_the_requested_share_of_point_sources_around_their_locus():
    rng = np.random.default_rng(4)
    mci_in = np.concatenate([rng.normal(0.5, 0.03, 400), [-0.5]])  # one lone outlier
    mci_out = np.concatenate([rng.normal(0.5, 0.15, 400), [-2.0]])
    params = inject_clusters.DEFAULTS
    hist, origin = inject_clusters.mci_histogram(mci_in, mci_out, 0.04, params)
    region = inject_clusters.stellar_region(hist, 0.9)
    inside = inject_clusters.in_region(region, origin, 0.04, mci_in, mci_out)
    assert 0.85 <= inside[:400].mean() <= 0.99 and not inside[400]
    assert not inject_clusters.in_region(region, origin, 0.04, [0.0], [0.0])[0]  # the fiducial cluster
