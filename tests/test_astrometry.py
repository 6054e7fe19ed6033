"""Astrometry: relative (per visit) and absolute (two-step, tweakback) alignment against simulator truth.

Unit tests of the pure pieces (PSF-fitted centroids, tangent plane, the joint visit solution,
matching of dense lists, catalogue reading), the failure modes the issue asks for (empty field,
crowded field, wrong catalogue columns, catalogue off the field), and an integration run on a
small synthetic galaxy with the issue's pointing errors (absolute 2" and 0.01 deg, visits
0.05-1" and 0.01 deg): NIRCam relative -> F300M mosaic -> absolute with tweakback -> MIRI
anchored on the aligned NIRCam catalogue, each judged with the truth stars.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.append(str(REPO / "tests" / "bench"))  # after scripts/: bench/ also names steps

import astrometry as bench  # noqa: E402

import align_absolute  # noqa: E402
import align_relative  # noqa: E402
from wflib import astro_common as ac  # noqa: E402
from wflib import wfutils  # noqa: E402


# ----------------------------------------------------------------------------- pure functions
def gaussian_image(shape, sources, fwhm, noise, rng):
    """Pixel-integrated circular Gaussians (x, y, flux, fwhm_factor) on a flat background, with noise."""
    from scipy.special import erf

    ny, nx = shape
    image = np.full(shape, 1.0)
    for x0, y0, flux, factor in sources:
        s = fwhm * factor / 2.3548 * math.sqrt(2)
        gx = 0.5 * (erf((np.arange(nx) + 0.5 - x0) / s) - erf((np.arange(nx) - 0.5 - x0) / s))
        gy = 0.5 * (erf((np.arange(ny) + 0.5 - y0) / s) - erf((np.arange(ny) - 0.5 - y0) / s))
        image += flux * np.outer(gy, gx)
    return image + rng.normal(0, noise, shape)


def test_prf_fit_centroids_are_unbiased_and_sizes_flag_extended_sources():
    rng = np.random.default_rng(5)
    fwhm = 1.6  # undersampled, like NIRCam LW at 3 micron
    points = [(rng.uniform(10, 190), rng.uniform(10, 190), 3000.0, 1.0) for _ in range(40)]
    extended = [(rng.uniform(10, 190), rng.uniform(10, 190), 3000.0, 3.0) for _ in range(10)]
    image = gaussian_image((200, 200), points + extended, fwhm, 1.0, rng)
    err = np.ones_like(image)
    table = ac.find_sources(image, err, np.zeros(image.shape, bool), fwhm, {"pixel_scale_arcsec": 0.063})
    truth = np.array([(x, y) for x, y, _, _ in points])
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(truth).query(np.column_stack([table["x"], table["y"]]))
    point = np.asarray(table["point_like"])
    assert point.sum() >= 35  # a few may blend
    d = np.column_stack([table["x"], table["y"]])[point & (dist < 0.5)] - truth[idx[point & (dist < 0.5)]]
    assert np.median(np.hypot(d[:, 0], d[:, 1])) < 0.01  # pixels
    assert abs(d[:, 0].mean()) < 0.005 and abs(d[:, 1].mean()) < 0.005
    ext = np.array([(x, y) for x, y, _, _ in extended])
    dist_e, _ = cKDTree(ext).query(np.column_stack([table["x"], table["y"]]))
    assert not np.any(point[dist_e < 1.0])  # every extended source detected is flagged


def test_tangent_plane_round_trip_and_sky_correction():
    ra0, dec0 = 24.17, 15.78
    xi, eta = np.array([-40.0, 0.0, 25.0]), np.array([10.0, 0.0, -33.0])
    ra, dec = ac.from_tangent(xi, eta, ra0, dec0)
    xi2, eta2 = ac.to_tangent(ra, dec, ra0, dec0)
    assert np.allclose(xi, xi2, atol=1e-9) and np.allclose(eta, eta2, atol=1e-9)
    corr = ac.SkyCorrection.rotation_shift(ra0, dec0, 0.01, [1.2, -0.7], [5.0, 5.0])
    assert corr.rotation_deg == pytest.approx(0.01)
    east, north = corr.offset_at(*ac.from_tangent(5.0, 5.0, ra0, dec0))
    assert east == pytest.approx(1.2, abs=1e-9) and north == pytest.approx(-0.7, abs=1e-9)


def make_pairs(shifts, rotations_deg, centers, rng, n_per_pair=60, noise=0.001):
    """Matched positions of the same stars seen by overlapping groups with known errors."""
    pairs = []
    groups = len(shifts)
    for a in range(groups):
        for b in range(a + 1, groups):
            mid = (centers[a] + centers[b]) / 2
            true = mid + rng.uniform(-8, 8, (n_per_pair, 2))
            seen = []
            for g in (a, b):
                t = math.radians(rotations_deg[g])
                rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
                seen.append((true - centers[g]) @ rot.T + centers[g] + shifts[g] + rng.normal(0, noise, true.shape))
            pairs.append((a, b, seen[0], seen[1], np.ones(n_per_pair)))
    return pairs


@pytest.mark.parametrize("fitgeom", ["shift", "rshift"])
def test_joint_solution_recovers_visit_errors_up_to_the_gauge(fitgeom):
    rng = np.random.default_rng(7)
    shifts = np.array([[0.3, -0.2], [-0.8, 0.5], [0.05, 0.9], [0.6, 0.1]])
    rotations = np.array([0.01, -0.008, 0.0, 0.004]) if fitgeom == "rshift" else np.zeros(4)
    centers = np.array([[-20.0, -10.0], [20.0, -10.0], [-20.0, 10.0], [20.0, 10.0]])
    pairs = make_pairs(shifts, rotations, centers, rng)
    sol = align_relative.solve_group_offsets(pairs, 4, centers, fitgeom=fitgeom)
    expected = -(shifts - shifts.mean(axis=0))  # corrections cancel the errors, mean gauge
    assert np.allclose(sol["shifts"], expected, atol=0.002)
    assert sol["rms"] < 0.01
    if fitgeom == "rshift":
        expected_rot = -np.radians(rotations - rotations.mean())
        assert np.allclose(sol["rotations"], expected_rot, atol=np.radians(0.001))


def test_joint_solution_with_an_anchor_has_no_gauge_freedom():
    rng = np.random.default_rng(8)
    true = rng.uniform(-10, 10, (40, 2))
    shift = np.array([0.7, -1.1])
    pairs = [(0, -1, true + shift + rng.normal(0, 0.003, true.shape), true, np.ones(40))]
    sol = align_relative.solve_group_offsets(pairs, 1, np.zeros((1, 2)), anchored=True)
    assert np.allclose(sol["shifts"][0], -shift, atol=0.002)


def test_crowded_lists_match_without_confusion():
    """A dense F200W-like list (3 sources/arcsec^2) against a sparse reference and against itself."""
    rng = np.random.default_rng(11)
    n_dense = 12000
    field = 64.0
    true = rng.uniform(-field / 2, field / 2, (n_dense, 2))
    offset = np.array([1.7, -0.9])
    t = math.radians(0.01)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    image = true @ rot.T + offset + rng.normal(0, 0.004, true.shape)
    ref_idx = rng.choice(n_dense, 1500, replace=False)  # brightest "stars" in the catalogue
    order = np.concatenate([ref_idx, np.setdiff1d(np.arange(n_dense), ref_idx)])  # flux-sorted image list
    params = align_absolute.resolve_params({}, "NIRCAM")
    result = align_absolute.fit_to_reference(image[order], true[ref_idx], params, 0.03, "F200W")
    corr = align_absolute.correction_from_fit(result["fit"], 0.0, 0.0)
    moved = np.column_stack(corr.apply_tangent(image[ref_idx, 0], image[ref_idx, 1]))
    assert np.sqrt(np.mean(np.sum((moved - true[ref_idx]) ** 2, axis=1))) < 0.008
    assert corr.rotation_deg == pytest.approx(-0.01, abs=0.001)
    assert result["n_strict"] > 1200
    # dense against dense (relative alignment of two F200W visits): one-to-one matches, right offset
    ri, ii = ac.match_xy(true, image, 2.5, 0.3, 0.01, 0.03)
    assert len(ri) > 0.9 * n_dense
    assert len(np.unique(ri)) == len(ri) and len(np.unique(ii)) == len(ii)
    assert np.allclose(np.median(image[ii] - true[ri], axis=0), offset, atol=0.01)


def test_reference_catalog_columns_and_selection(tmp_path):
    good = Table({"RAJ2000": [10.0, 10.001], "DEJ2000": [-5.0, -5.001], "F555W": [24.0, 22.0], "F814W": [21.0, 21.5]})
    good.write(tmp_path / "good.fits")
    cat = ac.read_reference_catalog(tmp_path / "good.fits", {"F555W - F814W": [2.0, 4.0]})
    assert len(cat) == 1 and cat["ra"][0] == 10.0
    bad = Table({"x": [1.0], "y": [2.0], "mag": [20.0]})
    bad.write(tmp_path / "bad.ecsv", format="ascii.ecsv")
    with pytest.raises(wfutils.InputError, match=r"bad.ecsv: no RA column .*x, y, mag"):
        ac.read_reference_catalog(tmp_path / "bad.ecsv")
    with pytest.raises(wfutils.InputError, match="selection column 'Gmag'"):
        ac.read_reference_catalog(tmp_path / "good.fits", {"Gmag": [10, 20]})


def test_parameters_resolve_per_instrument():
    config = {"wide": {"searchrad": {"NIRCAM": 12.0, "MIRI": 30.0}}, "per_instrument": {"MIRI": {"min_matches": 4}}}
    miri = align_absolute.resolve_params(config, "MIRI")
    nircam = align_absolute.resolve_params(config, "NIRCAM")
    assert miri["wide"]["searchrad"] == 30.0 and nircam["wide"]["searchrad"] == 12.0
    assert miri["min_matches"] == 4 and nircam["min_matches"] == 10
    assert miri["use_extended"] and not nircam["use_extended"]  # script default for MIRI kept
    assert align_relative.resolve_params({}, "MIRI")["reference_band"] == "F1000W"
    with pytest.raises(wfutils.InputError, match="max_rms_mas has no value for MIRI"):
        align_absolute.resolve_params({"max_rms_mas": {"NIRCAM": 20.0}}, "MIRI")


# ----------------------------------------------------------------------------- the synthetic survey
@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Small galaxy survey at scale 1/8: NIRCam F300M/F335M (2x2 tiles, 2 dithers) and MIRI F1000W (4 dithers)."""
    cfg = bench.simulation_config(0.125, nircam=("F300M", "F335M"), miri=("F1000W",))
    layout = cfg["layouts"]["phangs_galaxy"]
    layout["nircam"]["dithers"] = 2
    for name in ("cosmic_rays", "snowballs", "persistence", "wisps"):
        cfg["effects"][name]["enabled"] = False
    root = tmp_path_factory.mktemp("astrometry")
    bench.simulate(root, cfg)
    files = bench.science_files(root, ["F300M", "F335M", "F1000W"])
    return {"root": root, "cfg": cfg, "files": files, "refcat": root / "refs" / f"{bench.TARGET['target']}_refcat.ecsv"}


