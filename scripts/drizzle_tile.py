"""Drizzle the exposures of one band onto one output tile of the common grid (jwst resample internals).

One job per tile (``mosaic_tiles.py``): memory is one tile's output arrays plus one
input exposure, whatever the number of exposures of the band. The arithmetic is
jwst 3.0's ResampleStep, called through its public pieces rather than rewritten:

* ``stcal.resample.Resample`` -- the class jwst's ``ResampleImage`` derives from -- does
  the pixel map (``calc_pixmap``), the inverse-variance weight from VAR_RNOISE
  (``build_driz_weight``), the ``drizzle.resample.Drizzle`` calls for SCI, WHT, CON and
  the three variance arrays, and ERR from the variances ("from_var");
* ``jwst.resample.resample.input_jwst_model_to_dict`` turns a datamodel into its input;
* the output WCS is the whole grid's ``stcal.alignment.wcs_from_sregions`` (the grid's
  crval, rotation 0, pixel scale and crpix) with the integer shift to the tile origin
  prepended (``mosaic_tiles.tile_wcs``); the output/input pixel-scale ratio comes from
  the band's FIRST exposure, as jwst computes it.

Every output pixel of a drizzle is a weighted mean of the input pixels that overlap it,
accumulated in band order, so a tile drizzled, in band order, from the exposures that
reach it holds the same pixels as a single-pass drizzle: the same inputs, weights and
order, and pixel maps that are the single pass's minus the tile's integer offset bit for
bit. What can still differ is the last bit of a float32 SCI, WHT or variance value in a
few pixels (CON never): drizzle's square kernel interpolates pixel corners and clips
pixel polygons in float64 output coordinates, and those round differently at the
tile's smaller coordinates. Two things make the job fast: each exposure is cut to the
rectangle of its pixels that can reach the tile (``mosaic_tiles.input_window``: a coarse
pixel map, plus the kernel's reach) before the full-resolution pixel map is computed, and
exposures whose S_REGION misses the tile are not opened at all. Context bits are local to
the tile (bit k = k-th exposure drizzled here); the tile records the band-wide index of
each, and ``gather_tiles.py`` renumbers them so CON has jwst's meaning (bit i = i-th
input of the band).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

import mosaic_tiles
from wflib import wfutils

log = logging.getLogger("drizzle_tile")

# jwst.resample.resample_step.GOOD_BITS: every DQ flag is usable except these.
GOOD_BITS = "~DO_NOT_USE+NON_SCIENCE"
DEFAULTS = {
    "pixfrac": 1.0,
    "kernel": "square",
    "weight_type": "ivm",
    "fillval": "NAN",
    "good_bits": GOOD_BITS,
    "pixmap_stepsize": 1,
    "pixmap_order": 1,
    "margin_px": 8.0,  # S_REGION pre-selection margin (output pixels)
}
ARRAYS = ("data", "wht", "con", "err", "var_rnoise", "var_poisson", "var_flat")


def resampler(output_wcs: dict, n_inputs: int, params: dict, enable_ctx: bool = True, enable_var: bool = True):
    """A ``stcal.resample.Resample`` set up as jwst's ResampleImage sets it up for Stage 3."""
    from stcal.resample import Resample
    from stdatamodels.jwst.datamodels import dqflags

    class JwstFlagResample(Resample):
        # translates mnemonic good_bits ("~DO_NOT_USE+NON_SCIENCE"), as ResampleImage does
        dq_flag_name_map = dqflags.pixel

    return JwstFlagResample(
        output_wcs=output_wcs,
        n_input_models=max(1, n_inputs),
        pixfrac=params["pixfrac"],
        kernel=params["kernel"],
        fillval=params["fillval"],
        weight_type=params["weight_type"],
        good_bits=params["good_bits"],
        enable_ctx=enable_ctx,
        enable_var=enable_var,
        compute_err="from_var" if enable_var else None,
        pixmap_stepsize=params["pixmap_stepsize"],
        pixmap_order=params["pixmap_order"],
    )


