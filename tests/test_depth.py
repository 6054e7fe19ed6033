"""Empty-aperture depths (scripts/depth.py) against point sources injected with the simulator's renderer."""

from __future__ import annotations

import json

import deep_mosaic
import numpy as np
import pytest

import depth
import mosaic_background as mb
import simulate_survey
import simulator_psf

SCALE = 0.03
PIXEL_SR = SCALE**2 / 4.254517e10


def test_encircled_energy_of_a_gaussian():
    sigma = 0.05
    psf = simulator_psf.render_psf([(1.0, sigma)], SCALE, 4, 3.0)
    for r in (0.05, 0.1, 0.2):
        assert depth.encircled_energy(psf, SCALE / 4, r) == pytest.approx(
            1 - np.exp(-0.5 * (r / sigma) ** 2), abs=0.003
        )


def test_psf_on_the_mosaic_grid_keeps_flux_and_centre():
    psf = simulator_psf.render_psf(simulate_survey.psf_components("F200W", deep_mosaic.PSF_CFG), SCALE, 4, 3.0)
    stamp, half, (fx, fy) = depth.psf_on_grid(psf, SCALE / 4, 4, SCALE, 0.125, -0.375)
    assert (fx, fy) == pytest.approx((0.125, -0.375))
    assert stamp.sum() == pytest.approx(1.0, abs=1e-3)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    assert (stamp * xx).sum() == pytest.approx(0.125, abs=0.01)
    assert (stamp * yy).sum() == pytest.approx(-0.375, abs=0.01)


@pytest.fixture(scope="module")
def field():
    m = deep_mosaic.make_deep_mosaic((768, 768), SCALE, "F200W", seed=5)
    bits, _, _ = mb.band_tiers(m["sci"], m["valid"], {}, SCALE)
    bksub, _ = mb.subtract_background(m["sci"], m["valid"], bits, {}, SCALE)
    return {**m, "bksub": np.nan_to_num(bksub), "free": m["valid"] & (bits == 0)}


def test_predicted_depth_matches_injection_recovery_within_0p1_mag(field):
    """Prediction (polynomial at 0.1", EE of the PSF file) vs point sources rendered like the simulator's."""
    params = dict(depth.DEFAULTS)
    psf = simulator_psf.render_psf(field["psf"], SCALE, 4, 6.0, [SCALE])  # optics x pixel integration
    predicted = depth.measure_depth(field["bksub"], field["free"], SCALE, PIXEL_SR, psf, SCALE / 4, params)
    # injection: 400 point sources of 10 sigma at random sub-pixel positions on source-free sky,
    # rendered by the simulator (Gaussians integrated over pixels), measured in r = 0.1" apertures;
    # the recovered fraction is what the apertures gained (as in depth.inject_recover)
    from photutils.aperture import CircularAperture
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(7)
    centres = depth.aperture_centres(distance_transform_edt(field["free"]), 8.0, 400, rng)
    x = centres[:, 0] + rng.uniform(-0.5, 0.5, len(centres))
    y = centres[:, 1] + rng.uniform(-0.5, 0.5, len(centres))
    flux = 10 * predicted["sigma_total_ujy"]
    image = field["bksub"].astype(np.float64)
    simulate_survey.add_gaussian_sources(image, x, y, np.full(x.size, flux), np.zeros(x.size), field["psf"], SCALE)
    apertures = CircularAperture(np.c_[x, y], r=0.1 / SCALE)
    to_ujy = PIXEL_SR * 1e12
    measured, before = (apertures.do_photometry(a, method="exact")[0] * to_ujy for a in (image, field["bksub"]))
    fraction = np.median(measured - before) / flux
    scatter = depth.robust_sigma(measured - np.median(measured))
    recovered = depth.depth_mag(scatter / fraction, 5.0)
    print(
        json.dumps(
            {
                "predicted_ab": predicted["depth_ab"],
                "injection_ab": recovered,
                "n_injected": int(x.size),
                "ee_model": predicted["encircled_energy"],
                "recovered_fraction": float(fraction),
            }
        )
    )
    assert len(centres) >= 200
    assert abs(predicted["depth_ab"] - recovered) <= 0.1
    assert predicted["encircled_energy"] == pytest.approx(fraction, abs=0.02)
    # the drizzle-like correlation makes apertures noisier than sqrt(N) x the pixel noise
    row = next(r for r in predicted["rows"] if r["radius_arcsec"] == 0.1)
    assert row["sigma_ujy"] > 1.2 * row["uncorrelated_ujy"]


def test_command_line_writes_table_and_plot(field, tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    m = field
    path = deep_mosaic.write_mosaic(tmp_path / "T_F200W_i2d.fits", m["sci"], m["err"], m["valid"], SCALE)
    with fits.open(path, mode="update") as hdul:  # a background product: SCI_BKSUB
        hdul.append(fits.ImageHDU(m["bksub"].astype(np.float32), hdul["SCI"].header, name="SCI_BKSUB"))
    mask = tmp_path / "T_F200W_tiers.fits"  # the band's tier mask
    bits = (~m["free"] & m["valid"]).astype(np.uint8)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(bits, name="BKGMASK")]).writeto(mask)
    psf_path = tmp_path / "F200W_psf.fits"
    simulator_psf.main(
        [
            "--filter",
            "F200W",
            "--sim",
            json.dumps({"psf": deep_mosaic.PSF_CFG}),
            "--pixel-scale",
            str(SCALE),
            "--pixel-boxes",
            str(SCALE),
            "--out",
            str(psf_path),
        ]
    )
    assert fits.getheader(psf_path)["OVERSAMP"] == 4
    depth.main(
        [
            str(path),
            "--mask",
            str(mask),
            "--psf",
            str(psf_path),
            "--table",
            str(tmp_path / "d.ecsv"),
            "--plot",
            str(tmp_path / "d.png"),
            "--inject",
            "200",
        ]
    )
    table = Table.read(tmp_path / "d.ecsv", format="ascii.ecsv")
    assert table["radius_arcsec"].min() == pytest.approx(0.05) and table["radius_arcsec"].max() == pytest.approx(1.5)
    meta = table.meta
    assert abs(meta["depth_ab"] - meta["injection"]["depth_ab"]) <= 0.1
    assert meta["band"] == "F200W" and 0.5 < meta["encircled_energy"] < 1
    assert (tmp_path / "d.png").stat().st_size > 10_000
