"""PSF models, Aniano et al. (2011) kernels and PSF-matched images (scripts/psf_model.py, make_kernel.py,
convolve_image.py, noise_curve.py): numbers against analytic expectations and a point source of known flux.

The PSFs here are the poppy model at reduced cost (3 wavelengths, 256-pixel pupil, small field);
the full-size models and the table of every band come from rules/psf.smk and tests/bench/psf.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import REPO, run_snakemake

import convolve_image
import make_kernel
import noise_curve
import psf_model
from wflib import wfutils

FAST = {"n_wavelengths": 3, "pupil_npix": 256, "fov_arcsec": {"NRC_SW": 4.2, "NRC_LW": 6.0, "MIRI": 10.0}}


@pytest.fixture(scope="module")
def psfs():
    """Fast poppy PSFs of a NIRCam SW, a NIRCam LW and a MIRI band: {band: (array, info)}."""
    return {band: psf_model.build_psf(band, {**FAST, "model": "poppy"}) for band in ("F200W", "F444W", "F770W")}


def render_point_source(psf, psf_scale, image_scale, shape, position, flux=1.0):
    """Image (flux per pixel) of a point source whose pixels sample the effective PSF ``psf`` at their centres."""
    from scipy.ndimage import map_coordinates

    c = (psf.shape[0] - 1) / 2
    y, x = np.indices(shape, dtype=float)
    yy = (y - position[0]) * image_scale / psf_scale + c
    xx = (x - position[1]) * image_scale / psf_scale + c
    image = map_coordinates(psf, [yy, xx], order=3, mode="constant", cval=0.0) * (image_scale / psf_scale) ** 2
    return image * flux


# --------------------------------------------------------------------------- PSF models
# PSF FWHM (arcsec) quoted by the JWST User Documentation (NIRCam and MIRI PSF pages, WebbPSF models).
PUBLISHED_FWHM = {"F200W": 0.066, "F444W": 0.145, "F770W": 0.269}


def test_poppy_psf_header_values_and_width(psfs, tmp_path):
    """Gaussian-fit FWHM of the fast poppy PSFs within 8% of the published widths, and the file records the
    model and sampling."""
    for band, (psf, info) in psfs.items():
        assert info["gauss_fwhm"] == pytest.approx(PUBLISHED_FWHM[band], rel=0.08), band
        assert info["fwhm"] > info["fwhm_optical"] * 0.999, "the pixel response cannot make the PSF narrower"
        assert psf.shape[0] % 2 == 1 and np.unravel_index(np.argmax(psf), psf.shape) == ((psf.shape[0] - 1) // 2,) * 2
    psf, info = psfs["F770W"]
    path = tmp_path / "F770W_psf.fits"
    psf_model.write_psf(path, psf, info)
    data, header = psf_model.read_psf(path)
    assert header["PSFMODEL"] == "poppy" and header["FILTER"] == "F770W" and header["OVERSAMP"] == 4
    assert header["PIXSCALE"] == pytest.approx(0.11 / 4) and header["NWAVE"] == 3
    assert data.sum() == pytest.approx(1.0, abs=1e-12)
    table = psf_model.fwhm_table([path])
    assert table["fwhm_arcsec"][0] == pytest.approx(info["fwhm"], abs=1e-6)


def test_stpsf_is_used_only_with_its_data(monkeypatch, tmp_path, caplog):
    """auto -> poppy without STPSF_PATH data (logged); stpsf asked for without data -> a clear error; with
    data that then fail, auto falls back to poppy with a warning (stpsf itself is never imported here)."""
    monkeypatch.delenv("STPSF_PATH", raising=False)
    with caplog.at_level("INFO"):
        assert psf_model.choose_model("auto") == "poppy"
    assert "STPSF_PATH" in caplog.text
    monkeypatch.setenv("STPSF_PATH", str(tmp_path))  # a directory without stpsf's version.txt
    assert psf_model.choose_model("auto") == "poppy"
    with pytest.raises(wfutils.InputError, match="STPSF_PATH"):
        psf_model.choose_model("stpsf")
    (tmp_path / "version.txt").write_text("2.1.0\n")
    assert psf_model.choose_model("auto") == "stpsf"

    def broken(*args, **kwargs):
        raise FileNotFoundError("MIRI/filters.tsv")

    monkeypatch.setattr(psf_model, "stpsf_psf", broken)
    with caplog.at_level("WARNING"):
        psf, info = psf_model.build_psf("F770W", {**FAST, "fov_arcsec": {**FAST["fov_arcsec"], "MIRI": 4.0}})
    assert info["model"] == "poppy" and "stpsf failed" in caplog.text
    with pytest.raises(FileNotFoundError):
        psf_model.build_psf("F770W", {**FAST, "model": "stpsf"})


def test_even_sized_psf_is_recentred_on_an_odd_grid():
    """stpsf's oversampled PSFs have even sizes (centre between pixels): half-pixel interpolation keeps the
    width (0.5%) and puts the peak on the central pixel."""
    n, sigma = 128, 6.0
    r = np.arange(n) - (n - 1) / 2
    even = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma**2)
    odd = psf_model.odd_centred(even / even.sum())
    assert odd.shape == (127, 127) and np.unravel_index(np.argmax(odd), odd.shape) == (63, 63)
    assert psf_model.half_max_fwhm(odd, 1.0) == pytest.approx(2.3548 * sigma, rel=0.005)
    assert odd.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- kernels
def test_gaussian_to_gaussian_kernel_is_the_analytic_gaussian():
    """Aniano kernel between Gaussians of 0.5" and 0.9" FWHM = Gaussian of sqrt(0.9^2 - 0.5^2)": W- ~ 0, D < 1e-3."""
    scale, size = 0.02, 301
    st = make_kernel.SourceTransform(make_kernel.gaussian_psf(0.5, scale, size), scale)
    res = st.gaussian_kernel(0.9)
    expected = math.sqrt(0.9**2 - 0.5**2)
    assert psf_model.half_max_fwhm(res["kernel"], scale) == pytest.approx(expected, rel=0.01)
    assert res["W_minus"] < 1e-3 and res["D"] < 1e-3
    assert res["kernel"].sum() == pytest.approx(1.0, abs=1e-12)