def final_rms(paths, survey):
    return bench.summarize(bench.truth_star_residuals(paths, survey["root"] / "truth", survey["cfg"]))


@pytest.fixture(scope="module")
def nircam_relative(survey):
    out = survey["root"] / "relative_nircam"
    inputs = [str(p) for p in survey["files"]["F300M"] + survey["files"]["F335M"]]
    align_relative.main(
        [*inputs, "--out-dir", str(out), "--table", str(out / "shifts.ecsv"), "--qa-json", str(out / "qa.json")]
    )
    return out


def test_relative_alignment_recovers_nircam_visit_shifts(survey, nircam_relative):
    table = Table.read(nircam_relative / "shifts.ecsv", format="ascii.ecsv")
    assert len(table) == 4 and set(table["reference_band"]) == {"F300M"}
    recovery = bench.visit_shift_recovery(table, survey["root"] / "truth")
    assert recovery["injected_rms_mas"] > 100
    assert recovery["rms_mas"] <= 5.0, recovery
    # the shift measured in F300M (long wavelength) is applied to F335M of the same visit
    for band in ("F300M", "F335M"):
        paths = [nircam_relative / p.name for p in survey["files"][band]]
        stats = final_rms(paths, survey)
        assert stats["rms_about_mean_mas"] <= 5.0, (band, stats)
    qa = json.loads((nircam_relative / "qa.json").read_text())
    assert set(qa["groups"]) == set(table["group"])


