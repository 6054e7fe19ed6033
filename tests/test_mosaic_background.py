"""Tiered mosaic background (scripts/mosaic_background.py) against injected backgrounds and galaxies."""

from __future__ import annotations

import json

import deep_mosaic
import numpy as np
import pytest

import mosaic_background as mb
from wflib import wfutils

SCALE = 0.03
SHAPE = (1024, 1024)


# ----------------------------------------------------------------------------- pure functions
def test_pixel_parameters_scale_with_the_pixel_scale():
    p = mb.scaled_params({}, 0.06)
    assert p["ring_radius_px"] == pytest.approx(40.0)
    assert [t["sigma"] for t in p["tiers"]] == pytest.approx([12.5, 7.5, 2.5, 1.0])
    assert [t["dilate_radius"] for t in p["tiers"]] == pytest.approx([16.5, 12.5, 10.5, 9.5])
    assert [t["npixels"] for t in p["tiers"]] == [4, 2, 1, 1]  # areas scale with the square
    assert p["box_px"] == 5 and p["rough_box_px"] == 50 and p["filter_size"] == 5
    assert mb.scaled_params({}, 0.03)["box_px"] == 10


def test_masks_merge_on_the_finest_grid():
    fine = np.zeros((8, 8), np.uint8)
    fine[1, 1] = 1
    coarse = np.zeros((4, 4), np.uint8)
    coarse[3, 3] = 4
    merged = mb.merge_masks([(fine, 0.031), (coarse, 0.062)])
    assert merged.shape == (8, 8)
    assert merged[1, 1] == 1 and (merged[6:8, 6:8] == 4).all() and merged.sum() == 1 + 4 * 4
    back = mb.to_coarse(merged, 2)
    assert back[0, 0] == 1 and back[3, 3] == 4 and np.count_nonzero(back) == 2
    with pytest.raises(wfutils.InputError, match="not integer multiples"):
        mb.merge_masks([(fine, 0.031), (np.zeros((3, 3), np.uint8), 0.062)])


def test_disk_dilation_matches_the_radius_across_strips():
    mask = np.zeros((300, 300), bool)
    mask[150, 150] = True
    grown = mb.dilate_disk(mask, 19.0, strip=64)  # the disk straddles three strips
    assert grown.sum() == pytest.approx(np.pi * 19.0**2, rel=0.02)
    assert grown[150, 169] and not grown[150, 170]


# ----------------------------------------------------------------------------- against the truth
BIG = {"x": [700.0], "y": [300.0], "flux_ujy": [200.0], "sigma_arcsec": [1.0], "kind": ["galaxy"]}


def bright_galaxies():
    """Isolated bright galaxies on a grid (5-50 uJy, 22.1-24.2 AB, sigma 0.1-0.3"), plus one large one (BIG)."""
    xs, ys = np.meshgrid([150.0, 350.0, 850.0], [200.0, 550.0, 850.0])
    n = xs.size
    return {
        "x": np.concatenate([xs.ravel(), BIG["x"]]),
        "y": np.concatenate([ys.ravel(), BIG["y"]]),
        "flux_ujy": np.concatenate([np.geomspace(5.0, 50.0, n), BIG["flux_ujy"]]),
        "sigma_arcsec": np.concatenate([np.linspace(0.1, 0.3, n), BIG["sigma_arcsec"]]),
        "kind": np.array(["bright"] * n + ["big"]),
    }


@pytest.fixture(scope="module")
def subtracted():
    """A 1024^2 0.03"/px deep mosaic with an injected plane + wisp, background-subtracted."""
    m = deep_mosaic.make_deep_mosaic(SHAPE, SCALE, "F200W", seed=3, extra_sources=bright_galaxies())
    injected = deep_mosaic.injected_background(SHAPE)
    data = np.where(m["valid"], m["sci"] + injected, np.nan)
    bits, _, stats = mb.band_tiers(data, m["valid"], {}, SCALE)
    bksub, background = mb.subtract_background(data, m["valid"], bits, {}, SCALE)
    return {**m, "injected": injected, "bits": bits, "bksub": bksub, "background": background, "stats": stats}


