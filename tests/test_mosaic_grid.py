"""The common output grid: one tangent point, north up, integer pixel-scale ratios, shared edges."""

from __future__ import annotations

import numpy as np
import pytest

import mosaic_grid
import simulate_survey as sim
from wflib import wfutils

RA0, DEC0 = 24.17, 15.78


def square(xi0, eta0, size):
    xi = np.array([xi0, xi0 + size, xi0 + size, xi0])
    eta = np.array([eta0, eta0, eta0 + size, eta0 + size])
    ra, dec = sim.tangent_to_radec(xi, eta, RA0, DEC0)
    return np.column_stack([ra, dec])


def test_grids_share_edges_and_scale_ratios():
    verts = {"F200W": square(-20, -10, 30), "F300M": square(-21, -12, 30), "F770W": square(-5, -5, 12)}
    channels = {"F200W": "NRC_SW", "F300M": "NRC_LW", "F770W": "MIRI"}
    grid = mosaic_grid.common_grid(verts, channels, RA0, DEC0, 0.031, {"NRC_SW": 1, "NRC_LW": 2, "MIRI": 3}, 1.0)
    corners = []
    for spec in grid["filters"].values():
        wcs = sim.celestial_wcs(RA0, DEC0, spec["pixel_scale"], tuple(spec["shape"]), crpix=spec["crpix"])
        ny, nx = spec["shape"]
        corners.append([wcs.pixel_to_world_values(-0.5, -0.5), wcs.pixel_to_world_values(nx - 0.5, ny - 0.5)])
        # the tangent point is where crpix says
        assert np.allclose(wcs.world_to_pixel_values(RA0, DEC0), spec["crpix"], atol=1e-6)
    assert np.allclose(corners, corners[0], atol=1e-9)
    sw, lw, miri = (grid["filters"][f]["shape"] for f in ("F200W", "F300M", "F770W"))
    assert sw[0] == 2 * lw[0] and sw[1] == 2 * lw[1] and sw[0] == 3 * miri[0]


def test_grid_covers_every_footprint_with_margin():
    verts = {"F200W": square(-20, -10, 30)}
    grid = mosaic_grid.common_grid(verts, {"F200W": "NRC_SW"}, RA0, DEC0, 0.031, {"NRC_SW": 1}, 1.0)
    ext = grid["extent_arcsec"]
    assert ext["east"] >= 10 + 1 - 1e-6 and ext["west"] <= -20 - 1 + 1e-6
    assert ext["south"] <= -10 - 1 + 1e-6 and ext["north"] >= 20 + 1 - 1e-6


def test_bad_s_region_names_the_file():
    with pytest.raises(wfutils.InputError, match="x.fits"):
        mosaic_grid.parse_s_region("CIRCLE 1 2 3", "x.fits")