@pytest.fixture(scope="module")
def nircam_absolute(survey, nircam_relative):
    root = survey["root"]
    relative = [nircam_relative / p.name for p in survey["files"]["F300M"] + survey["files"]["F335M"]]
    grid = bench.target_grid(relative)
    f300m = [str(nircam_relative / p.name) for p in survey["files"]["F300M"]]
    mosaic = bench.make_mosaic(f300m, "F300M", grid, root / "mosaic" / "NGC0628_F300M_i2d.fits")
    out = root / "absolute_nircam"
    align_absolute.main(
        [
            str(mosaic),
            *map(str, relative),
            "--refcat",
            str(survey["refcat"]),
            "--out-dir",
            str(out),
            "--fit-table",
            str(out / "fit.ecsv"),
            "--catalog",
            str(out / "F300M_catalog.ecsv"),
            "--qa-png",
            str(out / "qa.png"),
            "--qa-json",
            str(out / "qa.json"),
            "--band-map",
            json.dumps({"F335M": "F300M"}),
        ]
    )
    return out


def test_absolute_alignment_puts_nircam_on_the_truth_frame(survey, nircam_absolute):
    fit = Table.read(nircam_absolute / "fit.ecsv", format="ascii.ecsv")
    assert fit["n_matched"][0] >= 20 and fit["rms_mas"][0] < 25
    assert math.hypot(fit["shift_east_arcsec"][0], fit["shift_north_arcsec"][0]) > 0.5  # the 2" error was there
    for band in ("F300M", "F335M"):
        stats = final_rms([nircam_absolute / p.name for p in survey["files"][band]], survey)
        assert stats["rms_mas"] <= 10.0, (band, stats)
    mosaic_out = nircam_absolute / "NGC0628_F300M_i2d.fits"
    assert mosaic_out.exists()
    qa = json.loads((nircam_absolute / "qa.json").read_text())
    assert set(qa["bands"]) == {"F300M", "F335M"} and abs(qa["bands"]["F300M"]["mean_ra_mas"]) < 5
    assert (nircam_absolute / "qa.png").stat().st_size > 10000
    # the corrected mosaic WCS and its FITS approximation agree with the corrected exposures' frame
    from astropy.io import fits
    from astropy.wcs import WCS
    from stdatamodels.jwst import datamodels

    model = datamodels.open(str(mosaic_out))
    x, y = np.array([10.0, 200.0]), np.array([20.0, 150.0])
    ra_g, dec_g = model.meta.wcs(x, y, with_bounding_box=False)
    ra_f, dec_f = WCS(fits.getheader(mosaic_out, "SCI")).pixel_to_world_values(x, y)
    assert np.allclose(ra_g, ra_f, atol=2e-7) and np.allclose(dec_g, dec_f, atol=2e-7)


