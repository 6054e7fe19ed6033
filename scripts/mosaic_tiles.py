"""Output tiles of a band's mosaic grid and the exposures whose footprints overlap each tile.

Scaling out instead of up (issue 6): the common grid of a target and filter
(``mosaic_grid.py``) is cut into rectangular tiles of at most ``tile_size_px``
pixels on a side; one job per tile drizzles, or median-combines, only the
exposures whose footprint reaches that tile, so a job's memory is set by the
tile size and not by the number of exposures of the band.

* ``tile_count`` / ``tile_layout`` depend on the grid shape and the tile size
  only, so the number of tile jobs of a band is known from ``grid.json`` before
  any pixel is read. Tile edges split the grid evenly (no sliver tiles).
* Footprints are the exposures' ``S_REGION`` polygons projected onto the grid
  with the same gnomonic projection as the grid's WCS (header reads only);
  ``inputs_overlapping`` keeps the polygons that intersect a tile grown by a
  margin (separating-axis test on the convex hull).
* ``tile_wcs`` and ``input_window`` are the WCS helpers the tile jobs share:
  the gwcs of a tile (the whole grid's, built by ``stcal.alignment.wcs_from_sregions``
  as jwst's ResampleStep builds it, with the integer shift to the tile origin
  prepended, so pixel maps onto a tile are the single pass's minus the tile
  origin) and the rectangle of an exposure's pixels that can land
  on a tile (from a coarse pixel map, no pixel reads).

The module imports only numpy at the top, so ``rules/common.smk`` can call
``tile_count`` at DAG-building time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("mosaic_tiles")

# Half-width of each drizzle kernel's footprint in input pixels (drizzle 2.2 cdrizzle):
# square/point/turbo stay within the (pixfrac-shrunk) pixel, gaussian is cut at ~2.5 sigma
# of a FWHM-1 kernel, lanczos2/3 reach 2/3 pixels. Tile windows add this to their margin.
KERNEL_HALF_WIDTH_IN_PIX = {
    "square": 1.0,
    "point": 1.0,
    "turbo": 1.0,
    "gaussian": 2.0,
    "lanczos2": 2.0,
    "lanczos3": 3.0,
}


# A tile job looks for inputs this far beyond its tile before it knows the exact margins it
# needs (mosaic_tiles.tile_margin_px: 5-8 pixels for the workflow's grids, plus the blot margin
# of the median tiles); tile tables (--tiles) must list inputs at least this far plus margin_px.
SEARCH_MARGIN_PX = 32
MIN_TILE_SIZE_PX = 16
PIPELINE_SUFFIXES = {"cal", "crf", "rate", "rateints", "calints", "i2d", "bkgsub"}


@dataclass(frozen=True)
class Tile:
    """One output tile: pixel index ranges [x0, x1) x [y0, y1) of the band's grid (0-based)."""

    index: int
    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    def grown(self, margin: int, grid_shape) -> Tile:
        """The same tile grown by ``margin`` pixels on every side, clipped to the grid."""
        ny, nx = grid_shape
        return Tile(
            self.index,
            max(0, self.x0 - margin),
            min(nx, self.x1 + margin),
            max(0, self.y0 - margin),
            min(ny, self.y1 + margin),
        )

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- tile geometry (pure)
def filter_spec(grid: dict, filter_name: str) -> dict:
    """The grid entry of one filter, with a clear error when the grid lacks it."""
    try:
        return grid["filters"][filter_name]
    except KeyError:
        raise wfutils.InputError(
            f"grid has no entry for filter {filter_name} (filters: {', '.join(sorted(grid.get('filters', {})))})"
        ) from None


def _edges(n: int, tile_size: int) -> np.ndarray:
    """Tile edges along one axis: ceil(n / tile_size) tiles of (almost) equal width."""
    count = max(1, math.ceil(n / tile_size))
    return np.round(np.linspace(0, n, count + 1)).astype(int)


