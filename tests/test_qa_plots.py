"""Unit tests of the report's QA functions (scripts/qa_plots.py) and the release comparison (scripts/regress.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import qa_plots
import regress

PIXEL_ARCSEC = 0.06


def star_field(shape=(160, 180), n=60, seed=3, fwhm_px=2.5):
    """Gaussian stars on a smooth background, no noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 0.2 + 0.001 * xx
    sigma = fwhm_px / 2.355
    for y, x, f in zip(
        rng.uniform(10, shape[0] - 10, n), rng.uniform(10, shape[1] - 10, n), rng.uniform(1, 20, n), strict=True
    ):
        image += f * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return image


def wcs_header(shape, crval=(150.0, 2.0), scale_arcsec=PIXEL_ARCSEC):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w.to_header()


def write_mosaic(path, sci, header, band="F200W"):
    primary = fits.PrimaryHDU()
    primary.header["FILTER"] = band
    sci_hdu = fits.ImageHDU(sci.astype(np.float32), header=header, name="SCI")
    sci_hdu.header["BUNIT"] = "MJy/sr"
    wht = fits.ImageHDU(np.where(np.isfinite(sci), 1.0, 0.0).astype(np.float32), header=header, name="WHT")
    fits.HDUList([primary, sci_hdu, wht]).writeto(path)
    return path


# ----------------------------------------------------------------------------- qa_plots
def test_percentile_stretch_is_linear_between_2_and_98_percent():
    image = np.arange(100.0).reshape(10, 10)
    image[0, 0] = np.nan
    scaled, lo, hi = qa_plots.percentile_stretch(image)
    finite = image[np.isfinite(image)]
    assert lo == pytest.approx(np.percentile(finite, 2)) and hi == pytest.approx(np.percentile(finite, 98))
    assert np.isnan(scaled[0, 0])
    assert scaled[5, 0] == pytest.approx((50 - lo) / (hi - lo))
    assert np.nanmin(scaled) == 0.0 and np.nanmax(scaled) == 1.0


def test_block_average_ignores_nan_and_keeps_empty_blocks_nan():
    image = np.array([[1.0, 3.0, np.nan, np.nan], [np.nan, 5.0, np.nan, np.nan]])
    out = qa_plots.block_average(image, 2)
    assert out.shape == (1, 2)
    assert out[0, 0] == pytest.approx(3.0) and np.isnan(out[0, 1])
    assert qa_plots.reduction_factor((30000, 12000), 1200) == 25


def test_benchmark_summary_sums_jobs_and_takes_the_largest_memory():
    records = [
        {"rule": "drizzle_tile", "s": "10.5", "cpu_time": "9", "max_rss": "500"},
        {"rule": "drizzle_tile", "s": "4.5", "cpu_time": "4", "max_rss": "700"},
        {"rule": "gather_tiles", "s": "2", "cpu_time": "-", "max_rss": "-"},
    ]
    summary = qa_plots.benchmark_summary(records)
    assert [r["rule"] for r in summary] == ["drizzle_tile", "gather_tiles"]
    assert summary[0] == {
        "rule": "drizzle_tile",
        "jobs": 2,
        "wall_s": 15.0,
        "max_wall_s": 10.5,
        "cpu_s": 13.0,
        "max_rss_mb": 700.0,
    }
    assert summary[1]["max_rss_mb"] == 0.0 and summary[1]["jobs"] == 1


