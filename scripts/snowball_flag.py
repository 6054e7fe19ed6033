"""Flag snowball wings in the ramps and refit them (CEERS, Bagley et al. 2023, Sect. 3.1.1).

Snowballs are large cosmic-ray events; the jump step flags their cores but leaves the diffuse
wings, which stay in the count-rate image. For each integration and group plane:

1. the jump map (GROUPDQ JUMP_DET) plus the pixels that saturate first in that group is
   median-filtered with circular top-hat kernels of radius 7 and 15 px (two tiers: small and
   large snowballs; a pixel survives where most of the disk around it jumped, so isolated
   cosmic rays vanish and extended, round events remain);
2. the saturated pixels inside the surviving groups are included;
3. each tier's footprint is grown by binary dilation with a disk of radius 7 (small) or 35 px
   (large) and OR-ed into that group's GROUPDQ as JUMP_DET;
4. the ramps are refitted with ``stcal``'s ramp fitting (OLS_C, the library function, offline),
   with the gain and read-noise arrays, so that each pixel's slope excludes the jump.

``python scripts/snowball_flag.py RAMP RATE --gain GAIN --readnoise READNOISE`` reads a
``*_ramp.fits`` RampModel (Stage 1 after the jump step: ``run_stage1.py --ramp-only``, or
Detector1Pipeline with ``save_calibrated_ramp``) and writes the corrected rate image (ImageModel,
DN/s) with the number of snowballs and flagged pixels in the primary header (SNOWNUM, SNOWNPIX).
``--gain crds`` / ``--readnoise crds`` take the reference files the jump step used (the ramp's
``meta.ref_file``) from the local CRDS cache (``CRDS_PATH``); full-frame references are cut to a
subarray ramp by jwst's reffile_utils. jwst's own alternative,
``JumpStep(expand_large_events=True)``, is compared in tests/bench/snowball.py.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("snowball_flag")

DEFAULTS = {
    "tiers": [
        {"filter_radius_px": 7, "dilate_radius_px": 7},
        {"filter_radius_px": 15, "dilate_radius_px": 35},
    ],
    "include_saturated": True,
    "algorithm": "OLS_C",
}
CRDS_REFERENCE = "crds"  # --gain/--readnoise value: the file the jump step used, from the CRDS cache


# --------------------------------------------------------------------------- pure functions
def tophat(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r


def snowball_plane_mask(jumps: np.ndarray, new_saturated: np.ndarray, params: dict) -> tuple[np.ndarray, int]:
    """Grown snowball footprints of one group plane and the number of snowballs found.

    ``jumps``: JUMP_DET in this group; ``new_saturated``: pixels saturating first in this group.
    """
    from scipy import ndimage, signal

    events = (jumps | new_saturated) if params["include_saturated"] else jumps
    mask = np.zeros(jumps.shape, bool)
    if not events.any():
        return mask, 0
    found = np.zeros(jumps.shape, bool)
    for tier in params["tiers"]:
        kernel = tophat(tier["filter_radius_px"])
        # binary median filter = majority vote inside the top hat (counted by an FFT convolution,
        # zero outside the detector; ~40x faster than ndimage.convolve for the 31 x 31 kernel)
        votes = np.rint(signal.fftconvolve(events.astype(np.float32), kernel.astype(np.float32), mode="same"))
        core = votes * 2 > kernel.sum()
        if not core.any():
            continue
        # the whole connected event (with its saturated pixels) around each surviving core
        labels, _ = ndimage.label(events, structure=np.ones((3, 3)))
        keep = np.unique(labels[core & events])
        footprint = np.isin(labels, keep[keep > 0]) | core
        found |= footprint
        # dilation by a disk of radius r = every pixel within Euclidean distance r of the footprint
        mask |= ndimage.distance_transform_edt(~footprint) <= tier["dilate_radius_px"]
    n_events = ndimage.label(found)[1]
    return mask, n_events


def snowball_groupdq(groupdq: np.ndarray, params: dict) -> tuple[np.ndarray, dict]:
    """GROUPDQ (nints, ngroups, ny, nx) with the grown snowball footprints added as JUMP_DET."""
    from stdatamodels.jwst.datamodels import dqflags

    jump, sat = dqflags.group["JUMP_DET"], dqflags.group["SATURATED"]
    out = groupdq.copy()
    n_snowballs = 0
    flagged = np.zeros(groupdq.shape[2:], bool)
    for i in range(groupdq.shape[0]):
        for g in range(1, groupdq.shape[1]):
            new_sat = ((groupdq[i, g] & sat) > 0) & ((groupdq[i, g - 1] & sat) == 0)
            mask, n = snowball_plane_mask((groupdq[i, g] & jump) > 0, new_sat, params)
            if n:
                # a saturated group stays SATURATED; the others get the jump
                out[i, g][mask & ((groupdq[i, g] & sat) == 0)] |= jump
                flagged |= mask
                n_snowballs += n
    return out, {"snowballs": n_snowballs, "flagged_pixels": int(flagged.sum())}


def fit_rate(model, gain: np.ndarray, readnoise: np.ndarray, algorithm: str = "OLS_C"):
    """stcal ramp fitting of a RampModel: dict of slope (DN/s), dq, var_poisson, var_rnoise, err."""
    from stcal.ramp_fitting import ramp_fit
    from stdatamodels.jwst.datamodels import dqflags

    # copies: ramp_fit rescales the read-noise array in place
    image_info, _, _ = ramp_fit.ramp_fit(
        model,
        False,
        np.array(readnoise, np.float32),
        np.array(gain, np.float32),
        algorithm,
        "optimal",
        "none",
        dqflags.pixel,
        suppress_one_group=False,
    )
    return image_info


# --------------------------------------------------------------------------- I/O
def read_ramp(path):
    """A RampModel (4-D data with GROUPDQ); anything else is refused with the file named."""
    from stdatamodels.jwst import datamodels

    path = Path(path)
    if not path.exists():
        raise wfutils.InputError(f"{path}: file does not exist")
    try:
        model = datamodels.open(str(path))
    except Exception as exc:  # noqa: BLE001
        raise wfutils.InputError(f"{path}: not a readable JWST datamodel ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, datamodels.RampModel) or np.ndim(model.data) != 4:
        kind = type(model).__name__
        model.close()
        raise wfutils.InputError(
            f"{path}: expected a ramp (RampModel after the jump step, *_ramp.fits), got {kind}; "
            "snowball flagging needs GROUPDQ, not a rate or cal image"
        )
    return model


def reference_path(value: str, model, reftype: str) -> Path:
    """The gain or read-noise file: ``value`` itself, or for ``crds`` the file the jump step used
    (the ramp's ``meta.ref_file.<reftype>``), located in the local CRDS cache."""
    if value != CRDS_REFERENCE:
        return Path(value)
    ramp = model.meta.filename or "the ramp"
    name = getattr(getattr(model.meta.ref_file, reftype, None), "name", None)
    if not name or name == "N/A":
        raise wfutils.InputError(
            f"{ramp}: names no {reftype} reference (meta.ref_file.{reftype}); give --{reftype} PATH"
        )
    if not name.startswith("crds://"):
        return Path(name)
    if not os.environ.get("CRDS_PATH"):
        raise wfutils.InputError(
            f"{ramp}: its {reftype} reference is {name}; set CRDS_PATH to the CRDS cache holding it"
        )
    from crds import locate_file

    path = Path(locate_file(name.removeprefix("crds://"), "jwst"))
    if not path.is_file():
        raise wfutils.InputError(
            f"{ramp}: its {reftype} reference {name} is not in the CRDS cache ({path}); sync the cache "
            "(crds sync --files ...) or give the file with --" + reftype
        )
    return path


def read_reference(path, model, what: str) -> np.ndarray:
    """SCI array of a gain or read-noise reference on the ramp's pixels: as it is when the shapes
    agree, else the ramp's subarray cut by jwst's ``reffile_utils.get_subarray_model`` (as
    RampFitStep does, from both files' SUBSTRT/SUBSIZE keywords)."""
    from jwst.lib import reffile_utils
    from stdatamodels.jwst import datamodels

    shape = tuple(model.data.shape[2:])
    try:
        ref = datamodels.open(str(path))
    except Exception as exc:  # noqa: BLE001
        raise wfutils.InputError(f"{path}: not a readable {what} reference ({type(exc).__name__}: {exc})") from exc
    with ref:
        data = ref.data
        if data.shape != shape:
            try:
                data = reffile_utils.get_subarray_model(model, ref).data
            except (TypeError, ValueError) as exc:
                raise wfutils.InputError(
                    f"{path}: {what} shape {data.shape} differs from the ramp's {shape} and the ramp's "
                    f"subarray cannot be cut from it ({exc})"
                ) from exc
        return np.array(data, dtype=np.float32)


def correct_ramp(model, gain, readnoise, params: dict):
    """Flag snowballs in ``model`` (in place) and refit; returns (image_info, report)."""
    model.groupdq, report = snowball_groupdq(np.asarray(model.groupdq), params)
    return fit_rate(model, gain, readnoise, params["algorithm"]), report


def rate_model(image_info, ramp):
    from stdatamodels.jwst import datamodels

    out = datamodels.ImageModel(
        data=image_info["slope"], dq=image_info["dq"], var_poisson=image_info["var_poisson"],
        var_rnoise=image_info["var_rnoise"], err=image_info["err"],
    )  # fmt: skip
    out.update(ramp)
    out.meta.bunit_data = "DN/s"
    out.meta.bunit_err = "DN/s"
    out.meta.cal_step.ramp_fit = "COMPLETE"
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="ramp after the jump step (RampModel, *_ramp.fits)")
    parser.add_argument("output", help="corrected rate image (ImageModel, DN/s)")
    parser.add_argument("--gain", required=True, help="gain reference (SCI, e-/DN); crds: the jump step's")
    parser.add_argument("--readnoise", required=True, help="read-noise reference (SCI, DN); crds: the jump step's")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    model = read_ramp(args.input)
    try:
        gain_path = reference_path(args.gain, model, "gain")
        readnoise_path = reference_path(args.readnoise, model, "readnoise")
        gain = read_reference(gain_path, model, "gain")
        readnoise = read_reference(readnoise_path, model, "read-noise")
        image_info, report = correct_ramp(model, gain, readnoise, params)
        out = rate_model(image_info, model)
    finally:
        model.close()
    cards = [
        ("SNOWNUM", report["snowballs"], "snowballs found (per group plane)"),
        ("SNOWNPIX", report["flagged_pixels"], "pixels flagged as snowball jumps"),
    ]
    wfutils.save_model(
        out, args.output, [args.input, gain_path, readnoise_path], args.config_hash, "snowball_flag", cards
    )
    log.info("%s: %d snowballs, %d pixels flagged as jumps, ramps refitted (%s)", Path(args.input).name,
             report["snowballs"], report["flagged_pixels"], params["algorithm"])  # fmt: skip


if __name__ == "__main__":
    wfutils.run_cli(main)