def cut_out(model_dict: dict, window) -> dict:
    """The drizzle input of the pixels [y0:y1, x0:x1] of an exposure (arrays copied, WCS shifted)."""
    x0, x1, y0, y1 = window
    out = dict(model_dict)
    for key, value in model_dict.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:
            out[key] = np.ascontiguousarray(value[y0:y1, x0:x1])
    out["wcs"] = mosaic_tiles.shifted_wcs(model_dict["wcs"], x0, y0)
    return out


def input_record(model, index: int, ctx: int, path) -> dict:
    """What the gather needs of a drizzled exposure: band index, context bit, times, footprint."""
    exposure = model.meta.exposure
    return {
        "name": Path(str(path)).name,
        "index": index,
        "ctx": ctx,
        "group_id": model.meta.group_id,
        "exposure_time": exposure.exposure_time,
        "measurement_time": exposure.measurement_time,
        "start_time": exposure.start_time,
        "end_time": exposure.end_time,
        "duration": exposure.duration,
        "s_region": model.meta.wcsinfo.s_region,
        "bunit_data": model.meta.bunit_data,
    }


def open_input(path):
    """An exposure as ResampleStep sees it: NaNs and DO_NOT_USE made consistent, a group id."""
    from jwst.datamodels.utils import attrs_to_group_id
    from jwst.lib.pipe_utils import match_nans_and_flags
    from stdatamodels.jwst import datamodels

    wfutils.check_image_file(path)
    model = datamodels.open(str(path))
    if model.meta.wcs is None or model.data.ndim != 2:
        raise wfutils.InputError(f"{path}: not a 2-D image with a gwcs (meta.wcs)")
    match_nans_and_flags(model)
    if not model.meta.hasattr("group_id") or not model.meta.group_id:
        # what jwst's ModelLibrary assigns: one id per exposure (all its detectors)
        model.meta.group_id = attrs_to_group_id(model.meta.observation)
    return model


def drizzle_tile(paths, grid: dict, filter_name: str, tile, params: dict, table=None):
    """Drizzle the band's exposures that reach ``tile``; returns (tile ImageModel, paths drizzled).

    ``paths`` is the whole band in band order, or with ``table`` (``mosaic_tiles.tile_table``)
    the band's first input and the tile's listed inputs.
    """
    from jwst.resample.resample import input_jwst_model_to_dict
    from stdatamodels.jwst import datamodels

    params = {**DEFAULTS, **params}
    spec = mosaic_tiles.filter_spec(grid, filter_name)
    # inputs near the tile, from S_REGION only; a tile nothing reaches is written without opening any file
    bound = tile.grown(mosaic_tiles.SEARCH_MARGIN_PX, spec["shape"])
    n_band, chosen = mosaic_tiles.select_inputs(paths, grid, filter_name, tile, bound, params["margin_px"], table)
    if not chosen:
        log.info("tile %d of %s: no input reaches it (S_REGION); writing an empty tile", tile.index, filter_name)
        return empty_tile(tile, filter_name, n_band, params), []
    with open_input(mosaic_tiles.reference_input(paths, table)) as ref:
        ratio = mosaic_tiles.reference_pixel_scale_ratio(ref, spec["pixel_scale"])
        # drizzle skips input pixels that straddle the edge of its output array, so the tile is
        # drizzled with a margin (wider than an input pixel and the kernel) and then cut back
        margin = mosaic_tiles.tile_margin_px(params["kernel"], 1.0 / ratio)
        work = tile.grown(margin, spec["shape"])
        ref_wcs, ref_wcsinfo = ref.meta.wcs, ref.meta.wcsinfo.instance
        wcs = mosaic_tiles.tile_wcs(grid, filter_name, tile, ref_wcs, ref_wcsinfo)
        work_wcs = mosaic_tiles.tile_wcs(grid, filter_name, work, ref_wcs, ref_wcsinfo)
        output = datamodels.ImageModel()
        output.update(ref)
    log.info(
        "tile %d [%d:%d, %d:%d] of %s (drizzled with a %d-pixel margin): %d of %d inputs overlap (S_REGION); "
        "pixel scale ratio %.6f",
        tile.index, tile.y0, tile.y1, tile.x0, tile.x1, filter_name, margin, len(chosen), n_band, ratio,
    )  # fmt: skip
    output_wcs = {"wcs": work_wcs, "pixel_scale": mosaic_tiles.output_pixel_scale(spec["pixel_scale"])[1]}
    output_wcs["pixel_scale_ratio"] = ratio
    resamp = resampler(output_wcs, len(chosen), params)
    records, used = [], []
    for n, (index, path) in enumerate(chosen, start=1):
        with open_input(path) as model:
            reach = mosaic_tiles.kernel_margin_out(params["kernel"], 1.0 / ratio)
            window = mosaic_tiles.input_window(
                model.meta.wcs, model.data.shape, work_wcs, work.shape, reach, params["kernel"]
            )
            if window is None:
                log.info("skipped %d/%d inputs: %s does not reach the tile", n, len(chosen), Path(path).name)
                continue
            as_dict = input_jwst_model_to_dict(model, params["weight_type"], True, "from_var")
            resamp.add_model(cut_out(as_dict, window))
            records.append(input_record(model, index, len(records), path))
            used.append(path)
            x0, x1, y0, y1 = window
            log.info(
                "drizzled %d/%d inputs: %s pixels [%d:%d, %d:%d]",
                n, len(chosen), Path(path).name, y0, y1, x0, x1,
            )  # fmt: skip
    output.meta.wcs = wcs
    if records:
        resamp.finalize()
        arrays = resamp.output_model
    else:
        arrays = empty_arrays(work.shape)
    core = np.s_[tile.y0 - work.y0 : tile.y1 - work.y0, tile.x0 - work.x0 : tile.x1 - work.x0]
    for name in ARRAYS:
        array = arrays[name]
        setattr(output, name, np.ascontiguousarray(array[(slice(None), *core)] if array.ndim == 3 else array[core]))
    output.meta.bunit_data = records[0]["bunit_data"] if records else output.meta.bunit_data
    output.meta.tile = tile_meta(tile, filter_name, n_band, params, records, margin=margin, pixel_scale_ratio=ratio)
    return output, used