def test_kernels_to_0p9_arcsec_match_the_gaussian(psfs, tmp_path):
    """Every band: sum 1 to 1e-6 in the written file; D of kernel * source PSF vs the 0.9" Gaussian, with the
    circularised PSFs the kernel is built from, <= 0.01 for NIRCam and <= 0.03 for F770W (the low-pass filter
    removes the target's power beyond the source's cutoff); with the actual, hexagonal PSFs <= 0.01 (NIRCam)
    and <= 0.05 (F770W), whose six-fold spikes and rings no circular target has."""
    from astropy.io import fits

    limits = {"F200W": (0.01, 0.01), "F444W": (0.01, 0.01), "F770W": (0.03, 0.05)}
    for band, (psf, info) in psfs.items():
        src = tmp_path / f"{band}_psf.fits"
        psf_model.write_psf(src, psf, info)
        kernel, kinfo = make_kernel.make_kernel(src, "gauss:0.9", {})
        out = tmp_path / f"{band}_to_gauss0p90.fits"
        make_kernel.write_kernel(out, kernel, kinfo, [src])
        with fits.open(out) as hdul:
            data = hdul[0].data.astype(np.float64)
            assert abs(data.sum() - 1.0) < 1e-6, band
            assert hdul[0].header["KERN_D"] == pytest.approx(kinfo["D"])
            assert hdul[0].header["BMAJ"] == pytest.approx(0.9 / 3600)
        d_circ, d_raw = limits[band]
        assert kinfo["D_circ"] <= d_circ, (band, kinfo)
        assert kinfo["D"] <= d_raw, (band, kinfo)
        assert kinfo["safety"] == "very safe", (band, kinfo["W_minus"])


def test_band_to_band_kernel_turns_one_psf_into_the_other(psfs, tmp_path):
    """F444W -> F770W (different pixel grids): the convolved F444W PSF has the F770W FWHM within 2%."""
    from scipy.signal import fftconvolve

    paths = {}
    for band in ("F444W", "F770W"):
        paths[band] = tmp_path / f"{band}_psf.fits"
        psf_model.write_psf(paths[band], *psfs[band])
    kernel, info = make_kernel.make_kernel(paths["F444W"], str(paths["F770W"]), {})
    source, sh = psf_model.read_psf(paths["F444W"])
    matched = fftconvolve(source, kernel, mode="same")
    assert psf_model.half_max_fwhm(matched, sh["PIXSCALE"]) == pytest.approx(psfs["F770W"][1]["fwhm"], rel=0.02)
    assert info["target"] == "F770W" and info["D_circ"] < 0.05
    with pytest.raises(wfutils.InputError, match="not broader"):
        make_kernel.make_kernel(paths["F770W"], str(paths["F444W"]), {})


