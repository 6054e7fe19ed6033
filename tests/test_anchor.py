"""Sky anchoring (scripts/anchor_background.py): binned-median fits, resolution matching, and the
command line on a synthetic scene whose bands are exactly linear in each other."""

from __future__ import annotations

import numpy as np
import pytest

import anchor_background as ab
from wflib import wfutils

RA0, DEC0 = 24.17, 15.78
BLOBS = [
    (0.0, 0.0, 12.0, 4.0),
    (8.0, -5.0, 1.5, 6.0),
    (-9.0, 6.0, 2.5, 3.0),
    (5.0, 9.0, 0.8, 10.0),
    (-6.0, -8.0, 1.2, 5.0),
]


def scene(xi, eta, extra_sigma):
    """Sum of Gaussian blobs (xi, eta, sigma arcsec, peak MJy/sr), each broadened by ``extra_sigma``."""
    out = np.zeros(np.shape(xi))
    for x0, y0, s, peak in BLOBS:
        s2 = s**2 + extra_sigma**2
        out += peak * s**2 / s2 * np.exp(-0.5 * ((xi - x0) ** 2 + (eta - y0) ** 2) / s2)
    return out


def tan_wcs(pixscale, shape):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA0, DEC0]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    wcs.wcs.cdelt = [-pixscale / 3600, pixscale / 3600]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def render(pixscale, shape, fwhm, oversample=1):
    """The scene at ``fwhm`` resolution, averaged over pixels of ``pixscale`` arcsec."""
    ny, nx = shape
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    total = np.zeros(shape)
    for dy in sub:
        for dx in sub:
            xi = -((xx + dx) - (nx - 1) / 2) * pixscale
            eta = ((yy + dy) - (ny - 1) / 2) * pixscale
            total += scene(xi, eta, fwhm / 2.3548)
    return total / oversample**2


