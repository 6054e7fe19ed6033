"""Outlier detection, step 2 of 2: blot the median tiles back onto one exposure and flag its outliers.

One job per exposure: the exposure, its blotted median (same shape) and one median
tile at a time are in memory, never the other exposures. The median tiles
(``median_tile.py``) partition the band's grid; every pixel of the exposure is mapped
to the grid (``stcal.resample.utils.calc_pixmap``, only over the rectangle of the
exposure that reaches each tile) and takes the blotted value of the tile whose core
contains it (``drizzle.resample.blot_image``, linear interpolation, as
``stcal.outlier_detection.utils.gwcs_blot`` does; each tile holds its median a few pixels
beyond its core, so the interpolation never crosses a tile edge). The flags are jwst's:
``stcal.outlier_detection.utils.flag_resampled_crs`` with the two snr/scale thresholds
and the derivative of the blotted median, OUTLIER + DO_NOT_USE in DQ, then
``match_nans_and_flags``. The output is the exposure's ``_crf`` file; the input is never
modified.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

import drizzle_tile
import mosaic_tiles
from wflib import wfutils

log = logging.getLogger("flag_outliers")

DEFAULTS = {"snr": "5.0 4.0", "scale": "1.2 0.7", "backg": 0.0, "kernel": "square"}


def pair(text) -> tuple[float, float]:
    """jwst's two-value string parameter ("5.0 4.0") as floats."""
    values = [float(v) for v in str(text).replace(",", " ").split()]
    if len(values) != 2:
        raise wfutils.InputError(f"expected two numbers, got {text!r}")
    return values[0], values[1]


def core_mask(pixmap: np.ndarray, tile: dict, stored: dict) -> np.ndarray:
    """Pixels whose grid position (pixmap in the stored region's frame) falls in the tile's own pixels."""
    x = pixmap[..., 0] + stored["x0"]
    y = pixmap[..., 1] + stored["y0"]
    with np.errstate(invalid="ignore"):
        return (x >= tile["x0"] - 0.5) & (x < tile["x1"] - 0.5) & (y >= tile["y0"] - 0.5) & (y < tile["y1"] - 0.5)


def blot_tile(median_model, model, blot: np.ndarray, kernel: str) -> int:
    """Blot one median tile onto the pixels of ``model`` that fall in its core; returns their number."""
    from drizzle.resample import blot_image
    from stcal.resample.utils import calc_pixmap

    tile = median_model.meta.instance["tile"]
    stored = tile["stored"]
    tile_wcs = median_model.meta.wcs
    if tile_wcs is None:  # an empty median tile: no exposure reaches it
        return 0
    shape = (stored["y1"] - stored["y0"], stored["x1"] - stored["x0"])
    window = mosaic_tiles.input_window(model.meta.wcs, model.data.shape, tile_wcs, shape, 2.0, kernel)
    if window is None:
        return 0
    x0, x1, y0, y1 = window
    pixmap = calc_pixmap(mosaic_tiles.shifted_wcs(model.meta.wcs, x0, y0), tile_wcs, (y1 - y0, x1 - x0))
    inside = core_mask(pixmap, tile, stored)
    if not inside.any():
        return 0
    pixmap[np.isnan(pixmap)] = -1  # as gwcs_blot: blot_image cannot take NaNs
    out = np.full((y1 - y0, x1 - x0), np.nan, dtype=np.float32)
    median = np.asarray(median_model.data, dtype=np.float32)  # native byte order for the C code (FITS is big-endian)
    blot_image(data=median, pixmap=pixmap, out_img=out, fillval=np.nan, iscale=1.0, interp="linear")
    region = blot[y0:y1, x0:x1]
    region[inside] = out[inside]
    return int(inside.sum())


_TILE_META: dict = {}