def test_safe_gaussian_search_brackets_the_thresholds(psfs):
    """Very safe > safe > aggressive > source FWHM, and W- at each found FWHM equals its threshold (+-0.02)."""
    psf, info = psfs["F770W"]
    st = make_kernel.SourceTransform(psf, info["pixscale"], {"search_points": 12})
    result = make_kernel.search_gaussian_targets(st)
    fwhm = {name: result[name]["fwhm"] for name in make_kernel.SAFETY_CLASSES}
    assert fwhm["very_safe"] > fwhm["safe"] > fwhm["aggressive"] > st.fwhm
    for name, thr in make_kernel.DEFAULTS["thresholds"].items():
        assert result[name]["w_minus"] == pytest.approx(thr, abs=0.02), name


def test_kernel_command_line_errors_name_the_fault(tmp_path):
    with pytest.raises(wfutils.InputError, match="gauss:<FWHM"):
        make_kernel.parse_target("gauss:wide")
    with pytest.raises(wfutils.InputError, match="does not exist"):
        make_kernel.make_kernel(tmp_path / "missing_psf.fits", "gauss:0.9", {})


# --------------------------------------------------------------------------- matched images
@pytest.mark.parametrize("band, image_scale", [("F200W", 0.031), ("F770W", 0.093)])
def test_point_source_convolved_to_0p9_arcsec(psfs, tmp_path, band, image_scale):
    """A point source sampled by the image pixels (mosaic scales of the workflow), with NaN holes nearby,
    convolved to 0.9": FWHM within 3% of 0.9", flux within 0.5% of the injected flux, both in total and in a
    1.5" radius aperture (where the 0.9" Gaussian holds 99.95%), NaN pixels stay NaN."""
    psf, info = psfs[band]
    src = tmp_path / f"{band}_psf.fits"
    psf_model.write_psf(src, psf, info)
    kernel, kinfo = make_kernel.make_kernel(src, "gauss:0.9", {})
    n = int(round(12.0 / image_scale)) | 1
    pos = ((n - 1) / 2 + 0.3, (n - 1) / 2 - 0.2)
    image = render_point_source(psf, info["pixscale"], image_scale, (n, n), pos, flux=5.0)
    y, x = np.indices(image.shape)
    r = np.hypot(y - pos[0], x - pos[1]) * image_scale
    holes = (np.abs(y - pos[0] - 4.0 / image_scale) < 3) & (np.abs(x - pos[1]) < 3)
    image[holes] = np.nan
    k = convolve_image.kernel_on_grid(kernel, kinfo["pixscale"], image_scale)
    assert k.sum() == pytest.approx(1.0, abs=1e-9)
    out, err, cov = convolve_image.convolve_masked(image, k, 0.5, np.full(image.shape, 0.1))
    assert np.isnan(out[holes]).all() and np.isfinite(out[r < 3.0]).all()
    fwhm = psf_model.gaussian_fit_fwhm(np.nan_to_num(out), image_scale, half_size_px=int(1.5 / image_scale))
    assert fwhm == pytest.approx(0.9, rel=0.03), band
    assert psf_model.half_max_fwhm(np.nan_to_num(out), image_scale, center=pos) == pytest.approx(0.9, rel=0.03)
    total = np.nansum(out)
    gauss_ee = 1.0 - math.exp(-0.5 * (1.5 / (0.9 / make_kernel.FWHM_PER_SIGMA)) ** 2)
    aperture = out[r < 1.5].sum()
    print(
        f'{band}: FWHM {fwhm:.4f}", total flux ratio {total / 5.0:.5f}, 1.5" aperture / expected '
        f"{aperture / (5.0 * gauss_ee):.5f}"
    )
    assert total == pytest.approx(5.0, rel=0.005), band
    assert aperture == pytest.approx(5.0 * gauss_ee, rel=0.005), band


def test_error_propagation_predicts_the_noise_of_the_convolved_image():
    """White noise of sigma 0.2 convolved with a kernel: the output scatter equals the propagated ERR within 3%."""
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 0.2, (400, 400))
    k = convolve_image.gaussian_kernel_px(5.0)
    out, err, cov = convolve_image.convolve_masked(image, k, 0.5, np.full(image.shape, 0.2))
    inner = np.s_[30:-30, 30:-30]
    assert np.std(out[inner]) == pytest.approx(np.median(err[inner]), rel=0.03)
    assert np.median(err[inner]) == pytest.approx(0.2 * math.sqrt((k**2).sum()), rel=1e-6)