def tiles_per_axis(grid_spec: dict, tile_size_px: int) -> tuple[int, int]:
    """(tiles along y, tiles along x) of a filter grid ``{"shape": [ny, nx], ...}``."""
    if tile_size_px < MIN_TILE_SIZE_PX:
        # even splits of at least this size keep every tile >= size/2 pixels wide (a gwcs needs >= 2)
        raise wfutils.InputError(f"tile size must be at least {MIN_TILE_SIZE_PX} pixels, got {tile_size_px}")
    ny, nx = grid_spec["shape"]
    return max(1, math.ceil(ny / tile_size_px)), max(1, math.ceil(nx / tile_size_px))


def tile_count(grid_spec: dict, tile_size_px: int) -> int:
    """Number of tiles of a filter grid: known from grid.json alone (DAG-building time)."""
    nty, ntx = tiles_per_axis(grid_spec, tile_size_px)
    return nty * ntx


def tile_layout(grid_spec: dict, tile_size_px: int) -> list[Tile]:
    """Tiles covering the filter grid, row by row from the bottom-left; each at most ``tile_size_px`` a side."""
    tiles_per_axis(grid_spec, tile_size_px)  # validates the size
    ny, nx = grid_spec["shape"]
    xe, ye = _edges(nx, tile_size_px), _edges(ny, tile_size_px)
    tiles = []
    for j in range(len(ye) - 1):
        for i in range(len(xe) - 1):
            tiles.append(Tile(len(tiles), int(xe[i]), int(xe[i + 1]), int(ye[j]), int(ye[j + 1])))
    return tiles


def tile_of(grid_spec: dict, tile_size_px: int, index: int) -> Tile:
    tiles = tile_layout(grid_spec, tile_size_px)
    if not 0 <= index < len(tiles):
        raise wfutils.InputError(f"tile {index} does not exist: the grid has {len(tiles)} tiles of {tile_size_px} px")
    return tiles[index]


def sky_to_grid(ra, dec, grid: dict, filter_name: str):
    """Grid pixel coordinates (x, y; 0-based pixel centres) of sky positions (deg).

    The grid is a gnomonic projection about ``crval``, north up and east left
    (``mosaic_grid.common_grid``): x = crpix_x - xi / scale, y = crpix_y + eta / scale.
    """
    from mosaic_grid import tangent_offsets_arcsec

    if float(grid.get("rotation", 0.0)) != 0.0:
        raise wfutils.InputError(f"grid rotation {grid['rotation']} is not supported: the common grid is north-up")
    spec = filter_spec(grid, filter_name)
    xi, eta = tangent_offsets_arcsec(np.asarray(ra, float), np.asarray(dec, float), *grid["crval"])
    scale = spec["pixel_scale"]
    return spec["crpix"][0] - xi / scale, spec["crpix"][1] + eta / scale