def test_benchmark_files_of_one_target(tmp_path):
    for rel in ("drizzle_tile/A/F200W_000.tsv", "anchor_background/A.tsv", "drizzle_tile/B/F200W_000.tsv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("s\tmax_rss\n1\t2\n")
    names = [p.relative_to(tmp_path).as_posix() for p in qa_plots.benchmark_files(tmp_path, "A")]
    assert names == ["anchor_background/A.tsv", "drizzle_tile/A/F200W_000.tsv"]


def test_noise_curve_reads_block_factors_in_order():
    header = fits.Header()
    header["NCB04"], header["NCB01"], header["NCB02"], header["NCPIXRAT"] = 1.6, 1.0, 1.3, 0.8
    assert qa_plots.noise_curve(header) == ([1, 2, 4], [1.0, 1.3, 1.6])


def test_brightest_compact_source_is_the_star_not_a_hot_pixel():
    image = np.zeros((80, 80))
    yy, xx = np.mgrid[:80, :80]
    image += 50 * np.exp(-((yy - 30) ** 2 + (xx - 50) ** 2) / 4.0)
    image[60, 20] = 200.0  # single hot pixel, brighter at its peak
    assert qa_plots.brightest_compact_source(image, np.ones_like(image, bool)) == (30, 50)


def test_quicklook_png_uses_the_percentile_stretch(tmp_path):
    sci = star_field()
    path = write_mosaic(tmp_path / "T_F200W_i2d.fits", sci, wcs_header(sci.shape))
    out = tmp_path / "ql.png"
    result = qa_plots.quicklook(path, out, max_side=100)
    assert result["factor"] == 2
    reduced = qa_plots.block_average(sci, 2)
    assert result["low"] == pytest.approx(np.percentile(reduced, 2), rel=1e-5)
    assert result["high"] == pytest.approx(np.percentile(reduced, 98), rel=1e-5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_composite_puts_bands_of_integer_scale_ratios_on_the_coarsest_grid(tmp_path):
    fine = star_field((160, 180))
    coarse = qa_plots.block_average(fine, 2)
    a = write_mosaic(tmp_path / "T_F200W_i2d.fits", fine, wcs_header(fine.shape), "F200W")
    b = write_mosaic(
        tmp_path / "T_F444W_i2d.fits", coarse, wcs_header(coarse.shape, scale_arcsec=2 * PIXEL_ARCSEC), "F444W"
    )
    images, _ = qa_plots.common_grid_images([b, a, a], max_side=1000)
    assert images[0].shape == images[1].shape == (80, 90)
    assert np.allclose(images[0], images[1], rtol=1e-5)
    result = qa_plots.composite(b, a, a, tmp_path / "rgb.png")
    assert result["bands"] == ["F444W", "F200W", "F200W"]


# ----------------------------------------------------------------------------- regress
def test_compare_recovers_gain_offset_and_shift():
    old = star_field()
    from scipy.ndimage import shift as nd_shift

    new = 1.02 * nd_shift(old, (0.5, -1.25), order=3, mode="nearest") + 0.01
    valid = np.ones(old.shape, bool)
    stats = regress.compare(old, new, valid, PIXEL_ARCSEC)
    assert stats["shift_y_mas"] == pytest.approx(0.5 * PIXEL_ARCSEC * 1e3, abs=3.0)
    assert stats["shift_x_mas"] == pytest.approx(-1.25 * PIXEL_ARCSEC * 1e3, abs=3.0)
    unshifted = regress.compare(old, 1.02 * old + 0.01, valid, PIXEL_ARCSEC)
    assert unshifted["gain"] == pytest.approx(1.02, abs=1e-6)
    assert unshifted["offset_mjysr"] == pytest.approx(0.01, abs=1e-6)
    assert unshifted["median_diff_mjysr"] == pytest.approx(np.median(0.02 * old + 0.01), rel=1e-9)
    assert unshifted["flux_ratio"] == pytest.approx((1.02 * old.sum() + 0.01 * old.size) / old.sum(), rel=1e-9)
    assert abs(unshifted["shift_x_mas"]) < 1 and abs(unshifted["shift_y_mas"]) < 1


def test_regress_pair_reprojects_onto_the_old_grid(tmp_path):
    """Old release: same pixels, WCS moved 0.1" north, 2% fainter, 0.005 MJy/sr lower: all recovered."""
    sci = star_field()
    header = wcs_header(sci.shape)
    new = write_mosaic(tmp_path / "T_F200W_i2d.fits", sci, header)
    old_header = wcs_header(sci.shape, crval=(150.0, 2.0 + 0.1 / 3600))
    old = write_mosaic(tmp_path / "old_F200W_i2d.fits", sci / 1.02 - 0.005, old_header)
    stats = regress.regress_pair(new, old, tmp_path / "out" / "T_F200W_i2d_regress.fits", tmp_path / "out" / "r.png")
    # on the old grid, the new image's sources sit 0.1" (1.67 pixels) further south: -100 mas along y
    assert stats["shift_y_mas"] == pytest.approx(-100.0, abs=8.0)
    assert abs(stats["shift_x_mas"]) < 8.0
    assert stats["common_fraction"] > 0.95
    with fits.open(tmp_path / "out" / "T_F200W_i2d_regress.fits") as hdul:
        assert hdul[0].header["WFSTEP"] == "regress"
        assert hdul["SCI"].data.shape == sci.shape
        assert hdul[0].header["RGMEDDIF"] == pytest.approx(stats["median_diff_mjysr"])
    # the same mosaic against itself: nothing changed
    same = regress.regress_pair(new, new, tmp_path / "out" / "same.fits")
    assert same["gain"] == pytest.approx(1.0, abs=1e-6) and same["median_diff_mjysr"] == pytest.approx(0.0, abs=1e-9)
    assert math.hypot(same["shift_x_mas"], same["shift_y_mas"]) < 1.0


def test_regress_refuses_disjoint_fields(tmp_path):
    sci = star_field()
    a = write_mosaic(tmp_path / "T_F200W_i2d.fits", sci, wcs_header(sci.shape))
    b = write_mosaic(tmp_path / "old_F200W_i2d.fits", sci, wcs_header(sci.shape, crval=(151.0, 2.0)))
    with pytest.raises(regress.wfutils.InputError, match="no valid pixel in common"):
        regress.regress_pair(a, b, tmp_path / "x.fits")