def median_tile_meta(path) -> dict | None:
    """``meta.tile`` of a median tile, read once per process and file version.

    ``each_exposure.py`` calls ``main`` once per exposure of a band in one process; without
    the cache every exposure would re-read the metadata of every median tile of the band.
    """
    from stdatamodels.jwst.datamodels import read_metadata

    stat = os.stat(path)
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _TILE_META:
        _TILE_META[key] = read_metadata(str(path), flatten=False)["meta"].get("tile")
    return _TILE_META[key]


def overlapping_medians(exposure_path, median_paths, grid: dict, filter_name: str, margin: float = 8.0):
    """The median tiles whose stored region the exposure's S_REGION reaches (tile metadata only)."""
    polygon = mosaic_tiles.grid_footprints([exposure_path], grid, filter_name)[0][1]
    keep = []
    for path in median_paths:
        tile = median_tile_meta(path)
        if not tile or "stored" not in tile:
            raise wfutils.InputError(f"{path}: not a median tile of median_tile.py (no meta.tile)")
        if tile["filter"] != filter_name:
            raise wfutils.InputError(f"{path}: median tile of {tile['filter']}, not {filter_name}")
        stored = mosaic_tiles.Tile(tile["index"], **{k: tile["stored"][k] for k in ("x0", "x1", "y0", "y1")})
        if mosaic_tiles.polygon_overlaps_box(mosaic_tiles.convex_hull(polygon), mosaic_tiles.tile_box(stored, margin)):
            keep.append(path)
    return keep


def flag_exposure(exposure_path, median_paths, params: dict):
    """The exposure with its outliers flagged (OUTLIER + DO_NOT_USE), the number flagged and compared."""
    from jwst.lib.pipe_utils import match_nans_and_flags
    from stcal.outlier_detection.utils import flag_resampled_crs
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    params = {**DEFAULTS, **params}
    snr1, snr2 = pair(params["snr"])
    scale1, scale2 = pair(params["scale"])
    model = drizzle_tile.open_input(exposure_path)
    blot = np.full(model.data.shape, np.nan, dtype=np.float32)
    covered = 0
    for path in median_paths:
        with datamodels.open(str(path)) as median_model:
            covered += blot_tile(median_model, model, blot, params["kernel"])
    backg = params["backg"]
    if model.meta.background.subtracted is False and model.meta.background.level is not None:
        backg = model.meta.background.level  # jwst: blot compared with the un-subtracted exposure
    crs = flag_resampled_crs(model.data, model.err, blot, snr1, snr2, scale1, scale2, backg)
    model.dq |= crs.astype(np.uint32) * np.uint32(dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["OUTLIER"])
    match_nans_and_flags(model)
    model.meta.cal_step.outlier_detection = "COMPLETE"
    return model, int(np.count_nonzero(crs)), covered


def main(argv=None):
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("medians", nargs="+", help="median tiles of the band (median_tile.py outputs)")
    parser.add_argument("--exposure", required=True, help="the exposure to flag (cal or corrected ImageModel)")
    parser.add_argument("--grid", required=True, help="grid JSON from mosaic_grid.py")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--out", required=True, help="output crf FITS")
    wfutils.add_run_options(parser, params_help="JSON: snr, scale (jwst strings), backg")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    grid = json.loads(Path(args.grid).read_text())
    medians = overlapping_medians(args.exposure, args.medians, grid, args.filter)
    log.info("%s: %d of %d median tiles overlap", Path(args.exposure).name, len(medians), len(args.medians))
    model, n_flagged, covered = flag_exposure(args.exposure, medians, json.loads(args.params))
    n_pix = model.data.size
    log.info(
        "%s: %d pixels flagged as outliers (%.3f%%); %d of %d pixels had a median to compare with",
        Path(args.exposure).name, n_flagged, 100.0 * n_flagged / n_pix, covered, n_pix,
    )  # fmt: skip
    wfutils.save_model(model, args.out, [args.exposure], args.config_hash, "flag_outliers")


if __name__ == "__main__":
    wfutils.run_cli(main)