def write_fits(path, data, pixscale, header_extra):
    from astropy.io import fits

    header = tan_wcs(pixscale, data.shape).to_header()
    header["BUNIT"] = "MJy/sr"
    header.update(header_extra)
    primary = fits.PrimaryHDU()
    if "FILTER" in header_extra:  # as in jwst i2d files
        primary.header["FILTER"] = header_extra["FILTER"]
    fits.HDUList([primary, fits.ImageHDU(data.astype(np.float32), header, name="SCI")]).writeto(path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 0.6"-pixel reference at 2" resolution with zero sky, and two 0.1"-pixel mosaics (F770W,
    F1000W) at JWST resolution with pedestals; F770W = ref / 0.9, F1000W = 0.5 F770W."""
    rng = np.random.default_rng(31)
    root = tmp_path_factory.mktemp("anchor")
    ref = 0.9 * render(0.6, (80, 80), 2.0, oversample=5) + rng.normal(0, 0.005, (80, 80))
    write_fits(root / "irac4.fits", ref, 0.6, {"FWHM": 2.0, "BAND": "IRAC4", "PROXY": "F770W"})
    base = render(0.1, (260, 300), 0.3)
    mosaic = base + 0.25 + rng.normal(0, 0.02, base.shape)
    mosaic[:20, :] = np.nan  # a ragged edge and a hole
    mosaic[100:120, 150:170] = np.nan
    write_fits(root / "m770_i2d.fits", mosaic, 0.1, {"FILTER": "F770W"})
    write_fits(root / "m1000_i2d.fits", 0.5 * base - 0.1 + rng.normal(0, 0.02, base.shape), 0.1, {"FILTER": "F1000W"})
    return root, {"F770W": 0.25, "F1000W": -0.1}


# ----------------------------------------------------------------------------- pure functions
def test_binned_median_fit_recovers_the_intercept_despite_outliers():
    rng = np.random.default_rng(32)
    x = rng.uniform(0.0, 4.0, 20000)
    y = 0.3 + 1.2 * x + rng.normal(0, 0.05, x.size)
    y[(x > 2.0) & (x < 2.3)] += 1.0  # a "spur" of pixels with another band ratio
    fit = ab.fit_relation(x, y, [0.2, 4.0], dict(ab.DEFAULTS))
    assert fit["intercept"] == pytest.approx(0.3, abs=0.005)
    assert fit["slope"] == pytest.approx(1.2, abs=0.005)
    assert not fit["bin_kept"].all()  # the spur's bin was clipped
    with pytest.raises(wfutils.InputError, match="bins"):
        ab.fit_relation(x, y, [10.0, 20.0], dict(ab.DEFAULTS))


def test_convolution_reaches_the_target_resolution_and_blanks_edges():
    pixel = 0.1
    image = render(pixel, (201, 201), 0.3)
    image[:, :30] = np.nan
    out = ab.convolve_to(image, 0.3, 2.0, pixel)
    expected = render(pixel, (201, 201), 2.0)
    error = np.abs(out - expected)[np.isfinite(out)]
    assert np.percentile(error, 99) < 2e-3 * expected.max() and error.max() < 5e-3 * expected.max()
    assert np.isnan(out[:, :50]).all()  # within 2" of the NaN edge the kernel is not 99 % covered
    assert np.isfinite(out[22:-22, 52:-22]).all()


def test_pixel_average_is_centred():
    image = np.zeros((41, 41))
    image[20, 20] = 1.0
    for width in (4.0, 5.0, 6.45):
        out = ab.pixel_average(image, width, min_coverage=0.0)
        assert np.allclose(out, out[::-1, ::-1]) and out.sum() == pytest.approx(1.0)


def test_fit_order_follows_band_pairs_and_refuses_cycles():
    inst = {"F770W": "MIRI", "F1000W": "MIRI", "F2100W": "MIRI", "F360M": "NIRCAM", "F200W": "NIRCAM"}.get
    order = ab.fit_order(
        ["F2100W", "F1000W", "F770W", "F200W", "F360M"], {"F770W": 1, "F360M": 1}, {"F2100W": "F1000W"}, inst
    )
    position = {band: k for k, (band, _) in enumerate(order)}
    assert dict(order)["F770W"] == "reference" and dict(order)["F200W"] == "F360M"
    assert position["F1000W"] < position["F2100W"] and position["F770W"] < position["F1000W"]
    with pytest.raises(wfutils.InputError, match="cycle"):
        ab.fit_order(["F1000W", "F2100W"], {}, {"F1000W": "F2100W", "F2100W": "F1000W"}, inst)
    with pytest.raises(wfutils.InputError, match="no anchored band"):
        ab.fit_order(["F1000W"], {}, {}, inst)


# ----------------------------------------------------------------------------- command line
def test_cli_anchors_the_reference_band_and_the_others_against_it(synthetic, tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    root, pedestals = synthetic
    ab.main(
        [
            str(root / "m770_i2d.fits"),
            str(root / "m1000_i2d.fits"),
            "--reference",
            f"F770W={root / 'irac4.fits'}",
            "--out-dir",
            str(tmp_path / "out"),
            "--table",
            str(tmp_path / "fit.ecsv"),
            "--qa-png",
            str(tmp_path / "fit.png"),
            "--params",
            '{"fwhm_arcsec": {"F770W": 0.3, "F1000W": 0.3}, "intensity_range": {"F770W": [0.05, 2.5]}}',
        ]
    )
    table = Table.read(tmp_path / "fit.ecsv", format="ascii.ecsv")
    rows = {r["band"]: r for r in table}
    assert rows["F770W"]["role"] == "anchor" and rows["F770W"]["against"] == "IRAC4"
    assert rows["F1000W"]["role"] == "relative" and rows["F1000W"]["against"] == "F770W"
    for band, pedestal in pedestals.items():
        assert rows[band]["intercept_mjysr"] == pytest.approx(pedestal, abs=0.01)
    assert rows["F770W"]["slope"] == pytest.approx(1 / 0.9, rel=0.01)
    assert rows["F1000W"]["slope"] == pytest.approx(0.5, rel=0.01)
    assert (tmp_path / "fit.png").stat().st_size > 10000
    before = fits.getdata(root / "m770_i2d.fits", "SCI")
    after = fits.getdata(tmp_path / "out" / "m770_i2d.fits", "SCI")
    assert np.nanmedian(before - after) == pytest.approx(rows["F770W"]["intercept_mjysr"], abs=1e-5)


def test_cli_uses_the_proxy_card_and_reports_no_overlap(synthetic, tmp_path):
    root, _ = synthetic
    far = write_fits(tmp_path / "far_i2d.fits", np.ones((50, 50)), 0.1, {"FILTER": "F770W"})
    from astropy.io import fits

    with fits.open(far, mode="update") as hdul:
        hdul["SCI"].header["CRVAL1"] = RA0 + 0.5
    with pytest.raises(wfutils.InputError, match="do not overlap"):
        ab.main(
            [
                str(far),
                "--reference",
                str(root / "irac4.fits"),
                "--out-dir",
                str(tmp_path / "o"),
                "--table",
                str(tmp_path / "t.ecsv"),
            ]
        )
    with pytest.raises(wfutils.InputError, match="no mosaic"):
        ab.main(
            [
                str(root / "m1000_i2d.fits"),
                "--reference",
                f"F770W={root / 'irac4.fits'}",
                "--out-dir",
                str(tmp_path / "o"),
                "--table",
                str(tmp_path / "t.ecsv"),
            ]
        )


def test_compact_sources_with_other_band_ratios_are_masked_from_band_fits(tmp_path):
    """Diffuse emission in lock-step (F1000W = 0.5 F770W) plus compact sources twice as bright in
    F1000W relative to F770W, as HII regions, whose share grows with intensity: the binned
    medians follow a changing mix of the two ratios and the intercept is biased unless the
    compact sources are masked."""
    from astropy.io import fits

    rng = np.random.default_rng(33)
    shape, pix = (260, 300), 0.1
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    diffuse = 2.0 * np.exp(-np.hypot(xx - 150, yy - 130) / 120.0)
    compact = np.zeros(shape)  # HII regions, more of them where the diffuse emission is bright
    x0, y0 = rng.uniform(0, 300, 3000), rng.uniform(0, 260, 3000)
    near = rng.uniform(0, 1, x0.size) < (diffuse[y0.astype(int), x0.astype(int)] / 2.0) ** 2
    for xc, yc, peak in zip(x0[near], y0[near], rng.uniform(0.2, 3.0, x0.size)[near], strict=True):
        compact += peak * np.exp(-0.5 * ((xx - xc) ** 2 + (yy - yc) ** 2) / 2.5**2)
    bands = {"F770W": diffuse + compact, "F1000W": 0.5 * diffuse + 1.0 * compact - 0.1}
    recs = {}
    for band, data in bands.items():
        path = write_fits(tmp_path / f"{band}_i2d.fits", data + rng.normal(0, 0.02, shape), pix, {"FILTER": band})
        recs[band] = ab.read_mosaic(path, 0)
    params = {**ab.DEFAULTS, "intensity_range": {}}
    intercepts = {}
    masks = tuple(ab.compact_source_mask(recs[b].data, pix, params) for b in ("F1000W", "F770W"))
    for mask in (True, False):
        x, y = ab.comparison_pair(recs["F1000W"], 0.3, recs["F770W"], 0.3, 0.3, params, masks if mask else None)
        intercepts[mask] = ab.fit_relation(x, y, None, params)["intercept"]
    assert intercepts[True] == pytest.approx(-0.1, abs=0.01)
    assert abs(intercepts[False] + 0.1) > 0.05
    assert fits.getdata(tmp_path / "F770W_i2d.fits", "SCI").shape == shape  # inputs untouched


def test_matched_filter_masks_compact_sources_below_the_pixel_noise():
    """Compact sources peaking at 1.5x the pixel noise mostly escape a per-pixel 3-sigma threshold
    (40% of their cores masked); on the residual smoothed by the PSF (the matched filter) they
    stand at ~5 sigma and are masked (99.8%)."""
    rng = np.random.default_rng(34)
    shape, pix, fwhm = (260, 300), 0.1, 0.3
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    compact = np.zeros(shape)
    for xc, yc in zip(rng.uniform(10, 290, 60), rng.uniform(10, 250, 60), strict=True):
        compact += 0.03 * np.exp(-0.5 * ((xx - xc) ** 2 + (yy - yc) ** 2) / 2.5**2)
    image = 1.0 + compact + rng.normal(0, 0.02, shape)
    inside = compact > 0.015  # the sources' half-maximum cores
    masked = {}
    for matched in (False, True):
        params = {**ab.DEFAULTS, "compact_grow_arcsec": 0.3, "compact_matched_filter": matched}
        masked[matched] = ab.compact_source_mask(image, pix, params, fwhm)
    assert masked[False][inside].mean() < 0.5
    assert masked[True][inside].mean() > 0.95
    assert masked[True][compact < 0.001].mean() < 0.02  # noise alone is rarely masked


def test_box_outline_rasterises_back_to_the_box():
    valid = np.zeros((60, 80), bool)
    valid[12:40, 5:71] = True
    valid[20, 30] = False  # a hole inside does not shrink the box
    box = ab.usable_box(valid)
    assert box == (12, 40, 5, 71)
    expected = np.pad(np.ones((28, 66), bool), ((12, 20), (5, 9)))
    assert np.array_equal(ab.polygon_mask(valid.shape, *ab.box_outline(box)), expected)
    assert ab.usable_box(np.zeros((3, 3), bool)) is None


def write_part(path, shape, box, filter_name):
    """Calibrated exposure on the synthetic mosaics' grid whose usable pixels are ``box`` only (a Lyot part)."""
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    y0, y1, x0, x1 = box
    data = np.full(shape, np.nan, np.float32)
    data[y0:y1, x0:x1] = 1.0
    model = datamodels.ImageModel(data)
    flagged = dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["NON_SCIENCE"]
    model.dq = np.where(np.isfinite(data), 0, flagged).astype(np.uint32)
    model.meta.instrument.name, model.meta.instrument.filter = "MIRI", filter_name
    model.meta.exposure.type = "MIR_IMAGE"
    model.meta.bunit_data = "MJy/sr"
    header = tan_wcs(0.1, shape).to_header()
    w = model.meta.wcsinfo
    w.ctype1, w.ctype2 = header["CTYPE1"], header["CTYPE2"]
    w.crval1, w.crval2 = header["CRVAL1"], header["CRVAL2"]
    w.crpix1, w.crpix2 = header["CRPIX1"], header["CRPIX2"]
    w.cdelt1, w.cdelt2 = header["CDELT1"], header["CDELT2"]
    w.cunit1 = w.cunit2 = "deg"
    w.pc1_1, w.pc1_2, w.pc2_1, w.pc2_2 = 1.0, 0.0, 0.0, 1.0
    model.save(str(path))
    return path