def test_miri_anchored_on_the_aligned_nircam_catalog(survey, nircam_absolute):
    out = survey["root"] / "relative_miri"
    miri = [str(p) for p in survey["files"]["F1000W"]]
    align_relative.main(
        [
            *miri,
            "--out-dir",
            str(out),
            "--anchor-catalog",
            str(nircam_absolute / "F300M_catalog.ecsv"),
            "--table",
            str(out / "shifts.ecsv"),
        ]
    )
    table = Table.read(out / "shifts.ecsv", format="ascii.ecsv")
    assert bench.visit_shift_recovery(table, survey["root"] / "truth")["rms_mas"] <= 15.0
    miri_stats = final_rms([out / Path(p).name for p in miri], survey)
    assert miri_stats["rms_mas"] <= 20.0, miri_stats
    nircam_stats = final_rms([nircam_absolute / p.name for p in survey["files"]["F300M"]], survey)
    offset = math.hypot(
        miri_stats["mean_east_mas"] - nircam_stats["mean_east_mas"],
        miri_stats["mean_north_mas"] - nircam_stats["mean_north_mas"],
    )
    assert offset <= 20.0


# ----------------------------------------------------------------------------- failure modes
def test_empty_field_fails_clearly(survey, tmp_path):
    """Exposures holding only noise: no stars to measure, a clear error and no output."""
    from stdatamodels.jwst import datamodels

    rng = np.random.default_rng(3)
    empty = []
    for path in survey["files"]["F300M"][:4]:
        model = datamodels.open(str(path))
        model.data = np.where(np.isfinite(model.data), rng.normal(0, 1, model.data.shape) * model.err, np.nan)
        model.data = model.data.astype(np.float32)
        target = tmp_path / "in" / path.name
        target.parent.mkdir(exist_ok=True)
        model.save(str(target))
        empty.append(str(target))
    with pytest.raises(wfutils.InputError, match=r"F300M: no point sources in 4 exposures"):
        align_relative.main([*empty, "--out-dir", str(tmp_path / "rel")])
    with pytest.raises(wfutils.InputError, match=r"F300M: no point sources detected"):
        align_absolute.main([*empty, "--refcat", str(survey["refcat"]), "--out-dir", str(tmp_path / "abs")])
    assert not (tmp_path / "rel").exists() and not (tmp_path / "abs").exists()


