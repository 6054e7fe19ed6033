"""Outlier detection, step 1 of 2: the median of the singly drizzled exposures on one output tile.

jwst's imaging OutlierDetectionStep drizzles every exposure (all detectors of one
exposure together, i.e. per group id) onto a common frame, masks each drizzled image
where its weight is below ``maskpt`` x its mean weight, and takes the median of the
stack; ``flag_outliers.py`` then blots the median back onto each exposure. Here the
common frame is the band's mosaic grid (north up, the mosaic's pixel scale) and the
median is computed one output tile at a time, so a job holds one tile per overlapping
exposure (or, above ``median_memory_mb``, streams them through stcal's on-disk
``MedianComputer``; in memory the same NaN median, computed only where an exposure
covers the tile) instead of every exposure of the band.

The pieces are jwst's: ``stcal.resample.Resample`` with jwst's outlier-detection
settings (ivm weights, ``good_bits="~DO_NOT_USE"``, no variance or context), the
weight threshold ``stcal.outlier_detection.utils.compute_weight_threshold`` and the
NaN median ``stcal.outlier_detection.median.MedianComputer``. The tile is drizzled with
a margin (``mosaic_tiles.tile_margin_px``) so its pixels equal a whole-grid drizzle, and
the median is kept on the tile grown by ``blot_margin_px`` so that the blot's
interpolation near a tile edge never leaves the tile. One difference from jwst: the
weight threshold of an exposure is measured on the part of it that falls on this tile
(jwst measures it on the whole drizzled exposure); both are sigma-clipped means that
the interior pixels dominate, and they differ only where an exposure clips a tile's corner.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np

import drizzle_tile
import mosaic_tiles
from wflib import wfutils

log = logging.getLogger("median_tile")

DEFAULTS = {
    "pixfrac": 1.0,
    "kernel": "square",
    "weight_type": "ivm",
    "fillval": "NAN",
    "good_bits": "~DO_NOT_USE",  # jwst OutlierDetectionStep default
    "maskpt": 0.7,
    "pixmap_stepsize": 1,
    "pixmap_order": 1,
    "margin_px": 8.0,  # S_REGION pre-selection margin (output pixels)
    "blot_margin_px": 4,  # median kept this far beyond the tile (blot interpolation)
    "median_memory_mb": 2000.0,  # above this the stack goes through temporary files
}


def masked_group_image(data: np.ndarray, wht: np.ndarray, maskpt: float) -> tuple[np.ndarray, float]:
    """A drizzled exposure with pixels below ``maskpt`` x its clipped mean weight set to NaN (jwst)."""
    from stcal.outlier_detection.utils import compute_weight_threshold

    threshold = compute_weight_threshold(wht, maskpt)
    out = np.array(data, dtype=np.float32, copy=True)
    out[wht < threshold] = np.nan
    return out, float(threshold)


def nanmedian_covered(stack: np.ndarray, rows: int = 256) -> np.ndarray:
    """NaN median along axis 0 of a (n, ny, nx) stack, computed only where some layer is finite.

    Per pixel the same ``np.nanmedian`` call as ``stcal``'s ``nanmedian3D`` (row blocks of the
    same small-axis path, so the same values), without visiting pixels no exposure covers:
    numpy warns once per all-NaN pixel, which cost half the median time of a sparsely
    covered tile.
    """
    out = np.full(stack.shape[1:], np.nan, dtype=stack.dtype)
    for y0 in range(0, stack.shape[1], rows):
        block = stack[:, y0 : y0 + rows]
        covered = np.isfinite(block).any(axis=0)
        if covered.any():
            out[y0 : y0 + rows][covered] = np.nanmedian(block[:, covered], axis=0)
    return out


class InMemoryMedian:
    """The in-memory branch of stcal's ``MedianComputer`` (same append/evaluate) with ``nanmedian_covered``."""

    def __init__(self, shape):
        self.stack = np.full(shape, np.nan, dtype=np.float32)

    def append(self, layer: np.ndarray, index: int) -> None:
        self.stack[index] = layer

    def evaluate(self) -> np.ndarray:
        return nanmedian_covered(self.stack)


def group_order(chosen) -> dict[str, list[str]]:
    """The chosen inputs ([(band index, path)], band order) grouped by exposure (group id), in band order."""
    from jwst.datamodels.utils import attrs_to_group_id
    from stdatamodels.jwst.datamodels import read_metadata

    groups: dict[str, list[str]] = {}
    for _, path in chosen:
        meta = read_metadata(str(path), flatten=False)["meta"]
        group_id = meta.get("group_id") or attrs_to_group_id(meta["observation"])
        groups.setdefault(group_id, []).append(path)
    return groups