def test_excluded_footprint_keeps_a_badly_tied_part_out_of_the_fit(synthetic, tmp_path):
    """A corner of the F1000W mosaic (a Lyot part tied only by a strip) sits 0.1 MJy/sr high among
    the faint pixels: the intercept follows it unless that part's footprint is left out."""
    from astropy.io import fits
    from astropy.table import Table

    root, pedestals = synthetic
    box = (170, 260, 0, 110)
    shifted = fits.getdata(root / "m1000_i2d.fits", "SCI").astype(float)
    shifted[box[0] : box[1], box[2] : box[3]] += 0.1
    mosaic = write_fits(tmp_path / "m1000_i2d.fits", shifted, 0.1, {"FILTER": "F1000W"})
    part = write_part(tmp_path / "jw_lyot_cal.fits", shifted.shape, box, "F1000W")
    intercepts = {}
    for exclude in (False, True):
        out = tmp_path / f"out{exclude}"
        ab.main(
            [str(root / "m770_i2d.fits"), str(mosaic), "--reference", f"F770W={root / 'irac4.fits'}"]
            + (["--exclude-footprint", str(part)] if exclude else [])
            + [
                "--out-dir",
                str(out),
                "--table",
                str(out / "fit.ecsv"),
                "--params",
                '{"fwhm_arcsec": {"F770W": 0.3, "F1000W": 0.3}, "intensity_range": {"F770W": [0.05, 2.5]}}',
            ]
        )
        rows = {r["band"]: r for r in Table.read(out / "fit.ecsv", format="ascii.ecsv")}
        intercepts[exclude] = rows["F1000W"]["intercept_mjysr"]
        after = fits.getdata(out / "m1000_i2d.fits", "SCI")
        assert np.nanmedian(shifted - after) == pytest.approx(intercepts[exclude], abs=1e-5)  # whole mosaic shifted
    assert intercepts[True] == pytest.approx(pedestals["F1000W"], abs=0.01)
    assert intercepts[False] - pedestals["F1000W"] > 0.03
    other = write_part(tmp_path / "f2100w_lyot_cal.fits", shifted.shape, box, "F2100W")
    with pytest.raises(wfutils.InputError, match="F2100W.*no mosaic"):
        ab.main(
            [
                str(mosaic),
                "--reference",
                f"F1000W={root / 'irac4.fits'}",
                "--exclude-footprint",
                str(other),
                "--out-dir",
                str(tmp_path / "o"),
                "--table",
                str(tmp_path / "o.ecsv"),
            ]
        )