def grid_to_sky(x, y, grid: dict, filter_name: str):
    """Sky positions (ra, dec; deg) of grid pixel coordinates: the inverse of ``sky_to_grid``."""
    from wflib.astro_common import from_tangent

    spec = filter_spec(grid, filter_name)
    scale = spec["pixel_scale"]
    xi = (spec["crpix"][0] - np.asarray(x, float)) * scale
    eta = (np.asarray(y, float) - spec["crpix"][1]) * scale
    return from_tangent(xi, eta, *grid["crval"])


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise, (M, 2)) of 2-D points (Andrew's monotone chain)."""
    pts = np.unique(np.asarray(points, float), axis=0)
    if len(pts) <= 2:
        return pts

    def turn(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def polygon_overlaps_box(polygon: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether a convex polygon (N, 2) and an axis-aligned box (xmin, xmax, ymin, ymax) intersect.

    Separating-axis theorem: they are disjoint iff the projections on one of the
    box axes or one of the polygon's edge normals do not overlap.
    """
    xmin, xmax, ymin, ymax = box
    poly = np.asarray(polygon, float)
    if poly[:, 0].max() < xmin or poly[:, 0].min() > xmax or poly[:, 1].max() < ymin or poly[:, 1].min() > ymax:
        return False
    corners = np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]])
    edges = np.roll(poly, -1, axis=0) - poly
    for ex, ey in edges:
        normal = np.array([-ey, ex])
        if not normal.any():
            continue
        p, b = poly @ normal, corners @ normal
        if p.max() < b.min() or b.max() < p.min():
            return False
    return True


def tile_box(tile: Tile, margin: float = 0.0) -> tuple[float, float, float, float]:
    """Continuous extent of a tile's pixels (pixel i spans i-0.5 .. i+0.5), grown by ``margin`` pixels."""
    return (tile.x0 - 0.5 - margin, tile.x1 - 0.5 + margin, tile.y0 - 0.5 - margin, tile.y1 - 0.5 + margin)


def inputs_overlapping(tile: Tile, input_footprints, margin: float = 8.0) -> list:
    """Keys of the inputs whose footprint (grid pixel polygon) meets ``tile`` grown by ``margin`` pixels.

    ``input_footprints`` is a sequence of (key, (N, 2) polygon in grid pixels) or a dict key -> polygon.
    The order of the keys is kept (it is the drizzle order and so the context-bit order).
    """
    items = input_footprints.items() if isinstance(input_footprints, dict) else input_footprints
    box = tile_box(tile, margin)
    return [key for key, poly in items if polygon_overlaps_box(convex_hull(poly), box)]


def tile_table(grid: dict, filter_name: str, tile_size_px: int, footprints, margin: float = 48.0) -> dict:
    """JSON-able table: every tile of the filter grid and the inputs that overlap it.

    ``inputs`` lists every input of the band in band order (the order that numbers the
    context bits); each tile lists the inputs whose footprint reaches it grown by
    ``margin`` pixels, which must cover the margins the tile jobs drizzle with.
    """
    spec = filter_spec(grid, filter_name)
    tiles = tile_layout(spec, tile_size_px)
    rows = [{**t.as_dict(), "inputs": inputs_overlapping(t, footprints, margin)} for t in tiles]
    return {
        "filter": filter_name,
        "tile_size_px": tile_size_px,
        "shape": list(spec["shape"]),
        "ntiles": len(tiles),
        "margin_px": margin,
        "inputs": [key for key, _ in footprints],
        "tiles": rows,
    }


def exposure_stem(path) -> str:
    """File name without the directory, ``.fits`` and a pipeline suffix (``_cal``, ``_crf``, ...).

    Tile tables made from the calibrated exposures then also index their ``_crf`` successors.
    """
    name = Path(str(path)).name
    name = name[: -len(".fits")] if name.endswith(".fits") else name
    stem, _, suffix = name.rpartition("_")
    return stem if stem and suffix in PIPELINE_SUFFIXES else name


def reference_input(paths, table=None) -> str:
    """The band's first input (reference of pixel scale, frames and metadata, as in jwst), among ``paths``."""
    if table is None:
        return str(paths[0])
    first = exposure_stem(table["inputs"][0])
    for path in paths:
        if exposure_stem(path) == first:
            return str(path)
    raise wfutils.InputError(f"the band's first input {first} must be given (reference of the pixel scale and frames)")


def select_inputs(paths, grid: dict, filter_name: str, tile: Tile, work: Tile, margin: float, table=None):
    """Inputs a tile job works on: (band size, [(band index, path)] of those reaching ``work``).

    Without ``table`` the paths are the whole band in band order. With a ``tile_table``
    (``--tiles``), the band order comes from the table and ``paths`` need only hold the
    band's first input (the reference of pixel scale, frames and metadata) and the tile's
    listed inputs; files are matched by exposure name (``exposure_stem``: a table made from
    ``_cal`` files serves their ``_crf`` successors). Either way only the S_REGION of the
    candidates is read, to keep those that reach ``work`` grown by ``margin`` pixels.
    """
    by_name = {exposure_stem(p): str(p) for p in paths}
    if table is None:
        band = list(by_name)
        pool = [str(p) for p in paths]
    else:
        band = [exposure_stem(p) for p in table["inputs"]]
        needed = max(abs(work.x0 - tile.x0), abs(work.x1 - tile.x1), abs(work.y0 - tile.y0), abs(work.y1 - tile.y1))
        if table["margin_px"] < needed + margin:
            raise wfutils.InputError(
                f"tile table margin {table['margin_px']} px is smaller than the {needed + margin:g} px this job "
                "needs: rerun mosaic_tiles.py with a larger --margin"
            )
        listed = [exposure_stem(p) for p in table["tiles"][tile.index]["inputs"]]
        missing = [n for n in listed if n not in by_name]
        if missing:
            raise wfutils.InputError(f"tile {tile.index}: inputs listed in the tile table not given: {missing[:3]}")
        pool = [by_name[n] for n in listed]
    index = {name: i for i, name in enumerate(band)}
    keep = set(inputs_overlapping(work, grid_footprints(pool, grid, filter_name), margin))
    chosen = sorted((index[exposure_stem(p)], p) for p in pool if p in keep)
    return len(band), chosen


# --------------------------------------------------------------------------- footprints (header reads only)
def read_s_region(path) -> str:
    """``S_REGION`` of an exposure's SCI header (the Stage 2 footprint; no pixel reads)."""
    from astropy.io import fits

    if not Path(path).exists():
        raise wfutils.InputError(f"{path}: file does not exist")
    try:
        s_region = fits.getheader(path, "SCI").get("S_REGION")
    except Exception as exc:  # astropy raises many types for damaged files
        raise wfutils.InputError(f"{path}: no readable SCI header ({type(exc).__name__}: {exc})") from exc
    if not s_region:
        raise wfutils.InputError(f"{path}: SCI header has no S_REGION (run assign_wcs / update_s_region_imaging)")
    return s_region


def grid_footprints(paths, grid: dict, filter_name: str) -> list[tuple[str, np.ndarray]]:
    """(path, polygon in grid pixels) of each input, from its S_REGION."""
    from mosaic_grid import parse_s_region

    out = []
    for path in paths:
        verts = parse_s_region(read_s_region(path), str(path))
        x, y = sky_to_grid(verts[:, 0], verts[:, 1], grid, filter_name)
        out.append((str(path), np.stack([x, y], axis=1)))
    return out


# --------------------------------------------------------------------------- WCS helpers of the tile jobs
def output_pixel_scale(pixel_scale_arcsec: float) -> tuple[float, float]:
    """(degrees, arcsec) of the output pixel scale with jwst ResampleImage's round trip (arcsec/3600*3600)."""
    deg = pixel_scale_arcsec / 3600.0
    return deg, 3600.0 * deg


def reference_pixel_scale_ratio(ref_model, pixel_scale_arcsec: float) -> float:
    """Output / input pixel scale as jwst 3.0 computes it: from the mean pixel area of the band's FIRST input."""
    from stcal.resample.utils import compute_mean_pixel_area

    pscale_in = np.rad2deg(math.sqrt(compute_mean_pixel_area(ref_model.meta.wcs, shape=ref_model.data.shape)))
    return output_pixel_scale(pixel_scale_arcsec)[0] / pscale_in


def tile_wcs(grid: dict, filter_name: str, tile: Tile | None, ref_wcs, ref_wcsinfo: dict, footprints=None):
    """gwcs of a tile (or of the whole grid when ``tile`` is None), as jwst's ResampleStep builds it.

    The whole grid's gwcs is ``stcal.alignment.wcs_from_sregions`` with the grid's crval,
    rotation, pixel scale, crpix and shape, the reference (first) input's frames and
    v3yangle/vparity (``ref_wcs``, ``ref_wcsinfo`` = ``model.meta.wcsinfo.instance``): the
    call jwst's ResampleStep makes for the single pass. A tile's gwcs is that one with the
    integer shift to the tile origin prepended (``shifted_wcs``), so tile pixel (i, j) goes
    through exactly the arithmetic of grid pixel (x0 + i, y0 + j): a pixel map onto a tile
    is the single pass's minus (x0, y0) in one rounding, which is exact (bit for bit) for
    grid coordinates of at least x0 / 2 and y0 / 2 (Sterbenz's lemma).
    ``footprints`` (S_REGION strings or (N, 2) ra/dec arrays) only set the whole grid's
    bounding box, as in jwst (the union of the inputs for a mosaic); by default it is the
    whole grid. A tile's bounding box is the whole tile.
    """
    from stcal.alignment.util import wcs_from_sregions

    spec = filter_spec(grid, filter_name)
    ny, nx = spec["shape"]
    if footprints is None:
        # the grid's own outline (one pixel beyond its edges): the bounding box is then the whole grid
        cx = np.array([-1.0, nx, nx, -1.0])
        cy = np.array([-1.0, -1.0, ny, ny])
        footprints = [np.stack(grid_to_sky(cx, cy, grid, filter_name), axis=1)]
    wcs = wcs_from_sregions(
        footprints,
        ref_wcs=ref_wcs,
        ref_wcsinfo=ref_wcsinfo,
        pscale=output_pixel_scale(spec["pixel_scale"])[0],
        rotation=float(grid.get("rotation", 0.0)),
        shape=[ny, nx],
        crpix=list(spec["crpix"]),
        crval=list(grid["crval"]),
    )
    if tile is None:
        return wcs
    return shifted_wcs(wcs, tile.x0, tile.y0, shape=tile.shape)


def input_window(wcs_in, shape_in, wcs_out, shape_out, margin_out: float, kernel: str = "square", step: int = 32):
    """Rectangle (x0, x1, y0, y1; half-open, input pixels) of an input whose pixels can reach an output.

    A coarse pixel map (every ``step`` input pixels and the edges) is evaluated through
    both WCSs; the input rectangle spans every coarse cell whose corners land within the
    output array grown by ``margin_out`` output pixels plus one coarse cell (any cell that
    touches the output then has all four corners selected), and is padded by the kernel's
    reach plus two pixels so that drizzle's corner interpolation never sees the cut.
    Returns None when no input pixel reaches the output.
    """
    ny, nx = shape_in
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1]).astype(float)
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1]).astype(float)
    gx, gy = np.meshgrid(xs, ys)
    # the output's bounding box plays no part (jwst's calc_pixmap disables it too)
    ox, oy = wcs_out.backward_transform(*wcs_in.pixel_to_world_values(gx, gy))
    finite = np.isfinite(ox) & np.isfinite(oy)
    if not finite.any():
        return None
    # output pixels per coarse cell (largest neighbour distance) = the cell's reach on the output
    dx = np.hypot(np.diff(ox, axis=1), np.diff(oy, axis=1))
    dy = np.hypot(np.diff(ox, axis=0), np.diff(oy, axis=0))
    cell = float(np.nanmax(np.r_[dx.ravel(), dy.ravel(), 0.0]))
    reach = cell * math.sqrt(2.0) + margin_out
    ony, onx = shape_out
    with np.errstate(invalid="ignore"):
        near_x = np.abs(ox - (onx - 1) / 2) <= onx / 2 + reach
        near_y = np.abs(oy - (ony - 1) / 2) <= ony / 2 + reach
    inside = finite & near_x & near_y
    if not inside.any():
        return None
    pad = int(math.ceil(KERNEL_HALF_WIDTH_IN_PIX.get(kernel, 3.0))) + 2
    x0 = max(0, int(gx[inside].min()) - pad)
    x1 = min(nx, int(gx[inside].max()) + pad + 1)
    y0 = max(0, int(gy[inside].min()) - pad)
    y1 = min(ny, int(gy[inside].max()) + pad + 1)
    return x0, x1, y0, y1


