"""Per-exposure noise corrections before the mosaic (CEERS, Bagley et al. 2023, Sect. 3.3.2).

Three corrections of a calibrated exposure, in the paper's order:

1. **Pedestal**: the sky level is the centre of a Gaussian fitted to the histogram of the
   pixels left after masking sources (CEERS tiered mask, ``masks.tiered_source_mask``) and
   bad pixels (``masks.gaussian_pedestal``); it is subtracted from SCI and recorded.
2. **VAR_RNOISE rescale**: the sky variance is measured on the pedestal-subtracted image
   from sums over 7x7 blocks containing no masked pixel -- the biweight midvariance of the
   block sums divided by 49, a per-pixel variance that includes any pixel-to-pixel
   correlation of the noise (by default taken from differences of neighbouring blocks, see
   ``block_sky_variance``) -- and VAR_RNOISE is scaled so that the predicted variance
   (the median of VAR_RNOISE + VAR_POISSON + VAR_FLAT over the same pixels) matches it.
   Because VAR_RNOISE sets the drizzle's inverse-variance weights, the mosaic's weights and
   error arrays then follow the measured noise. The factor is applied only when the
   measured/predicted ratio differs from 1 by more than ``min_significance`` times its
   statistical error (sqrt(2 / n_blocks)): when the sky Poisson noise dominates, VAR_RNOISE
   is a small part of the total and an unneeded factor from a noisy estimate would scatter
   the exposures' weights by factors of several without improving ERR. (``rescale_mode: rnoise`` scales VAR_RNOISE
   alone to the measured variance, the paper's literal recipe, which counts the sky's
   Poisson variance twice in ERR; the default ``total`` does not.) A smooth background
   (``background_box_px``) is removed before the block sums so that extended emission,
   e.g. a galaxy disk, is not counted as noise; 0 turns this off.
3. **Zero variances -> infinity**: pixels whose variance is exactly zero in VAR_RNOISE,
   VAR_POISSON or VAR_FLAT get ``inf`` there, so they carry no weight instead of punching
   low-error holes in the drizzled error arrays. ERR is recomputed from the variances.

The values go to the primary header (PEDESTAL, RNSCALE, SKYVAR, PREDVAR, NSKYBLK,
NZEROVAR) and to ``meta.noise_model``. Source-free pixels come from the image itself;
the simulator's truth is used only by the tests.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from wflib import masks, wfutils

log = logging.getLogger("noise_model")

VARIANCES = ("var_rnoise", "var_poisson", "var_flat")
DEFAULTS = {
    "pedestal": True,
    "rescale": True,
    "rescale_mode": "total",  # total | rnoise (see the module docstring)
    "block_size": 7,
    "block_statistic": "pairs",  # pairs | biweight (see block_sky_variance)
    "min_blocks": 50,
    "min_significance": 3.0,  # rescale only if |measured/predicted - 1| > this x its error
    "min_relative_change": 0.05,  # ... and more than this (the sky mask biases a blank field by 1-3%)
    "background_box_px": 64,  # smooth background removed before the block sums (0: none)
    "scale_limits": [0.25, 16.0],  # allowed VAR_RNOISE factors; outside them the exposure is left alone
    "zero_to_inf": list(VARIANCES),
    "mask_nsigma": 3.0,  # detection threshold of each tier (CEERS tiers, masks.CEERS_TIERS)
    "mask_dilate_factor": 2.0,  # tier dilations x this: faint wings and companions stay out of the sky
    "ring_radius_px": 40.0,
    "hist_bins": 200,
}


# --------------------------------------------------------------------------- pure functions
def sky_mask(data: np.ndarray, usable: np.ndarray, params: dict) -> np.ndarray:
    """Source-free, usable pixels: the CEERS tiered source mask inverted.

    The tiers' dilations are doubled by default: block sums add up 49 pixels of whatever faint
    light the mask leaves, and on the simulated deep field the CEERS dilations left enough
    galaxy wings to inflate the 7x7 sky variance by 15-50%. A lower threshold (2 sigma) masks
    noise peaks too, which biases the variance of a blank field low by ~15%.
    """
    factor = float(params["mask_dilate_factor"])
    tiers = tuple({**t, "dilate": int(round(t["dilate"] * factor)) | 1} for t in masks.CEERS_TIERS)
    bits = masks.tiered_source_mask(
        data, usable, tiers=tiers, nsigma=params["mask_nsigma"], ring_radius=params["ring_radius_px"], ring_width=3.0
    )
    return usable & (bits == 0)


def block_grid(values: np.ndarray, good: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``values`` over the non-overlapping ``size`` x ``size`` blocks, NaN where a pixel is not ``good``."""
    ny, nx = (values.shape[0] // size) * size, (values.shape[1] // size) * size
    shape = (ny // size, size, nx // size, size)
    full = good[:ny, :nx].reshape(shape).all(axis=(1, 3))
    sums = np.where(good, values, 0.0)[:ny, :nx].reshape(shape).sum(axis=(1, 3), dtype=np.float64)
    return np.where(full, sums, np.nan)


def block_sums(values: np.ndarray, good: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``values`` over non-overlapping ``size`` x ``size`` blocks in which every pixel is ``good``."""
    sums = block_grid(values, good, size)
    return sums[np.isfinite(sums)]


def block_sky_variance(residual: np.ndarray, sky: np.ndarray, size: int = 7, statistic: str = "pairs"):
    """Per-pixel sky variance from sums over clean ``size`` x ``size`` blocks: (variance, number of blocks).

    ``biweight``: biweight midvariance of the block sums / size**2 (CEERS). ``pairs``: half the
    biweight midvariance of the differences between neighbouring clean blocks / size**2 --
    the same quantity for independent blocks, but blind to light smoother than a block
    (extended halos, unmasked disk) and symmetric whatever the mask left of faint sources,
    which on the simulated deep field bias the plain block sums by 10-80%.
    """
    from astropy.stats import biweight_midvariance

    grid = block_grid(residual, sky, size)
    n_blocks = int(np.isfinite(grid).sum())
    if statistic == "biweight":
        values, norm = grid[np.isfinite(grid)], 1.0
    elif statistic == "pairs":
        values = np.concatenate([(grid[:, 1:] - grid[:, :-1]).ravel(), (grid[1:, :] - grid[:-1, :]).ravel()])
        values, norm = values[np.isfinite(values)], 2.0
    else:
        raise ValueError(f"block statistic must be 'pairs' or 'biweight', not {statistic!r}")
    if values.size < 3:
        return math.nan, n_blocks
    return float(biweight_midvariance(values)) / norm / size**2, n_blocks


def rnoise_scale(measured: float, var_rnoise: float, var_other: float, mode: str = "total") -> float:
    """Factor for VAR_RNOISE so the predicted sky variance equals ``measured`` (medians over sky pixels)."""
    if mode == "rnoise":
        return measured / var_rnoise
    if mode != "total":
        raise ValueError(f"rescale_mode must be 'total' or 'rnoise', not {mode!r}")
    return (measured - var_other) / var_rnoise


def zero_variances_to_inf(arrays: dict, names) -> dict:
    """Replace exact zeros by +inf in the named variance arrays (in place); returns counts per array."""
    counts = {}
    for name in names:
        array = arrays[name]
        zero = array == 0
        counts[name] = int(zero.sum())
        array[zero] = np.inf
    return counts


# --------------------------------------------------------------------------- datamodel I/O
def usable_pixels(model) -> np.ndarray:
    """Finite SCI, not DO_NOT_USE, positive finite VAR_RNOISE."""
    from stdatamodels.jwst.datamodels import dqflags

    good = np.isfinite(model.data) & ((model.dq & dqflags.pixel["DO_NOT_USE"]) == 0)
    with np.errstate(invalid="ignore"):
        good &= np.isfinite(model.var_rnoise) & (model.var_rnoise > 0)
    return good


def correct_exposure(model, params: dict) -> dict:
    """Apply the three corrections to ``model`` in place; returns what was measured and done."""
    params = {**DEFAULTS, **params}
    usable = usable_pixels(model)
    data = np.asarray(model.data, dtype=np.float32)
    sky = sky_mask(data, usable, params)
    report = {"sky_pixels": int(sky.sum()), "usable_pixels": int(usable.sum())}
    report.update(variance_ratio=math.nan, variance_ratio_sigma=math.nan)
    pedestal = 0.0
    if params["pedestal"] and sky.sum() > 100:
        pedestal = float(masks.gaussian_pedestal(data[sky], nbins=int(params["hist_bins"])))
        model.data = (data - pedestal).astype(np.float32)
    report["pedestal"] = pedestal
    scale, measured, predicted, nblocks = 1.0, math.nan, math.nan, 0
    if params["rescale"]:
        residual = np.asarray(model.data, dtype=np.float64)
        if params["background_box_px"]:
            residual = residual - masks.block_background(model.data, sky, int(params["background_box_px"]))
        measured, nblocks = block_sky_variance(residual, sky, int(params["block_size"]), params["block_statistic"])
        var_rn = float(np.median(model.var_rnoise[sky]))
        var_other = float(np.median((model.var_poisson + model.var_flat)[sky]))
        predicted = var_rn + var_other
        lo, hi = params["scale_limits"]
        ratio_error = math.sqrt(2.0 / max(nblocks - 1, 1))
        report["variance_ratio"] = measured / predicted if predicted > 0 else math.nan
        report["variance_ratio_sigma"] = (report["variance_ratio"] - 1.0) / ratio_error
        if nblocks < params["min_blocks"] or not np.isfinite(measured):
            log.warning("only %d clean %dx%d blocks: VAR_RNOISE left as it is", nblocks, *[params["block_size"]] * 2)
        elif (
            abs(report["variance_ratio_sigma"]) < params["min_significance"]
            or abs(report["variance_ratio"] - 1.0) < params["min_relative_change"]
        ):
            log.info(
                "sky variance / predicted = %.3f (%.1f sigma): consistent, VAR_RNOISE left as it is",
                report["variance_ratio"], report["variance_ratio_sigma"],
            )  # fmt: skip
        else:
            candidate = rnoise_scale(measured, var_rn, var_other, params["rescale_mode"])
            if lo <= candidate <= hi:
                scale = candidate
                model.var_rnoise = (model.var_rnoise * scale).astype(np.float32)
            else:
                log.warning("VAR_RNOISE factor %.3f outside %s: left as it is", candidate, params["scale_limits"])
    report.update(rnoise_scale=scale, sky_variance=measured, predicted_variance=predicted, sky_blocks=nblocks)
    arrays = {name: np.array(getattr(model, name), dtype=np.float32) for name in VARIANCES}
    zeros = zero_variances_to_inf(arrays, params["zero_to_inf"])
    for name, array in arrays.items():
        setattr(model, name, array)
    with np.errstate(invalid="ignore"):
        model.err = np.sqrt(arrays["var_rnoise"] + arrays["var_poisson"] + arrays["var_flat"]).astype(np.float32)
    report["zero_variances"] = zeros
    model.meta.noise_model = report
    return report


def header_cards(report: dict) -> list[tuple[str, object, str]]:
    """Primary-header cards of the measured values (NaN written as 0 with the block count saying why)."""

    def finite(value):
        return float(value) if value is not None and np.isfinite(value) else 0.0

    return [
        ("PEDESTAL", finite(report["pedestal"]), "[MJy/sr] sky pedestal subtracted"),
        ("RNSCALE", finite(report["rnoise_scale"]), "VAR_RNOISE scale factor applied"),
        ("SKYVAR", finite(report["sky_variance"]), "[(MJy/sr)^2] sky variance, 7x7 blocks"),
        ("PREDVAR", finite(report["predicted_variance"]), "[(MJy/sr)^2] predicted (median) before"),
        ("NSKYBLK", int(report["sky_blocks"]), "clean blocks used for SKYVAR"),
        ("SKYRATIO", finite(report["variance_ratio"]), "SKYVAR / PREDVAR"),
        ("SKYRSIG", finite(report["variance_ratio_sigma"]), "(SKYRATIO - 1) / its error"),
        ("NZEROVAR", int(sum(report["zero_variances"].values())), "zero variances set to infinity"),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="calibrated exposure (ImageModel FITS)")
    parser.add_argument("output", help="corrected exposure")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input)
    from stdatamodels.jwst import datamodels

    params = wfutils.parse_params(args.params, DEFAULTS)
    with datamodels.open(args.input) as model:
        report = correct_exposure(model, params)
        log.info(
            "%s: pedestal %.5g MJy/sr from %d sky pixels; sky variance %.4g vs predicted %.4g from %d blocks -> "
            "VAR_RNOISE x %.4f; %s zero variances -> inf",
            Path(args.input).name, report["pedestal"], report["sky_pixels"], report["sky_variance"],
            report["predicted_variance"], report["sky_blocks"], report["rnoise_scale"],
            sum(report["zero_variances"].values()),
        )  # fmt: skip
        wfutils.save_model(model, args.output, [args.input], args.config_hash, "noise_model", header_cards(report))


if __name__ == "__main__":
    wfutils.run_cli(main)