def median_tile(paths, grid: dict, filter_name: str, tile, params: dict, table=None):
    """Median of the singly drizzled exposures over ``tile`` grown by the blot margin.

    ``paths`` as for ``drizzle_tile.drizzle_tile``; returns (median ImageModel, paths used).
    """
    from jwst.resample.resample import input_jwst_model_to_dict
    from stcal.outlier_detection.median import MedianComputer
    from stdatamodels.jwst import datamodels

    params = {**DEFAULTS, **params}
    spec = mosaic_tiles.filter_spec(grid, filter_name)
    stored = tile.grown(int(params["blot_margin_px"]), spec["shape"])
    bound = stored.grown(mosaic_tiles.SEARCH_MARGIN_PX, spec["shape"])
    n_band, chosen = mosaic_tiles.select_inputs(paths, grid, filter_name, tile, bound, params["margin_px"], table)
    if not chosen:
        log.info("tile %d of %s: no input reaches it (S_REGION); writing an empty median tile", tile.index, filter_name)
        output = datamodels.ImageModel()
        output.data = np.full(stored.shape, np.nan, np.float32)
        output.meta.bunit_data = wfutils.SURFACE_BRIGHTNESS_UNIT
        output.meta.tile = tile_meta(tile, stored, filter_name, n_band, params, [])
        return output, []
    with drizzle_tile.open_input(mosaic_tiles.reference_input(paths, table)) as ref:
        ratio = mosaic_tiles.reference_pixel_scale_ratio(ref, spec["pixel_scale"])
        margin = mosaic_tiles.tile_margin_px(params["kernel"], 1.0 / ratio)
        work = stored.grown(margin, spec["shape"])
        ref_wcs, ref_wcsinfo = ref.meta.wcs, ref.meta.wcsinfo.instance
        stored_wcs = mosaic_tiles.tile_wcs(grid, filter_name, stored, ref_wcs, ref_wcsinfo)
        work_wcs = mosaic_tiles.tile_wcs(grid, filter_name, work, ref_wcs, ref_wcsinfo)
        output = datamodels.ImageModel()
        output.update(ref)
    groups = group_order(chosen)
    core = np.s_[stored.y0 - work.y0 : stored.y1 - work.y0, stored.x0 - work.x0 : stored.x1 - work.x0]
    n_groups = max(1, len(groups))
    stack_mb = n_groups * stored.shape[0] * stored.shape[1] * 4 / 1e6
    in_memory = stack_mb <= params["median_memory_mb"]
    log.info(
        "tile %d [%d:%d, %d:%d] of %s: %d exposures (%d files) overlap; median stack %.0f MB %s",
        tile.index, tile.y0, tile.y1, tile.x0, tile.x1, filter_name, len(groups), len(chosen), stack_mb,
        "in memory" if in_memory else "on disk",
    )  # fmt: skip
    output_wcs = {"wcs": work_wcs, "pixel_scale": mosaic_tiles.output_pixel_scale(spec["pixel_scale"])[1]}
    output_wcs["pixel_scale_ratio"] = ratio
    records, used = [], []
    with tempfile.TemporaryDirectory(prefix="median_tile_", dir=params.get("tempdir")) as tmp:
        if in_memory:
            computer = InMemoryMedian((n_groups, *stored.shape))
        else:
            computer = MedianComputer(
                (n_groups, *stored.shape),
                False,
                buffer_size=int(params["median_memory_mb"] * 1e6),
                dtype=np.float32,
                tempdir=tmp,
            )
        for k, (group_id, members) in enumerate(groups.items()):
            resamp = drizzle_tile.resampler(output_wcs, len(members), params, enable_ctx=False, enable_var=False)
            added = 0
            for path in members:
                with drizzle_tile.open_input(path) as model:
                    window = mosaic_tiles.input_window(
                        model.meta.wcs,
                        model.data.shape,
                        work_wcs,
                        work.shape,
                        mosaic_tiles.kernel_margin_out(params["kernel"], 1.0 / ratio),
                        params["kernel"],
                    )
                    if window is None:
                        continue
                    as_dict = input_jwst_model_to_dict(model, params["weight_type"], False, None)
                    resamp.add_model(drizzle_tile.cut_out(as_dict, window))
                    used.append(path)
                    added += 1
            if added:
                resamp.finalize()
                layer, threshold = masked_group_image(
                    resamp.output_model["data"][core], resamp.output_model["wht"][core], params["maskpt"]
                )
            else:
                layer, threshold = np.full(stored.shape, np.nan, np.float32), math.nan
            computer.append(layer, k)
            records.append({"group_id": group_id, "files": added, "weight_threshold": threshold})
            log.info(
                "drizzled %d/%d exposures: %s (%d files), weight threshold %.4g",
                k + 1, len(groups), group_id, added, threshold,
            )  # fmt: skip
        median = computer.evaluate() if groups else np.full(stored.shape, np.nan, np.float32)
    output.data = np.asarray(median, dtype=np.float32)
    output.meta.wcs = stored_wcs
    output.meta.tile = tile_meta(tile, stored, filter_name, n_band, params, records)
    return output, used


def tile_meta(tile, stored, filter_name: str, n_band: int, params: dict, groups: list) -> dict:
    """``meta.tile`` of a median tile: the tile, the region stored (tile + blot margin), the exposures."""
    return {
        "filter": filter_name,
        **tile.as_dict(),
        "stored": stored.as_dict(),
        "n_band_inputs": n_band,
        "maskpt": params["maskpt"],
        "kernel": params["kernel"],
        "pixfrac": params["pixfrac"],
        "groups": groups,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mosaic_tiles.add_tile_job_arguments(
        parser,
        "all exposures of the band in band order, or with --tiles the band's first exposure and the tile's listed ones",
        "median tile FITS (ImageModel)",
        "JSON: maskpt, pixfrac, kernel, weight_type, median_memory_mb",
    )
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    grid, tile, table = mosaic_tiles.read_tile_job(args)
    params = json.loads(args.params)
    Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
    params.setdefault("tempdir", str(Path(args.out).resolve().parent))
    model, used = median_tile(args.inputs, grid, args.filter, tile, params, table)
    wfutils.save_model(model, args.out, sorted(set(map(str, used))), args.config_hash, "median_tile")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    wfutils.run_cli(main)