def shifted_wcs(wcs, x0: int, y0: int, shape=None):
    """gwcs of the cut-out [y0:, x0:] of an image: pixel (i, j) of the cut-out is pixel (x0 + i, y0 + j).

    The shift is prepended to the forward transform (and appended to the inverse), so
    every pixel goes through the same arithmetic as in the full image (integer shifts
    are exact); the bounding box moves with the cut-out. With ``shape`` (ny, nx) the
    cut-out is [y0:y0 + ny, x0:x0 + nx]: that is its array shape and its bounding box.
    """
    from astropy.modeling.models import Shift
    from gwcs import wcs as gwcs_wcs

    forward = (Shift(float(x0)) & Shift(float(y0))) | wcs.forward_transform
    new = gwcs_wcs.WCS(forward_transform=forward, input_frame=wcs.input_frame, output_frame=wcs.output_frame)
    if shape is not None:
        new.bounding_box = ((-0.5, shape[1] - 0.5), (-0.5, shape[0] - 0.5))
        new.array_shape = tuple(shape)
    elif wcs.bounding_box is not None:
        (bx0, bx1), (by0, by1) = wcs.bounding_box.bounding_box(order="F")
        new.bounding_box = ((bx0 - x0, bx1 - x0), (by0 - y0, by1 - y0))
    return new


