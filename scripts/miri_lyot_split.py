"""Split MIRI imager exposures into an imager part and a Lyot-coronagraph part (PHANGS-JWST Sec. 3.4).

Method. The Lyot coronagraph shares the imager's optical path but often sits at a
different background level. Each exposure is written twice, by editing the DQ array
only: the *imager* copy has the Lyot region flagged DO_NOT_USE + NON_SCIENCE, the *Lyot*
copy has everything outside the Lyot region flagged the same way. Flagged pixels are set
to NaN in SCI/ERR/VAR_* as in jwst cal files. The two parts are then level-matched
separately (``level_match.py``: they fall into separate overlap components of a visit and
are tied through other visits in the mosaic stage) and recombined by the drizzle.

The region is detector geometry from the config, ``[x0, x1, y0, y1]`` fractions of the
full-frame detector (the convention of ``simulation.miri_regions``); subarrays are placed
with ``meta.subarray.xstart/ystart`` when ``full_frame_shape`` is given.

Command line::

    python scripts/miri_lyot_split.py --out-dir DIR [--params JSON] [--log LOG] INPUT_cal.fits ...
    python scripts/miri_lyot_split.py --imager-out A_cal.fits --lyot-out B_cal.fits INPUT_cal.fits

``--out-dir`` writes ``DIR/<name>_cal.fits`` (imager part, keeps the exposure name) and
``DIR/<name>_lyot_cal.fits`` (Lyot part). ``--params`` JSON keys: ``lyot_region``
(fractions, required unless the default fits), ``full_frame_shape`` ([ny, nx] or null for
"the image is the full frame"), ``lyot_suffix``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from wflib import levels_common as lc
from wflib import wfutils

log = logging.getLogger("miri_lyot_split")

DEFAULTS = {
    # Lyot coronagraph region, [x0, x1, y0, y1] fractions of the full-frame detector (config geometry).
    "lyot_region": [0.02, 0.28, 0.72, 0.99],
    # Full-frame detector shape [ny, nx] for subarray placement; null: the image is the full frame.
    "full_frame_shape": None,
    # File name of the Lyot part: <name>_<lyot_suffix>_cal.fits.
    "lyot_suffix": "lyot",
}
SPLIT_FLAGS = ("DO_NOT_USE", "NON_SCIENCE")


def lyot_mask(shape, region, full_frame_shape=None, corner=(1, 1)) -> np.ndarray:
    """Boolean Lyot mask on an image of ``shape`` whose 1-based full-frame corner is ``corner`` (xstart, ystart)."""
    if full_frame_shape is None:
        return lc.region_mask(shape, region)
    full = lc.region_mask(tuple(full_frame_shape), region)
    x0, y0 = int(corner[0]) - 1, int(corner[1]) - 1
    ny, nx = shape
    sub = full[y0 : y0 + ny, x0 : x0 + nx]
    if sub.shape != tuple(shape):
        raise wfutils.InputError(f"subarray at ({x0 + 1}, {y0 + 1}) of shape {shape} leaves the full frame")
    return sub


def split_arrays(arrays: dict, dq: np.ndarray, lyot: np.ndarray, flag_bits: int):
    """(imager, lyot) versions of the SCI/ERR/VAR_* ``arrays`` and DQ: flagged region set to NaN.

    Pure function: returns new arrays, never modifies its inputs.
    """
    parts = []
    for flagged in (lyot, ~lyot):
        new_dq = dq.copy()
        new_dq[flagged] |= flag_bits
        new_arrays = {}
        for name, values in arrays.items():
            out = np.array(values, copy=True)
            out[flagged] = np.nan
            new_arrays[name] = out
        parts.append((new_arrays, new_dq))
    return parts


def split_file(path, imager_out, lyot_out, params, cfg_hash=None) -> dict:
    """Write the imager and Lyot copies of one MIRI exposure; returns usable-pixel counts."""
    from stdatamodels.jwst import datamodels

    wfutils.check_image_file(path)
    with datamodels.open(str(path)) as model:
        instrument = (model.meta.instrument.name or "").upper()
        if instrument != "MIRI" or (model.meta.exposure.type or "") not in ("MIR_IMAGE", ""):
            raise wfutils.InputError(
                f"{path}: not a MIRI imager exposure (instrument {instrument or '?'}, "
                f"exposure type {model.meta.exposure.type})"
            )
        corner = (model.meta.subarray.xstart or 1, model.meta.subarray.ystart or 1)
        mask = lyot_mask(model.data.shape, params["lyot_region"], params["full_frame_shape"], corner)
        names = [n for n in ("data", "err", "var_poisson", "var_rnoise", "var_flat") if model.hasattr(n)]
        arrays = {n: getattr(model, n) for n in names}
        bits = lc.dq_bitmask(SPLIT_FLAGS)
        (imager_arrays, imager_dq), (lyot_arrays, lyot_dq) = split_arrays(arrays, np.asarray(model.dq), mask, bits)
        counts = {}
        for out, part_arrays, part_dq, label in (
            (imager_out, imager_arrays, imager_dq, "imager"),
            (lyot_out, lyot_arrays, lyot_dq, "lyot"),
        ):
            part = model.copy()
            for n, values in part_arrays.items():
                setattr(part, n, values.astype(np.float32))
            part.dq = part_dq
            counts[label] = int(np.isfinite(part_arrays["data"]).sum())
            wfutils.save_model(part, out, [path], cfg_hash, f"miri_lyot_split_{label}")
            part.close()
    if counts["lyot"] == 0:
        log.warning("%s: the Lyot region %s holds no usable pixel", path, params["lyot_region"])
    log.info("%s: imager part %d usable pixels, Lyot part %d", Path(path).name, counts["imager"], counts["lyot"])
    return counts


def output_names(path, out_dir, suffix):
    name = lc.image_name(path)
    return Path(out_dir) / f"{name}_cal.fits", Path(out_dir) / f"{name}_{suffix}_cal.fits"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="MIRI imager cal files")
    parser.add_argument("--out-dir", help="write <name>_cal.fits (imager) and <name>_lyot_cal.fits here")
    parser.add_argument("--imager-out", help="imager part of a single input")
    parser.add_argument("--lyot-out", help="Lyot part of a single input")
    wfutils.add_run_options(parser, params_help="JSON object: lyot_region, full_frame_shape, lyot_suffix")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    params = wfutils.parse_params(args.params, DEFAULTS)
    if bool(args.imager_out) != bool(args.lyot_out):
        raise wfutils.InputError("--imager-out and --lyot-out go together")
    if args.imager_out:
        if len(args.inputs) != 1 or args.out_dir:
            raise wfutils.InputError("--imager-out/--lyot-out take exactly one input and no --out-dir")
        targets = [(args.inputs[0], Path(args.imager_out), Path(args.lyot_out))]
    elif args.out_dir:
        targets = [(p, *output_names(p, args.out_dir, params["lyot_suffix"])) for p in args.inputs]
    else:
        raise wfutils.InputError("give --out-dir, or --imager-out and --lyot-out")
    for path, imager_out, lyot_out in targets:
        if Path(path).resolve() in (imager_out.resolve(), lyot_out.resolve()):
            raise wfutils.InputError(f"{path}: output would overwrite the input")
        split_file(path, imager_out, lyot_out, params, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
