"""Drizzle all exposures of one band onto the target's common grid (jwst ResampleStep).

Inverse-variance weighting from VAR_RNOISE, square kernel and pixfrac from the
config; output grid (tangent point, north-up orientation, pixel scale, shape)
from ``mosaic_grid.py`` so every band of a target is aligned. Writes an i2d
ImageModel with SCI, ERR, CON, WHT and the variance arrays, in MJy/sr.
"""

from __future__ import annotations

import argparse
import json
import logging

from wflib import wfutils

log = logging.getLogger("resample_mosaic")


def resample_parameters(grid: dict, filter_name: str, params: dict) -> dict:
    """ResampleStep parameters that put the output exactly on the common grid of ``filter_name``."""
    try:
        spec = grid["filters"][filter_name]
    except KeyError:
        raise wfutils.InputError(f"grid has no entry for filter {filter_name}") from None
    ny, nx = spec["shape"]
    return {
        **params,
        "crval": list(grid["crval"]),
        "crpix": list(spec["crpix"]),
        "rotation": grid["rotation"],
        "pixel_scale": spec["pixel_scale"],
        "output_shape": [nx, ny],
    }


def resample(paths, parameters: dict):
    from jwst.datamodels import ModelLibrary
    from jwst.resample import ResampleStep

    library = ModelLibrary([str(p) for p in paths], on_disk=False)
    return ResampleStep(**parameters).run(library)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="exposures of one band (crf or cal ImageModel FITS)")
    parser.add_argument("--grid", required=True, help="grid JSON from mosaic_grid.py")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--out", required=True, help="output i2d FITS")
    wfutils.add_run_options(parser, params_help="JSON of ResampleStep parameters (pixfrac, kernel, ...)")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    for path in args.inputs:
        wfutils.check_image_file(path)
    with open(args.grid) as fh:
        grid = json.load(fh)
    parameters = resample_parameters(grid, args.filter, json.loads(args.params))
    log.info(
        "drizzling %d exposures of %s onto %s pixels of %.3f arcsec",
        len(args.inputs),
        args.filter,
        parameters["output_shape"],
        parameters["pixel_scale"],
    )
    mosaic = resample(args.inputs, parameters)
    wfutils.save_model(mosaic, args.out, args.inputs, args.config_hash, "resample")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    wfutils.run_cli(main)