def kernel_margin_out(kernel: str, out_per_in: float) -> float:
    """Output pixels an input pixel's kernel can reach beyond its centre, plus one pixel of slack."""
    return KERNEL_HALF_WIDTH_IN_PIX.get(kernel, 3.0) * max(out_per_in, 1.0) + 1.0


def tile_margin_px(kernel: str, out_per_in: float) -> int:
    """Margin (output pixels) a tile is drizzled with so that its own pixels see every input pixel.

    drizzle's scan-line limits keep only input pixels lying entirely inside its output array,
    so output pixels within about one input pixel (plus the kernel's reach) of the array's edge
    miss part of their flux. Two input pixels plus the kernel, rounded up, keeps the tile clear.
    """
    return int(math.ceil((2.0 + KERNEL_HALF_WIDTH_IN_PIX.get(kernel, 3.0)) * max(out_per_in, 1.0))) + 2


# --------------------------------------------------------------------------- entry point
def add_tile_job_arguments(parser, inputs_help: str, out_help: str, params_help: str) -> None:
    """Command line shared by the per-tile jobs (median_tile.py, drizzle_tile.py)."""
    parser.add_argument("inputs", nargs="+", help=inputs_help)
    parser.add_argument("--tiles", help="tile table JSON from mosaic_tiles.py (band order and per-tile inputs)")
    parser.add_argument("--grid", required=True, help="grid JSON from mosaic_grid.py")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--tile", type=int, required=True, help="tile index (mosaic_tiles.tile_layout)")
    parser.add_argument("--tile-size", type=int, required=True, help="tile side (output pixels)")
    parser.add_argument("--out", required=True, help=out_help)
    wfutils.add_run_options(parser, params_help=params_help)