def test_injected_background_is_removed_to_five_percent(subtracted):
    s = subtracted
    valid, free = s["valid"], s["valid"] & (s["bits"] == 0)
    amplitude = float(np.ptp(s["injected"][valid]))
    residual = (s["background"] - s["injected"]).astype(np.float64)
    rms = float(np.sqrt(np.mean(residual[free] ** 2))) / amplitude
    # large-scale residual: 64x64-pixel blocks of source-free pixels (the estimator's noise averaged down)
    blocks = []
    for y in range(0, SHAPE[0], 64):
        for x in range(0, SHAPE[1], 64):
            sel = free[y : y + 64, x : x + 64]
            if sel.sum() > 0.3 * sel.size:
                blocks.append(residual[y : y + 64, x : x + 64][sel].mean())
    block_max = float(np.max(np.abs(blocks))) / amplitude
    print(
        json.dumps(
            {
                "amplitude_mjysr": amplitude,
                "free_fraction": float(free.sum() / valid.sum()),
                "rms_over_amplitude": rms,
                "block64_max_over_amplitude": block_max,
                "p99_over_amplitude": float(np.percentile(np.abs(residual[free]), 99)) / amplitude,
            }
        )
    )
    assert free.sum() > 0.35 * valid.sum()
    assert rms <= 0.05
    assert block_max <= 0.05


def aperture_fluxes(image, x, y, radius_px):
    from photutils.aperture import CircularAperture

    return CircularAperture(np.c_[x, y], r=radius_px).do_photometry(np.nan_to_num(image), method="exact")[0]


def test_galaxy_fluxes_in_2arcsec_apertures_change_by_less_than_2_percent(subtracted):
    """Bright isolated galaxies within 2% in 2"-diameter apertures; the large one's wings are suppressed."""
    s = subtracted
    gal = bright_galaxies()
    r_px = 1.0 / SCALE
    without_background = aperture_fluxes(s["sci"], gal["x"], gal["y"], r_px)  # true background removed
    after = aperture_fluxes(s["bksub"], gal["x"], gal["y"], r_px)
    truth = aperture_fluxes(s["truth"], gal["x"], gal["y"], r_px)
    change = (after - without_background) / truth
    # isolated: no other source brighter than a third of the galaxy within 3" (the method also lowers
    # the sky next to bright neighbours, whose masks and wings it shares)
    src = s["sources"]
    isolated = np.array(
        [
            not np.any(
                (np.hypot(src["x"] - x, src["y"] - y) < 3.0 / SCALE)
                & (np.hypot(src["x"] - x, src["y"] - y) > 0.5)
                & (src["flux_ujy"] > f / 3)
            )
            for x, y, f in zip(gal["x"], gal["y"], gal["flux_ujy"], strict=True)
        ]
    )
    bright = (gal["kind"] == "bright") & isolated
    big = gal["kind"] == "big"
    big_5 = aperture_fluxes(s["bksub"] - s["sci"], gal["x"][big], gal["y"][big], 2.5 / SCALE)
    big_5 /= aperture_fluxes(s["truth"], gal["x"][big], gal["y"][big], 2.5 / SCALE)
    print(
        json.dumps(
            {
                "bright_changes": [round(float(c), 4) for c in change[bright]],
                "isolated": isolated.tolist(),
                "all_changes": [round(float(c), 4) for c in change],
                "largest_change_2arcsec": float(change[big][0]),
                "largest_change_5arcsec": float(big_5[0]),
            }
        )
    )
    assert bright.sum() >= 6
    assert np.all(np.abs(change[bright]) <= 0.02)
    # the largest galaxy (sigma 1", 200 uJy) loses wing flux on purpose; a Gaussian profile has little to lose
    assert -0.05 < change[big][0] <= 0.005 and -0.05 < big_5[0] <= 0.005