def tile_meta(tile, filter_name: str, n_band: int, params: dict, records: list, **extra) -> dict:
    """``meta.tile`` of a tile file: where it sits, how it was drizzled, what went in (read by the gather)."""
    return {
        "filter": filter_name,
        **tile.as_dict(),
        "n_band_inputs": n_band,
        "pixfrac": params["pixfrac"],
        "kernel": params["kernel"],
        "fillval": params["fillval"],
        "weight_type": params["weight_type"],
        **extra,
        "inputs": records,
    }


def empty_tile(tile, filter_name: str, n_band: int, params: dict):
    """Tile file of a tile no exposure reaches (no WCS: the gather takes it from the other tiles)."""
    from stdatamodels.jwst import datamodels

    model = datamodels.ImageModel()
    for name, array in empty_arrays(tile.shape).items():
        setattr(model, name, array)
    model.meta.bunit_data = model.meta.bunit_err = wfutils.SURFACE_BRIGHTNESS_UNIT  # what every input carries
    model.meta.tile = tile_meta(tile, filter_name, n_band, params, [])
    return model


def empty_arrays(shape) -> dict:
    """Output arrays of a tile no exposure reaches: no weight, no data."""
    nan = np.full(shape, np.nan, np.float32)
    return {
        "data": nan,
        "wht": np.zeros(shape, np.float32),
        "con": np.zeros((1, *shape), np.int32),
        "err": nan.copy(),
        "var_rnoise": nan.copy(),
        "var_poisson": nan.copy(),
        "var_flat": nan.copy(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mosaic_tiles.add_tile_job_arguments(
        parser,
        "all exposures of the band in band order (defines CON bits), or with --tiles the band's first exposure "
        "and the tile's listed ones",
        "tile FITS (ImageModel)",
        "JSON: pixfrac, kernel, weight_type, fillval, margin_px",
    )
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    grid, tile, table = mosaic_tiles.read_tile_job(args)
    model, used = drizzle_tile(args.inputs, grid, args.filter, tile, json.loads(args.params), table)
    wfutils.save_model(model, args.out, used, args.config_hash, "drizzle_tile")
    log.info("wrote %s (%d inputs)", args.out, len(used))


if __name__ == "__main__":
    wfutils.run_cli(main)