def read_tile_job(args):
    """(grid, tile, tile table or None) of a per-tile job's parsed arguments."""
    grid = json.loads(Path(args.grid).read_text())
    tile = tile_of(filter_spec(grid, args.filter), args.tile_size, args.tile)
    table = json.loads(Path(args.tiles).read_text()) if args.tiles else None
    return grid, tile, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="exposures of one band (their S_REGION is read)")
    parser.add_argument("--grid", required=True, help="grid JSON from mosaic_grid.py")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--tile-size", type=int, required=True, help="tile side (output pixels)")
    parser.add_argument(
        "--margin", type=float, default=48.0, help="footprint margin (output pixels); >= SEARCH_MARGIN_PX + margin_px"
    )
    parser.add_argument("--out", required=True, help="tiles JSON")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    grid = json.loads(Path(args.grid).read_text())
    footprints = grid_footprints(args.inputs, grid, args.filter)
    table = tile_table(grid, args.filter, args.tile_size, footprints, args.margin)
    for row in table["tiles"]:
        log.info(
            "tile %d [%d:%d, %d:%d]: %d of %d inputs overlap",
            row["index"],
            row["y0"],
            row["y1"],
            row["x0"],
            row["x1"],
            len(row["inputs"]),
            len(args.inputs),
        )
    wfutils.write_text(json.dumps(table, indent=1), args.out)


if __name__ == "__main__":
    wfutils.run_cli(main)