# ----------------------------------------------------------------------------- command line and files
def write_exposure(path, band):
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel((8, 8))
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.filter = band
    model.meta.exposure.exposure_time = 1000.0
    model.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def cli_products(tmp_path_factory):
    """A SW (0.03"/px) and a LW (0.06"/px) band on one grid through tiers, merge and subtract."""
    tmp = tmp_path_factory.mktemp("bkg")
    sw = deep_mosaic.make_deep_mosaic((256, 256), 0.03, "F200W", seed=11)
    lw = deep_mosaic.make_deep_mosaic((128, 128), 0.06, "F444W", seed=12, gap=False)
    paths = {}
    for band, m, scale in (("F200W", sw, 0.03), ("F444W", lw, 0.06)):
        data = m["sci"] + deep_mosaic.injected_background(m["sci"].shape)
        paths[band] = str(deep_mosaic.write_mosaic(tmp / f"T_{band}_i2d.fits", data, m["err"], m["valid"], scale, band))
        mb.main(["tiers", paths[band], str(tmp / f"T_{band}_tiers.fits")])
    mb.main(
        ["merge", str(tmp / "T_F200W_tiers.fits"), str(tmp / "T_F444W_tiers.fits"), "--out", str(tmp / "mask.fits")]
    )
    exposures = [write_exposure(tmp / f"e{i}_cal.fits", "F444W") for i in range(3)]
    out = tmp / "out_F444W_i2d.fits"
    mb.main(
        [
            "subtract",
            paths["F444W"],
            str(out),
            "--mask",
            str(tmp / "mask.fits"),
            "--qa-png",
            str(tmp / "qa.png"),
            "--hdrtab",
            *exposures,
        ]
    )
    return {"tmp": tmp, "out": out, "paths": paths}


def test_subtract_writes_the_ceers_layout(cli_products):
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    out = cli_products["out"]
    with fits.open(out) as hdul:
        names = [h.name for h in hdul]
        for ext in (
            "SCI_BKSUB",
            "SCI",
            "ERR",
            "DQ",
            "CON",
            "WHT",
            "VAR_POISSON",
            "VAR_RNOISE",
            "VAR_FLAT",
            "BKGD",
            "BKGMASK",
            "HDRTAB",
        ):
            assert ext in names
        sci, bksub, bkgd = (np.asarray(hdul[e].data, float) for e in ("SCI", "SCI_BKSUB", "BKGD"))
        good = np.isfinite(bksub)
        assert np.allclose(sci[good] - bkgd[good], bksub[good], atol=1e-6)
        assert hdul["SCI_BKSUB"].header["CTYPE1"] == "RA---TAN"  # DS9 shows it on the sky
        assert len(hdul["HDRTAB"].data) == 3
        assert hdul[0].header["WFSTEP"] == "mosaic_background" and hdul[0].header["BKGSUB"]
        merged = fits.getdata(cli_products["tmp"] / "mask.fits", "BKGMASK")
        assert merged.shape == (256, 256)
        assert np.array_equal(hdul["BKGMASK"].data, mb.to_coarse(merged, 2))
    with datamodels.open(str(out)) as model:
        assert model.sci_bksub.shape == (128, 128) and model.bkgmask.dtype == np.uint8
        assert model.meta.instrument.filter == "F444W"
    assert (cli_products["tmp"] / "qa.png").stat().st_size > 10_000


def test_mask_on_another_grid_is_refused(cli_products, tmp_path):
    from astropy.io import fits

    bad = tmp_path / "bad_mask.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((100, 90), np.uint8), name="BKGMASK")]).writeto(bad)
    with pytest.raises(wfutils.InputError, match="bad_mask.fits"):
        mb.main(["subtract", cli_products["paths"]["F444W"], str(tmp_path / "x.fits"), "--mask", str(bad)])
