"""Common output grid of a target: one tangent point and orientation for every band.

The tangent point is the target position from the sheet; the grid is north-up;
each channel's pixel scale is an integer multiple of the finest one, and all
grids share the same outer edges, so a coarse pixel covers exactly
``multiple x multiple`` fine pixels (PHANGS-JWST Sec. 3: all bands of a target
are drizzled onto aligned grids). Footprints come from the exposures'
``S_REGION`` (no pixel reads).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re

import numpy as np

from wflib import wfutils

log = logging.getLogger("mosaic_grid")


def parse_s_region(s_region: str, path: str) -> np.ndarray:
    """(N, 2) array of (ra, dec) vertices from a ``POLYGON ICRS ...`` string."""
    numbers = re.findall(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?", s_region)
    if not s_region.upper().startswith("POLYGON") or len(numbers) < 6 or len(numbers) % 2:
        raise wfutils.InputError(f"{path}: S_REGION {s_region!r} is not a polygon")
    return np.asarray(numbers, float).reshape(-1, 2)


def tangent_offsets_arcsec(ra, dec, ra0, dec0):
    """Gnomonic (xi east, eta north) offsets in arcsec, for footprint extents."""
    ra, dec, ra0, dec0 = map(np.radians, (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600, np.degrees(eta) * 3600


def common_grid(
    vertices_by_filter: dict,
    channel_by_filter: dict,
    ra0: float,
    dec0: float,
    base_scale: float,
    multiples: dict,
    margin: float,
) -> dict:
    """Grids of all filters: same tangent point, orientation and outer edges.

    East is to the left (x grows westwards), north up. The union of all
    footprints plus ``margin`` is snapped outwards to whole coarse pixels.
    """
    xi, eta = [], []
    for verts in vertices_by_filter.values():
        x, y = tangent_offsets_arcsec(verts[:, 0], verts[:, 1], ra0, dec0)
        xi.append(x)
        eta.append(y)
    xi, eta = np.concatenate(xi), np.concatenate(eta)
    coarse = base_scale * max(multiples[channel_by_filter[f]] for f in vertices_by_filter)
    west = math.ceil((-xi.min() + margin) / coarse) * coarse  # x axis points west: -xi
    east = math.floor((-xi.max() - margin) / coarse) * coarse
    south = math.floor((eta.min() - margin) / coarse) * coarse
    north = math.ceil((eta.max() + margin) / coarse) * coarse
    grids = {}
    for filt in sorted(vertices_by_filter):
        scale = base_scale * multiples[channel_by_filter[filt]]
        nx = int(round((west - east) / scale))
        ny = int(round((north - south) / scale))
        # pixel centre i sits at -xi = east + (i + 0.5) * scale; the tangent point at -xi = 0
        grids[filt] = {"pixel_scale": scale, "shape": [ny, nx], "crpix": [-east / scale - 0.5, -south / scale - 0.5]}
    return {
        "crval": [ra0, dec0],
        "rotation": 0.0,
        "filters": grids,
        "extent_arcsec": {"east": -east, "west": -west, "south": south, "north": north},
    }


def read_footprints(paths):
    """Per-filter stacked S_REGION vertices and each filter's channel, from the FITS headers."""
    from astropy.io import fits

    from wflib import survey_plan

    vertices, channels = {}, {}
    for path in paths:
        wfutils.check_image_file(path, extensions=("SCI",), unit=None)
        with fits.open(path) as hdul:
            filt = hdul[0].header.get("FILTER")
            s_region = hdul["SCI"].header.get("S_REGION")
        if not filt or not s_region:
            raise wfutils.InputError(f"{path}: header lacks FILTER or S_REGION")
        vertices.setdefault(filt, []).append(parse_s_region(s_region, path))
        channels[filt] = survey_plan.channel_of(filt)
    return {f: np.vstack(v) for f, v in vertices.items()}, channels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="calibrated exposures of every filter of the target")
    parser.add_argument("--out", required=True, help="grid JSON")
    parser.add_argument("--ra", type=float, required=True, help="tangent point RA (deg)")
    parser.add_argument("--dec", type=float, required=True, help="tangent point Dec (deg)")
    parser.add_argument("--pixel-scale", type=float, default=0.031, help="finest pixel scale (arcsec)")
    parser.add_argument(
        "--multiples",
        default='{"NRC_SW": 1, "NRC_LW": 2, "MIRI": 3}',
        help="JSON: integer multiple of the finest scale per channel",
    )
    parser.add_argument("--margin", type=float, default=1.0, help="margin around the footprints (arcsec)")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    vertices, channels = read_footprints(args.inputs)
    grid = common_grid(vertices, channels, args.ra, args.dec, args.pixel_scale, json.loads(args.multiples), args.margin)
    grid["provenance"] = {
        "workflow_version": wfutils.workflow_version(),
        "config_hash": args.config_hash,
        "n_inputs": len(args.inputs),
    }
    for filt, spec in grid["filters"].items():
        log.info(
            "grid %s: %d x %d pixels of %.3f arcsec", filt, spec["shape"][1], spec["shape"][0], spec["pixel_scale"]
        )
    wfutils.write_text(json.dumps(grid, indent=1), args.out)


if __name__ == "__main__":
    wfutils.run_cli(main)