def test_wrong_catalog_columns_and_catalog_off_the_field(survey, tmp_path):
    inputs = [str(p) for p in survey["files"]["F300M"][:8]]
    refcat = Table.read(survey["refcat"], format="ascii.ecsv")
    wrong = Table({"alpha": refcat["ra"], "delta": refcat["dec"]})
    wrong.write(tmp_path / "wrong.ecsv", format="ascii.ecsv")
    with pytest.raises(wfutils.InputError, match=r"wrong.ecsv: no RA column"):
        align_absolute.main([*inputs, "--refcat", str(tmp_path / "wrong.ecsv"), "--out-dir", str(tmp_path / "o1")])
    far = refcat.copy()
    far["dec"] = far["dec"] + 0.5
    far.write(tmp_path / "far.ecsv", format="ascii.ecsv")
    with pytest.raises(
        wfutils.InputError, match=r"far.ecsv: only 0 of \d+ selected catalogue sources fall on the F300M"
    ):
        align_absolute.main([*inputs, "--refcat", str(tmp_path / "far.ecsv"), "--out-dir", str(tmp_path / "o2")])
    # too few matches: catalogue stars on the field, each moved by a random ~3" (no common offset)
    rng = np.random.default_rng(4)
    corners = np.vstack([ac.footprint(ac.open_model(p)) for p in inputs])
    ra0, dec0 = ac.mean_sky_position(corners[:, 0], corners[:, 1])
    xi, eta = ac.to_tangent(refcat["ra"], refcat["dec"], ra0, dec0)
    sparse = refcat[np.hypot(xi, eta) < 8.0][:25]
    sparse["ra"] = sparse["ra"] + rng.normal(0, 3 / 3600, len(sparse))
    sparse["dec"] = sparse["dec"] + rng.normal(0, 3 / 3600, len(sparse))
    sparse.write(tmp_path / "random.ecsv", format="ascii.ecsv")
    with pytest.raises(wfutils.InputError, match=r"F300M: .*(too few matches|need >= 10)"):
        align_absolute.main([*inputs, "--refcat", str(tmp_path / "random.ecsv"), "--out-dir", str(tmp_path / "o3")])
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))


def test_narrow_field_fits_a_shift_only_and_one_spot_fails():
    """Matches spread over less than min_spread_arcsec fix the shift, not the rotation; sources all in
    one spot are refused with the band named."""
    import align_absolute

    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.uniform(-30, 30, 60), rng.uniform(-1.5, 1.5, 60)])  # a 3"-wide strip
    shift = np.array([0.35, -0.2])
    img = ref + shift + rng.normal(0, 0.005, ref.shape)
    params = align_absolute.resolve_params({}, "NIRCAM")
    result = align_absolute.fit_to_reference(img, ref, params, 0.05, "F277W")
    fit = result["fit"]
    assert fit["fitgeom"] == "shift"
    np.testing.assert_allclose(-np.asarray(fit["shift"]), shift, atol=0.003)
    spot = np.column_stack([rng.normal(0, 0.01, 20), rng.normal(0, 0.01, 20)])
    with pytest.raises(wfutils.InputError, match="F277W: (degenerate fit|too few matches)"):
        align_absolute.fit_to_reference(spot + shift, spot, params, 0.05, "F277W")
