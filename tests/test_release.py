"""Release directory (scripts/release.py): every product opens in jwst.datamodels with its extensions and keywords."""

from __future__ import annotations

import json
import tarfile

import deep_mosaic
import numpy as np
import pytest

import mosaic_background as mb
import release

DEEP_EXTENSIONS = (
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
    "ASDF",
)
GALAXY_EXTENSIONS = ("SCI", "ERR", "DQ", "CON", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "ASDF")
PROVENANCE = ("WFVERS", "WFCFGHSH", "WFSTEP", "WFNINPUT", "WFIN0001")
BACKGROUND_KEYS = ("BKGSUB", "BKGMETH", "BKGMASKF", "BKGMED", "BKGRMS", "BKGBOX", "BKGSCALE")
WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")


def exposure(path, band):
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel(np.ones((16, 16), np.float32))
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.filter = band
    model.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    m = deep_mosaic.make_deep_mosaic((200, 200), 0.03, "F200W", seed=21)
    deep = str(deep_mosaic.write_mosaic(tmp / "D_F200W_i2d.fits", m["sci"], m["err"], m["valid"], 0.03))
    galaxy = str(deep_mosaic.write_mosaic(tmp / "G_F200W_in.fits", m["sci"], m["err"], m["valid"], 0.03))
    exposures = [exposure(tmp / f"jw0900200100{i}_cal.fits", "F200W") for i in range(2)]
    mb.main(["tiers", deep, str(tmp / "tiers.fits")])
    mb.main(["merge", str(tmp / "tiers.fits"), "--out", str(tmp / "mask.fits")])
    bksub = tmp / "bk" / "D_F200W_i2d.fits"
    mb.main(
        [
            "--config-hash",
            "abc123",
            "subtract",
            deep,
            str(bksub),
            "--mask",
            str(tmp / "mask.fits"),
            "--qa-png",
            str(tmp / "qa.png"),
            "--hdrtab",
            *exposures,
        ]
    )
    out = tmp / "out"
    release.main(
        [
            "--target",
            "D",
            "--out-dir",
            str(out),
            "--config-json",
            json.dumps({"crds": {"context": "x.pmap"}}),
            "--config-hash",
            "abc123",
            "--mosaics",
            str(bksub),
            galaxy,
            "--exposures",
            *exposures,
            "--qa",
            str(tmp / "qa.png"),
        ]
    )
    return out, exposures


def test_every_release_mosaic_opens_in_jwst_datamodels_with_all_extensions_and_keywords(release_dir):
    from astropy.io import fits
    from jwst import datamodels

    out, _ = release_dir
    for name, expected, deep in (
        ("D_F200W_i2d.fits", DEEP_EXTENSIONS, True),
        ("G_F200W_in.fits", GALAXY_EXTENSIONS, False),
    ):
        path = out / "mosaics" / name
        with fits.open(path) as hdul:
            names = [h.name for h in hdul[1:]]
            assert sorted(names) == sorted(expected), name
            header = hdul[0].header
            for key in PROVENANCE:
                assert key in header, f"{name}: {key}"
            assert header["WFCFGHSH"] == "abc123"
            if deep:
                for key in BACKGROUND_KEYS:
                    assert key in header, f"{name}: {key}"
                assert header["BKGSUB"] is True and header["BKGMETH"] == "CEERS-tiered"
                for ext in ("SCI_BKSUB", "BKGD", "BKGMASK"):
                    for key in WCS_KEYS:
                        assert key in hdul[ext].header, f"{name}[{ext}]: {key}"
                assert len(hdul["HDRTAB"].data) == 2
            for key in WCS_KEYS:
                assert key in hdul["SCI"].header
            assert hdul["SCI"].header["BUNIT"] == "MJy/sr"
            dq = hdul["DQ"].data
            assert dq.shape == hdul["SCI"].data.shape
            no_coverage = hdul["WHT"].data == 0
            assert no_coverage.any() and (dq[no_coverage] & 1).all() and not dq[~no_coverage].any()
        with datamodels.open(str(path)) as model:
            assert type(model).__name__ == "ImageModel"
            assert model.meta.bunit_data == "MJy/sr"
            for attr in ("data", "err", "dq", "con", "wht", "var_poisson", "var_rnoise", "var_flat"):
                assert getattr(model, attr) is not None and getattr(model, attr).size > 0, attr
            if deep:
                assert model.sci_bksub.shape == model.data.shape
                assert model.bkgd.shape == model.data.shape and model.bkgmask.dtype == np.uint8
                assert len(model.hdrtab) == 2


def test_release_archive_readme_and_qa(release_dir):
    out, exposures = release_dir
    with tarfile.open(out / "D_exposures_cal.tar.gz") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(f"exposures/{p.split('/')[-1]}" for p in exposures)
        assert all(m.mtime == 0 for m in members)
    readme = (out / "README.md").read_text()
    assert "config hash: abc123" in readme and "jwst " in readme and "CRDS context: x.pmap" in readme
    assert "SCI_BKSUB" in readme and "D_exposures_cal.tar.gz" in readme
    assert (out / "qa" / "qa.png").exists()
    assert json.loads((out / "config.json").read_text())["crds"]["context"] == "x.pmap"


def test_missing_input_names_the_file(tmp_path):
    from wflib import wfutils

    with pytest.raises(wfutils.InputError, match="nothere.fits"):
        release.main(["--target", "X", "--out-dir", str(tmp_path / "r"), "--mosaics", str(tmp_path / "nothere.fits")])
