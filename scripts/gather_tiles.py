"""Assemble the drizzled tiles of one band into the mosaic (i2d ImageModel on the common grid).

Tiles from ``drizzle_tile.py`` cover the grid without overlap, so each output pixel is
copied from exactly one tile: SCI, ERR, WHT and the three variance arrays as they are,
CON with its bits renumbered from the tile's local order to the band order (bit i of
plane i // 32 = the i-th input of the band, as in jwst's single-pass ResampleStep). The
metadata follow jwst's ``ResampleImage.finalize``: meta of the band's first input, the
full grid's gwcs (``stcal.alignment.wcs_from_sregions``, bounding box from the inputs'
footprints), FITS WCS keywords (``ResampleImage.update_fits_wcsinfo``), the combined
S_REGION, exposure times summed over distinct exposures (group ids), and the resample
parameters.

Memory: the mosaic is streamed to disk one row of tiles at a time, so the job holds one
band of tile rows of one extension (plus a tile), not the mosaic. The i2d file is written
as stdatamodels writes it -- the model with its metadata and WCS is saved with 1 x 1
placeholder arrays, then its headers (with the full NAXISn) and its ASDF extension are
copied around the streamed arrays (``astropy.io.fits.StreamingHDU``); stdatamodels reads
arrays from the FITS extensions named in the ASDF tree, and the tree's header hash is
refreshed so the file opens like any i2d.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np

import mosaic_tiles
from wflib import wfutils

log = logging.getLogger("gather_tiles")

CTX_PLANE_BITS = 32
# model attribute -> FITS extension, and the value of a pixel no tile fills
EXTENSIONS = {
    "data": "SCI",
    "err": "ERR",
    "con": "CON",
    "wht": "WHT",
    "var_poisson": "VAR_POISSON",
    "var_rnoise": "VAR_RNOISE",
    "var_flat": "VAR_FLAT",
}
FILL = {"SCI": np.nan, "ERR": np.nan, "WHT": 0.0, "CON": 0, "VAR_POISSON": np.nan, "VAR_RNOISE": np.nan,
        "VAR_FLAT": np.nan}  # fmt: skip


# --------------------------------------------------------------------------- pure functions
def context_planes(n_inputs: int) -> int:
    """Number of 32-bit context planes for ``n_inputs`` exposures (drizzle's layout)."""
    return max(0, n_inputs - 1) // CTX_PLANE_BITS + 1


def renumber_context(con_local: np.ndarray, ctx_to_index: dict, out: np.ndarray, plane0: int = 0) -> None:
    """OR the tile's context bits into ``out`` with bit ``ctx`` moved to bit ``index``.

    ``out`` holds the band-order planes ``plane0 .. plane0 + len(out) - 1`` of the tile's pixels;
    bits whose band index falls in other planes are skipped.
    """
    local = np.asarray(con_local, dtype=np.int32).view(np.uint32)  # native byte order (FITS is big-endian)
    target = out.view(np.uint32)
    for ctx, index in ctx_to_index.items():
        plane = index // CTX_PLANE_BITS - plane0
        if 0 <= plane < len(target):
            bit = (local[ctx // CTX_PLANE_BITS] >> np.uint32(ctx % CTX_PLANE_BITS)) & np.uint32(1)
            target[plane] |= bit << np.uint32(index % CTX_PLANE_BITS)


def time_info(records) -> dict:
    """Exposure-time metadata of the mosaic from its inputs, as ``stcal.resample.Resample`` sums them.

    Each distinct exposure (group id) counts once, in band order; the measurement time is
    reported only if every exposure has one.
    """
    seen, start, end = set(), [], []
    total, duration, measured, all_measured = 0.0, 0.0, 0.0, True
    for rec in sorted(records, key=lambda r: r["index"]):
        if rec["group_id"] in seen:
            continue
        seen.add(rec["group_id"])
        start.append(rec["start_time"])
        end.append(rec["end_time"])
        total += rec["exposure_time"] or 0.0
        duration += rec["duration"] or 0.0
        if rec["measurement_time"] is None:
            all_measured = False
            measured += rec["exposure_time"] or 0.0
        else:
            measured += rec["measurement_time"]
    return {
        "pointings": len(seen),
        "exposure_time": total,
        "start_time": min(start) if start else None,
        "end_time": max(end) if end else None,
        "duration": duration,
        "measurement_time": measured if all_measured and seen else None,
    }


def check_partition(tiles: list[dict], shape) -> None:
    """The tiles must cover the grid exactly once (area sum and pairwise disjoint boxes)."""
    ny, nx = shape
    area = 0
    for t in tiles:
        if not (0 <= t["x0"] < t["x1"] <= nx and 0 <= t["y0"] < t["y1"] <= ny):
            raise wfutils.InputError(f"tile {t['index']} [{t['y0']}:{t['y1']}, {t['x0']}:{t['x1']}] is off the grid")
        area += (t["x1"] - t["x0"]) * (t["y1"] - t["y0"])
    boxes = sorted((t["y0"], t["x0"], t["y1"], t["x1"], t["index"]) for t in tiles)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if b[0] >= a[2]:
                break
            if b[1] < a[3] and a[1] < b[3]:
                raise wfutils.InputError(f"tiles {a[4]} and {b[4]} overlap")
    if area != nx * ny:
        raise wfutils.InputError(f"tiles cover {area / (nx * ny):.1%} of the {ny} x {nx} grid: some are missing")


# --------------------------------------------------------------------------- I/O
def read_tiles(tile_paths, filter_name: str) -> list[tuple[str, dict]]:
    """(path, meta.tile) of every tile, from the metadata only (no arrays)."""
    from stdatamodels.jwst.datamodels import read_metadata

    out = []
    for path in tile_paths:
        tile = read_metadata(str(path), flatten=False)["meta"].get("tile")
        if not tile or "inputs" not in tile:
            raise wfutils.InputError(f"{path}: not a tile of drizzle_tile.py (no meta.tile)")
        if tile["filter"] != filter_name:
            raise wfutils.InputError(f"{path}: tile of {tile['filter']}, not {filter_name}")
        out.append((str(path), tile))
    n_band = {t["n_band_inputs"] for _, t in out}
    if len(n_band) > 1:
        raise wfutils.InputError(f"tiles made from {sorted(n_band)} inputs: tiles of different runs")
    return out


def skeleton(reference_tile: str, grid: dict, filter_name: str, records: list[dict], tile: dict, planes: int):
    """The mosaic's ImageModel with its metadata and full-grid WCS and 1 x 1 placeholder arrays."""
    from jwst.resample.resample import ResampleImage
    from stcal.alignment import combine_sregions
    from stdatamodels.jwst import datamodels

    mosaic = datamodels.ImageModel()
    with datamodels.open(reference_tile) as model:
        # metadata, frames and wcsinfo of the band's first input, carried by every non-empty tile
        mosaic.update(model)
        ref_wcs, ref_wcsinfo = model.meta.wcs, dict(model.meta.wcsinfo.instance)
    footprints = [r["s_region"] for r in records]
    wcs = mosaic_tiles.tile_wcs(grid, filter_name, None, ref_wcs, ref_wcsinfo, footprints=footprints)
    mosaic.meta.wcs = wcs
    for name, ext in EXTENSIONS.items():
        shape = (planes, 1, 1) if ext == "CON" else (1, 1)
        setattr(mosaic, name, np.full(shape, FILL[ext], np.int32 if ext == "CON" else np.float32))
    set_metadata(mosaic, tile, records, mosaic_tiles.filter_spec(grid, filter_name)["pixel_scale"])
    ResampleImage.update_fits_wcsinfo(mosaic)
    try:
        mosaic.meta.wcsinfo.s_region = combine_sregions(
            footprints, wcs.get_transform("detector", "world"), intersect_footprint=wcs.footprint()
        )
    except ValueError as exc:
        log.warning("could not combine the inputs' S_REGIONs: %s", exc)
    if "tile" in mosaic.meta.instance:
        del mosaic.meta.instance["tile"]
    return mosaic


def set_metadata(mosaic, tile: dict, records: list[dict], pixel_scale_arcsec: float) -> None:
    """Resample and exposure metadata of the mosaic (``ResampleImage.update_output_model``)."""
    times = time_info(records)
    pix_area = mosaic_tiles.output_pixel_scale(pixel_scale_arcsec)[1] ** 2
    meta = mosaic.meta
    meta.photometry.pixelarea_arcsecsq = pix_area
    meta.photometry.pixelarea_steradians = pix_area / np.rad2deg(3600) ** 2
    meta.resample.pointings = times["pointings"]
    meta.resample.pixel_scale_ratio = tile["pixel_scale_ratio"]
    meta.resample.pixfrac = tile["pixfrac"]
    meta.resample.kernel = tile["kernel"]
    meta.resample.fillval = tile["fillval"]
    meta.resample.weight_type = tile["weight_type"]
    meta.bunit_data = records[0]["bunit_data"]
    meta.exposure.exposure_time = times["exposure_time"]
    meta.exposure.effective_exposure_time = times["exposure_time"]
    meta.exposure.start_time = times["start_time"]
    meta.exposure.end_time = times["end_time"]
    meta.exposure.duration = times["duration"]
    meta.exposure.elapsed_exposure_time = times["duration"]
    meta.exposure.measurement_time = times["measurement_time"]
    meta.cal_step.resample = "COMPLETE"


def stream_extension(out: Path, header, ext: str, tiles: list[tuple[str, dict]], shape, planes: int) -> None:
    """Append one image extension to ``out``, filled from the tiles one row of tiles at a time."""
    from astropy.io import fits

    ny, nx = shape
    full = (planes, ny, nx) if ext == "CON" else (ny, nx)
    header = header.copy()
    for axis, n in enumerate(full[::-1], start=1):
        header[f"NAXIS{axis}"] = n
    dtype = np.dtype(np.int32 if ext == "CON" else np.float32)
    rows = sorted({(t["y0"], t["y1"]) for _, t in tiles})
    stream = fits.StreamingHDU(str(out), header)
    for plane in range(planes if ext == "CON" else 1):
        for y0, y1 in rows:
            band = np.full((y1 - y0, nx), FILL[ext], dtype)
            for path, t in tiles:
                if (t["y0"], t["y1"]) != (y0, y1):
                    continue
                with fits.open(path, memmap=True) as hdul:
                    data = hdul[ext].data
                    if ext == "CON":
                        view = band[None, :, t["x0"] : t["x1"]]
                        renumber_context(data, {r["ctx"]: r["index"] for r in t["inputs"]}, view, plane0=plane)
                    else:
                        band[:, t["x0"] : t["x1"]] = data
                    del data
            stream.write(band.astype(dtype.newbyteorder(">")))
    stream.close()


def write_mosaic(mosaic, tiles, shape, planes: int, path, inputs, cfg_hash) -> None:
    """Write the i2d atomically with provenance: skeleton headers + streamed arrays + the ASDF extension."""
    from astropy.io import fits
    from stdatamodels.fits_support import fits_hash

    mosaic.meta.filename = Path(path).name
    mosaic.extra_fits = {
        "PRIMARY": {"header": [list(c) for c in wfutils.provenance_cards(inputs, cfg_hash, "gather_tiles")]}
    }
    with wfutils.atomic_output(path) as tmp:
        skel = tmp.with_name(tmp.stem + ".skeleton.fits")
        try:
            mosaic.save(str(skel))
            with fits.open(skel) as small:
                fits.PrimaryHDU(header=small[0].header).writeto(tmp)
                for hdu in small[1:]:
                    if hdu.name != "ASDF":
                        stream_extension(tmp, hdu.header, hdu.name, tiles, shape, planes)
                        log.info("wrote extension %s", hdu.name)
                asdf_hdu = small["ASDF"].copy()
        finally:
            skel.unlink(missing_ok=True)
        with fits.open(tmp) as written:
            new_hash = fits_hash(written)  # the ASDF tree records a hash of the other headers
        column = asdf_hdu.columns[0].name
        # same length (64 hex digits), so nothing else in the ASDF block moves
        old = bytes(asdf_hdu.data[column][0])
        text = re.sub(rb"_fits_hash: [0-9a-f]{64}", b"_fits_hash: " + new_hash.encode(), old)
        with fits.open(tmp, mode="append") as hdul:
            hdul.append(asdf_bytes_hdu(text, column, asdf_hdu.header))


def asdf_bytes_hdu(text: bytes, column: str, header):
    """The ASDF extension (one row, one byte-array column) holding ``text``."""
    from astropy.io import fits

    data = np.frombuffer(text, dtype=np.uint8)[None, :]
    hdu = fits.BinTableHDU.from_columns([fits.Column(array=data, format=f"{data.shape[1]}B", name=column)])
    hdu.name = header.get("EXTNAME", "ASDF")
    return hdu


def gather(tile_paths, grid: dict, filter_name: str, out, cfg_hash=None) -> int:
    """Write the mosaic of ``filter_name`` from its tiles to ``out``; returns the number of inputs."""
    spec = mosaic_tiles.filter_spec(grid, filter_name)
    shape = tuple(spec["shape"])
    tiles = read_tiles(tile_paths, filter_name)
    check_partition([t for _, t in tiles], shape)
    records = {r["index"]: r for _, t in tiles for r in t["inputs"]}
    ordered = [records[i] for i in sorted(records)]
    filled = [(p, t) for p, t in tiles if t["inputs"]]
    if not filled:
        raise wfutils.InputError(f"no input reaches any of the {len(tiles)} tiles of the {filter_name} grid")
    planes = context_planes(tiles[0][1]["n_band_inputs"])
    mosaic = skeleton(filled[0][0], grid, filter_name, ordered, filled[0][1], planes)
    write_mosaic(mosaic, tiles, shape, planes, out, tile_paths, cfg_hash)
    log.info("gathered %d tiles (%d with inputs) into %s", len(tiles), len(filled), out)
    return len(ordered)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiles", nargs="+", help="every tile of the band (drizzle_tile.py outputs)")
    parser.add_argument("--grid", required=True, help="grid JSON from mosaic_grid.py")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--out", required=True, help="output i2d FITS")
    wfutils.add_run_options(parser)
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    for path in args.tiles:
        wfutils.check_image_file(path, extensions=("SCI", "WHT", "CON"))
    grid = json.loads(Path(args.grid).read_text())
    n_inputs = gather(args.tiles, grid, args.filter, args.out, args.config_hash)
    log.info("wrote %s: %d tiles, %d inputs", args.out, len(args.tiles), n_inputs)


if __name__ == "__main__":
    wfutils.run_cli(main)