def test_noise_curve_of_white_noise_follows_the_uncorrelated_prediction():
    """On a source-free white-noise image the measured curve follows sigma0 sqrt(sum K^2) within 10%."""
    rng = np.random.default_rng(3)
    sci = rng.normal(0.0, 0.05, (300, 300))
    err = np.full(sci.shape, 0.05)
    result = noise_curve.noise_curve(sci, err, np.ones(sci.shape, bool), 0.1, 0.3,
                                     {"kernel_fwhm_arcsec": [0.0, 0.2, 0.5, 1.0], "background_box_px": 0})  # fmt: skip
    for row in result["rows"]:
        assert row["std_measured"] == pytest.approx(row["std_uncorrelated"], rel=0.1), row
        assert row["err_propagated"] == pytest.approx(row["std_uncorrelated"], rel=0.1), row
    assert result["rows"][-1]["std_measured"] < 0.2 * result["sigma0"]


# --------------------------------------------------------------------------- workflow
FAST_CONFIG = {
    "model": {"n_wavelengths": 3, "pupil_npix": 256, "fov_arcsec": {"NRC_SW": 4.2, "NRC_LW": 6.0, "MIRI": 12.0}},
    "resolutions_arcsec": [0.9],
    "kernel": {"search_points": 8},
}


@pytest.mark.workflow
def test_workflow_makes_a_matched_mosaic(tmp_path):
    """Deep field at 1/16 scale observed in F444W only: the 0.9" image of the mosaic equals the mosaic convolved
    here with the kernel (plumbing), BMAJ is 0.9", and the noise curve shows the smoothing gain (below 1/3 of the
    native noise at the largest resolution the ~20" mosaic still measures, >= 0.5")."""
    import yaml
    from astropy.io import fits
    from astropy.table import Table

    override = yaml.safe_load((REPO / "tests" / "configs" / "clean_sky.yaml").read_text())
    override["simulation"]["scale"] = 0.0625
    override["simulation"]["layouts"] = {"ceers_deep": {"nircam": {"filters": ["F444W"]}}}
    override["targets"] = ["DEEPFIELD1"]
    override["anchoring"] = {"enabled": False}
    override.setdefault("corrections", {}).update(
        {s: {"enabled": False, "instruments": ["NIRCAM", "MIRI"]} for s in ("align_relative", "align_absolute")}
    )
    override["psf"] = {"enabled": True, "bands": ["F444W"], **FAST_CONFIG}
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    matched = "results/DEEPFIELD1/matched/DEEPFIELD1_F444W_gauss0p90.fits"
    curve = "results/DEEPFIELD1/matched/qa/DEEPFIELD1_F444W_noise_curve.ecsv"
    result = run_snakemake(tmp_path, "--cores", "2", matched, curve, "results/psf/gaussian_targets.ecsv",
                           configfiles=[path], timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with fits.open(tmp_path / matched) as hdul:
        out = hdul["SCI"].data.astype(np.float64)
        assert hdul["SCI"].header["BMAJ"] == pytest.approx(0.9 / 3600)
        assert hdul[0].header["WFSTEP"] == "convolve_image"
        assert {h.name for h in hdul} == {"PRIMARY", "SCI", "ERR"}
    with fits.open(tmp_path / "results/DEEPFIELD1/mosaic/DEEPFIELD1_F444W_i2d.fits") as hdul:
        sci, err = hdul["SCI"].data.astype(np.float64), hdul["ERR"].data.astype(np.float64)
        scale = convolve_image.pixel_scale_arcsec(hdul["SCI"].header)
    kernel, kh = convolve_image.read_kernel(tmp_path / "results/psf/kernels/F444W_to_gauss0p90.fits")
    expected, _, _ = convolve_image.convolve_masked(sci, convolve_image.kernel_on_grid(kernel, kh["PIXSCALE"], scale),
                                                    0.5, err)  # fmt: skip
    both = np.isfinite(out) & np.isfinite(expected)
    assert both.sum() > 0.5 * np.isfinite(sci).sum()
    assert np.allclose(out[both], expected[both], rtol=1e-4, atol=1e-6)
    table = Table.read(tmp_path / curve, format="ascii.ecsv")
    measured = table[np.isfinite(table["std_measured"])]
    assert measured["resolution_arcsec"][-1] >= 0.5
    assert measured["std_measured"][-1] < measured["std_measured"][0] / 3
    targets = Table.read(tmp_path / "results/psf/gaussian_targets.ecsv", format="ascii.ecsv")
    assert list(targets["filter"]) == ["F444W"]
    assert targets["very_safe_fwhm_arcsec"][0] > targets["source_fwhm_arcsec"][0]
