"""Single-exposure 1/f ("pink" readout noise) destriping of NIRCam images.

NIRCam reads each detector through 4 amplifiers of nx/4 columns; 1/f noise adds a
different offset to every row of every amplifier (horizontal stripes) and a weaker offset
to every column.  Three methods build a stripe model, which is subtracted from the image:

``median_filter`` (PHANGS-JWST, Williams et al. 2024, Sect. 3.6.1)
    Optionally high-pass the image with a Butterworth filter (smooth response, no ringing)
    so that large-scale emission stays out of the measurement; mask what remains bright
    (and the negative bowls the filter leaves); per amplifier, take sigma-clipped medians of
    the unmasked pixels of each row, falling back to the full-row median where more than
    80% of an amplifier-row is masked; remove the noise at several scales by subtracting a
    median-filtered copy of the row profile (3, 7, ... 127 rows); then the same for columns.
``remstriping`` (CEERS, Bagley et al. 2023, Sect. 3.1.3)
    Tiered source mask (ring-median pre-filter, then segmentation after Gaussian smoothing
    at sigma = 25, 15, 5, 2 pixels), a pedestal from a Gaussian fit to the histogram of
    the unmasked pixels, 2-sigma-clipped per-amplifier row medians with the same full-row
    fallback, then column medians.
``row_median``
    Baseline: one-threshold source mask, sigma-clipped per-amplifier row medians (each
    amplifier's profile centred on zero), then column medians.

Our extension, ``median_filter`` with ``highpass="local"``: instead of the Butterworth
filter, each row of each 16-column block is reduced to a clipped statistic and the running
median of these block values along the columns (65 rows) is subtracted; the amplifier-row
value is the clipped median over its blocks.  This removes the emission's variation along
the rows, which the Butterworth filter leaves in (and which leaks into row medians wherever
the mask changes from row to row), and is what makes the method usable in fields filled
with emission.  With ``local_length=0`` and a scale longer than the detector it measures the
stripes on every scale (deep fields).

The pattern is measured on flat-fielded data: a rate-level input can be given ``--flat``
(measure on data/flat, subtract the model from the unflattened data, as both papers do).
The 4-pixel reference border of full frames is skipped (model 0 there); subarrays use
their DQ flags instead and whole rows unless NOUTPUTS says 4 amplifiers read them.  The
model has zero mean over the usable science pixels: a constant is a background level, left
to level matching, so no net flux is removed.

Writes the corrected exposure (same datamodel, SCI - model), optionally the model file
(``--noise-model``: STRIPES image, MASK bits, per-amplifier ROWS and COLUMNS profiles) and a
QA figure (``--qa-png``: data, mask, model, corrected with the same stretch width).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wflib import masks, wfutils

log = logging.getLogger("destripe")

METHODS = ("median_filter", "remstriping", "row_median")
HIGHPASS = ("butterworth", "local", "none")
# Published defaults; every key can be given on the command line or in --params JSON.
DEFAULTS = {
    "method": "median_filter",
    # median_filter: profile median-filter scales (rows / columns), PHANGS-JWST values
    "scales": [3, 7, 15, 31, 63, 127],
    "column_scales": [3, 7, 15, 31, 63, 127],
    # high-pass before measuring: "butterworth" (PHANGS "filter_diffuse"), "local" (block medians
    # minus their running median along the columns, see local_row_profiles) or "none"
    "highpass": "butterworth",
    "butterworth_cutoff": 0.005,
    "butterworth_order": 2.0,
    # highpass="local": block width (columns) and running-median length (rows; 0: whole column)
    "local_block": 16,
    "local_length": 65,
    # fall back to the full-row median where more than this fraction of an amplifier-row is masked
    "fallback_fraction": 0.8,
    # clipping of the row/column statistics; None -> 3 (median_filter, row_median) or 2 (remstriping)
    "clip_sigma": None,
    "maxiters": 5,
    # clipped "median" (published) or "mean"; highpass="local" also takes "mean_median"
    # (clipped mean of each block, median over the blocks)
    "statistic": "median",
    # single-threshold source mask (median_filter on the filtered image, row_median on the data)
    "mask_nsigma": 3.0,
    "mask_npixels": 10,
    "mask_dilate": 11,
    "negative_npixels": 3,
    # remstriping: CEERS tiers and ring-median pre-filter
    "tiers": [dict(t) for t in masks.CEERS_TIERS],
    "tier_nsigma": 3.0,
    "ring_radius": 40.0,
    "ring_width": 3.0,
    # geometry
    "columns": True,
    "n_amplifiers": 4,
    "reference_border": 4,
}
MASK_BITS = {"unusable": 1, "source": 2, "bright": 4}


@dataclass
class StripeModel:
    """Result of one destriping: the model to subtract and what it was measured from."""

    model: np.ndarray  # (ny, nx) MJy/sr (or the input unit), zero outside the science region
    mask: np.ndarray  # (ny, nx) uint8: MASK_BITS (unusable pixels, sources, bright pixels)
    rows: np.ndarray  # (n_amp, ny) row part of the model per amplifier
    columns: np.ndarray  # (nx,) column part of the model
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- geometry
def amplifier_slices(nx: int, n_amp: int = 4, subarray: bool = False) -> list[slice]:
    """Column ranges read by each amplifier: ``n_amp`` equal blocks, or one for a subarray."""
    if subarray or n_amp <= 1:
        return [slice(0, nx)]
    if nx % n_amp:
        raise ValueError(f"{nx} columns do not split into {n_amp} amplifiers")
    width = nx // n_amp
    return [slice(a * width, (a + 1) * width) for a in range(n_amp)]


def science_region(shape, border: int, subarray: bool) -> np.ndarray:
    """Boolean image of the pixels outside the reference border (everything for subarrays)."""
    region = np.zeros(shape, bool)
    b = 0 if subarray else border
    region[b : shape[0] - b, b : shape[1] - b] = True
    return region


def usable_pixels(data: np.ndarray, dq: np.ndarray | None, region: np.ndarray) -> np.ndarray:
    """Finite science pixels with no DQ flag set (CEERS masks every DQ > 0)."""
    usable = np.isfinite(data) & region
    if dq is not None:
        usable &= dq == 0
    return usable


# --------------------------------------------------------------------------- profiles
def row_profiles(
    image: np.ndarray,
    use: np.ndarray,
    amps: list[slice],
    region: np.ndarray,
    clip_sigma: float,
    maxiters: int,
    fallback_fraction: float,
    statistic: str = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped row statistic per amplifier with the full-row fallback.

    Returns (profiles (n_amp, ny) with NaN for rows without data, fallback flags (n_amp, ny)).
    An amplifier-row falls back to the statistic of the whole row when more than
    ``fallback_fraction`` of its science pixels are masked (CEERS and PHANGS use 0.8).
    """
    ny, nx = image.shape
    statistic = "mean" if statistic == "mean" else "median"
    values = np.where(use, image, np.nan).astype(np.float32)
    full, _, _ = masks.clipped_profile(values, axis=1, sigma=clip_sigma, maxiters=maxiters, statistic=statistic)
    widths = {s.stop - s.start for s in amps}
    if len(widths) == 1 and len(amps) > 1:
        width = widths.pop()
        per_amp, _, _ = masks.clipped_profile(
            values.reshape(ny, len(amps), width), axis=-1, sigma=clip_sigma, maxiters=maxiters, statistic=statistic
        )
        per_amp = per_amp.T
    else:
        per_amp = np.stack(
            [
                masks.clipped_profile(values[:, s], axis=1, sigma=clip_sigma, maxiters=maxiters, statistic=statistic)[0]
                for s in amps
            ]
        )
    n_science = np.stack([region[:, s].sum(axis=1) for s in amps])
    n_free = np.stack([use[:, s].sum(axis=1) for s in amps])
    with np.errstate(invalid="ignore", divide="ignore"):
        masked_fraction = np.where(n_science > 0, 1.0 - n_free / np.maximum(n_science, 1), 1.0)
    fallback = (masked_fraction > fallback_fraction) & (n_science > 0)
    profiles = np.where(fallback, full[None, :], per_amp)
    return profiles, fallback


def multiscale_noise(profile: np.ndarray, scales) -> np.ndarray:
    """Part of a 1-D profile on scales below the largest of ``scales`` (PHANGS median filter).

    For each scale in increasing order the profile is replaced by its running median of
    that width and the difference is added to the noise; scales at least as long as the
    profile use its overall median.  NaN gaps are interpolated first.
    """
    from scipy.ndimage import median_filter

    current = masks.fill_gaps(profile)
    noise = np.zeros_like(current)
    for scale in sorted(int(s) for s in scales):
        if scale >= current.size:
            smooth = np.full_like(current, np.median(current))
        else:
            smooth = median_filter(current, size=scale | 1, mode="reflect")
        noise += current - smooth
        current = smooth
    return noise


def butterworth_highpass(image: np.ndarray, cutoff: float = 0.005, order: float = 2.0) -> np.ndarray:
    """High-pass ``image`` (no NaNs) with a Butterworth filter (PHANGS-JWST Sect. 3.6.1).

    Response (f/fc)^2n / (1 + (f/fc)^2n) with f the spatial frequency in cycles/pixel, the
    squared Butterworth of ``skimage.filters.butterworth`` (cutoff_frequency_ratio=0.005,
    order=2).  The image is padded by reflection (about an eighth of its size on each side;
    pjpipe pads a quarter) so that the edges do not ring.
    """
    import scipy.fft as sfft

    ny, nx = image.shape
    py = (sfft.next_fast_len(ny + ny // 4, real=True) - ny) // 2
    px = (sfft.next_fast_len(nx + nx // 4, real=True) - nx) // 2
    padded = np.pad(image.astype(np.float32), ((py, py), (px, px)), mode="reflect")
    shape = padded.shape
    fy = sfft.fftfreq(shape[0]).astype(np.float32)
    fx = sfft.rfftfreq(shape[1]).astype(np.float32)
    q = ((fy[:, None] ** 2 + fx[None, :] ** 2) / cutoff**2) ** order
    response = q / (1.0 + q)
    spectrum = sfft.rfft2(padded, workers=1)
    spectrum *= response
    filtered = sfft.irfft2(spectrum, s=shape, workers=1)
    return filtered[py : py + ny, px : px + nx]


def finish_model(rows: np.ndarray, columns: np.ndarray, amps, region, valid) -> np.ndarray:
    """2-D model from per-amplifier row profiles and a column profile; 0 outside ``region``.

    The model has zero mean over the ``valid`` pixels: it moves no net flux (a constant is a
    background level, left to level matching).
    """
    model = np.zeros(region.shape, np.float32)
    for a, s in enumerate(amps):
        model[:, s] += rows[a][:, None]
    model += columns[None, :].astype(np.float32)
    model[~region] = 0.0
    if valid.any():
        model[region] -= np.float32(np.mean(model[valid], dtype=np.float64))
    return model


def _science_rows(region: np.ndarray) -> slice:
    rows = np.flatnonzero(region.any(axis=1))
    return slice(rows[0], rows[-1] + 1) if rows.size else slice(0, 0)


def _science_columns(region: np.ndarray) -> slice:
    cols = np.flatnonzero(region.any(axis=0))
    return slice(cols[0], cols[-1] + 1) if cols.size else slice(0, 0)


def _column_profile(image, use, clip_sigma, maxiters, statistic):
    statistic = "mean" if statistic == "mean" else "median"
    values = np.where(use, image, np.nan).astype(np.float32)
    prof, _, _ = masks.clipped_profile(values, axis=0, sigma=clip_sigma, maxiters=maxiters, statistic=statistic)
    return prof


# --------------------------------------------------------------------------- the methods
def local_row_profiles(
    image: np.ndarray,
    use: np.ndarray,
    n_groups: int,
    block: int = 16,
    length: int = 65,
    clip_sigma: float = 3.0,
    maxiters: int = 5,
    fallback_fraction: float = 0.8,
    min_block_fraction: float = 0.5,
    statistic: str = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Row profiles per column group (amplifier) after removing a local background ("local" high-pass).

    Each row of each ``block``-column block is reduced to a clipped statistic of its unmasked
    pixels (valid when at least ``min_block_fraction`` of the block is unmasked).  The
    running median of these block values along the columns over ``length`` rows (0: the whole
    column) is a background that follows the emission across the detector but averages the
    stripes over ``length`` rows; subtracting it leaves the stripes on smaller scales and
    little emission, whatever the mask leaves in a row.  The profile of a group is the clipped
    median over its blocks, or over all blocks of the row where fewer than
    (1 - ``fallback_fraction``) of the group's blocks are valid.  ``statistic``: "median"
    for both steps, "mean" for both, or "mean_median" (clipped means of the blocks, ~20% less
    noise, and the median over blocks, which rejects blocks spoilt by a source's wings).
    This is our extension of the PHANGS median-filter method for fields filled with emission.
    Returns (profiles (n_groups, ny) with NaN for rows without data, fallback flags).
    """
    from scipy.ndimage import median_filter

    ny, nx = image.shape
    width = nx // n_groups
    block = max(1, min(int(block), width))
    per_group = math.ceil(width / block)
    n_blocks = per_group * n_groups
    values = np.full((ny, n_groups, per_group * block), np.nan, np.float32)
    values[:, :, :width] = np.where(use, image, np.nan)[:, : n_groups * width].reshape(ny, n_groups, width)
    values = values.reshape(ny, n_blocks, block)
    block_stat = "mean" if statistic in ("mean", "mean_median") else "median"
    across = "mean" if statistic == "mean" else "median"
    med, _, _ = masks.clipped_profile(values, axis=-1, sigma=clip_sigma, maxiters=maxiters, statistic=block_stat)
    free = np.isfinite(values).sum(axis=-1)
    med[free < max(3, min_block_fraction * block)] = np.nan
    if length and length < ny:
        filled = np.stack([masks.fill_gaps(med[:, b]) for b in range(n_blocks)], axis=1)
        background = median_filter(filled, size=(int(length) | 1, 1), mode="reflect")
    else:
        background = np.nanmedian(np.where(np.isfinite(med), med, np.nan), axis=0)[None, :]
    resid = (med - background).astype(np.float32)
    grouped = resid.reshape(ny, n_groups, per_group)
    per_amp, _, _ = masks.clipped_profile(grouped, axis=-1, sigma=clip_sigma, maxiters=maxiters, statistic=across)
    full, _, _ = masks.clipped_profile(resid, axis=-1, sigma=clip_sigma, maxiters=maxiters, statistic=across)
    n_valid = np.isfinite(grouped).sum(axis=-1)
    fallback = (n_valid < (1.0 - fallback_fraction) * per_group) & np.isfinite(full)[:, None]
    profiles = np.where(fallback, full[:, None], per_amp).T
    return profiles, fallback.T


def median_filter_stripes(data, usable, region, amps, p) -> StripeModel:
    """PHANGS-JWST single-tile destriping, median-filter method (Williams et al. 2024, Sect. 3.6.1).

    ``highpass`` selects what keeps large-scale emission out of the row profiles: the
    published Butterworth filter, our "local" block-median background (``local_row_profiles``)
    or nothing.  The profiles then lose their structure above the largest of ``scales`` rows
    (``multiscale_noise``), which is left to the multi-exposure step.
    """
    clip = p["clip_sigma"] if p["clip_sigma"] is not None else 3.0
    mask_bits = np.where(usable, 0, MASK_BITS["unusable"]).astype(np.uint8)
    highpass = p["highpass"]
    if highpass == "butterworth":
        # compact bright sources are replaced by the smooth local background before filtering,
        # so that the high-pass does not dig bowls around them (pjpipe masks > 5 sigma)
        background = masks.block_background(data, usable)
        bright = masks.threshold_mask(data - background, usable, nsigma=5.0, npixels=1, dilate_size=3)
        work = np.where(usable & ~bright, data, background).astype(np.float32)
        measured = butterworth_highpass(work, p["butterworth_cutoff"], p["butterworth_order"])
        ok = usable & ~bright
        positive = masks.threshold_mask(measured, ok, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"])
        negative = masks.threshold_mask(
            measured, ok & ~positive, p["mask_nsigma"], p["negative_npixels"], p["mask_dilate"], negative=True
        )
        sources = (positive | negative) & usable
        mask_bits[bright & usable] |= MASK_BITS["bright"]
    elif highpass == "local":
        measured = data
        background = masks.block_background(data, usable)
        sources = masks.threshold_mask(data - background, usable, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"])
        sources &= usable
    else:
        measured = data
        sources = masks.threshold_mask(data, usable, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"]) & usable
    mask_bits[sources] |= MASK_BITS["source"]
    use = usable & (mask_bits == 0)
    if highpass == "local":
        profiles, fallback = local_row_profiles(
            measured,
            use,
            len(amps),
            p["local_block"],
            p["local_length"],
            clip,
            p["maxiters"],
            p["fallback_fraction"],
            statistic=p["statistic"],
        )
    else:
        profiles, fallback = row_profiles(
            measured, use, amps, region, clip, p["maxiters"], p["fallback_fraction"], p["statistic"]
        )
    rs = _science_rows(region)
    rows = np.zeros_like(profiles)
    for a in range(len(amps)):
        rows[a, rs] = multiscale_noise(profiles[a, rs], p["scales"])
    columns = np.zeros(data.shape[1])
    if p["columns"]:
        row_model = finish_model(rows, columns, amps, region, usable)
        cs = _science_columns(region)
        if highpass == "local":
            resid = (measured - row_model)[rs, cs]
            prof, _ = local_row_profiles(
                resid.T,
                use[rs, cs].T,
                1,
                p["local_block"],
                p["local_length"],
                clip,
                p["maxiters"],
                1.0,
                statistic=p["statistic"],
            )
            prof = prof[0]
        else:
            prof = _column_profile(measured - row_model, use, clip, p["maxiters"], p["statistic"])[cs]
        columns[cs] = multiscale_noise(prof, p["column_scales"])
    model = finish_model(rows, columns, amps, region, usable)
    info = {
        "masked_fraction": float(1 - use.sum() / max(region.sum(), 1)),
        "fallback_rows": [int(f.sum()) for f in fallback],
    }
    return StripeModel(model, mask_bits, rows, columns, info)


def remstriping_stripes(data, usable, region, amps, p) -> StripeModel:
    """CEERS remstriping (Bagley et al. 2023, Sect. 3.1.3): tiered mask, pedestal, amp-row and column medians."""
    clip = p["clip_sigma"] if p["clip_sigma"] is not None else 2.0
    mask_bits = np.where(usable, 0, MASK_BITS["unusable"]).astype(np.uint8)
    tiers = masks.tiered_source_mask(
        data,
        usable,
        tiers=p["tiers"],
        nsigma=p["tier_nsigma"],
        ring_radius=p["ring_radius"],
        ring_width=p["ring_width"],
    )
    mask_bits[(tiers > 0) & usable] |= MASK_BITS["source"]
    use = usable & (mask_bits == 0)
    pedestal = masks.gaussian_pedestal(data[use]) if use.any() else 0.0
    measured = data - pedestal
    profiles, fallback = row_profiles(
        measured, use, amps, region, clip, p["maxiters"], p["fallback_fraction"], "median"
    )
    rs = _science_rows(region)
    rows = np.zeros_like(profiles)
    for a in range(len(amps)):
        rows[a, rs] = masks.fill_gaps(profiles[a, rs])
    columns = np.zeros(data.shape[1])
    if p["columns"]:
        row_model = np.zeros(data.shape, np.float32)
        for a, s in enumerate(amps):
            row_model[:, s] = rows[a][:, None]
        prof = _column_profile(measured - row_model, use, clip, p["maxiters"], "median")
        cs = _science_columns(region)
        columns[cs] = masks.fill_gaps(prof[cs])
    model = finish_model(rows, columns, amps, region, usable)
    info = {
        "masked_fraction": float(1 - use.sum() / max(region.sum(), 1)),
        "fallback_rows": [int(f.sum()) for f in fallback],
        "pedestal": float(pedestal),
        "tier_pixels": [int(((tiers >> k) & 1).sum()) for k in range(len(p["tiers"]))],
    }
    return StripeModel(model, mask_bits, rows, columns, info)


def row_median_stripes(data, usable, region, amps, p) -> StripeModel:
    """Baseline: one-threshold source mask, per-amplifier clipped row medians centred on zero, column medians."""
    clip = p["clip_sigma"] if p["clip_sigma"] is not None else 3.0
    mask_bits = np.where(usable, 0, MASK_BITS["unusable"]).astype(np.uint8)
    sources = masks.threshold_mask(data, usable, p["mask_nsigma"], p["mask_npixels"], p["mask_dilate"]) & usable
    mask_bits[sources] |= MASK_BITS["source"]
    use = usable & (mask_bits == 0)
    profiles, _ = row_profiles(data, use, amps, region, clip, p["maxiters"], 1.0, p["statistic"])
    rs = _science_rows(region)
    rows = np.zeros_like(profiles)
    for a in range(len(amps)):
        prof = masks.fill_gaps(profiles[a, rs])
        rows[a, rs] = prof - np.median(prof)
    columns = np.zeros(data.shape[1])
    if p["columns"]:
        row_model = finish_model(rows, columns, amps, region, usable)
        prof = _column_profile(data - row_model, use, clip, p["maxiters"], p["statistic"])
        cs = _science_columns(region)
        prof = masks.fill_gaps(prof[cs])
        columns[cs] = prof - np.median(prof)
    model = finish_model(rows, columns, amps, region, usable)
    return StripeModel(
        model, mask_bits, rows, columns, {"masked_fraction": float(1 - use.sum() / max(region.sum(), 1))}
    )


def stripe_model(
    data: np.ndarray,
    dq: np.ndarray | None = None,
    params: dict | None = None,
    subarray: bool = False,
    flat: np.ndarray | None = None,
    n_amplifiers: int | None = None,
) -> StripeModel:
    """Measure the 1/f stripe pattern of one NIRCam image with ``params['method']``.

    ``data`` is the image (cal: MJy/sr, flat-fielded; rate: DN/s), ``dq`` its DQ array (None:
    every finite pixel is usable), ``flat`` an optional flat field the rate image is divided
    by for the measurement.  The returned model is subtracted from the unflattened ``data``.
    A ``subarray`` has no reference border to skip and is read by one amplifier unless
    ``n_amplifiers`` says otherwise (full-width subarrays read with 4 outputs).
    """
    p = resolve_params(params or {})
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"destriping needs a 2-D image, got shape {data.shape}")
    region = science_region(data.shape, int(p["reference_border"]), subarray)
    if n_amplifiers is None:
        n_amplifiers = 1 if subarray else int(p["n_amplifiers"])
    amps = amplifier_slices(data.shape[1], n_amplifiers)
    measured = data
    if flat is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            measured = np.where(np.isfinite(flat) & (flat > 0), data / flat, np.nan).astype(np.float32)
    usable = usable_pixels(measured, dq, region)
    method = {
        "median_filter": median_filter_stripes,
        "remstriping": remstriping_stripes,
        "row_median": row_median_stripes,
    }
    result = method[p["method"]](measured, usable, region, amps, p)
    result.info["method"] = p["method"]
    return result


def resolve_params(params: dict) -> dict:
    """Defaults updated with ``params``; unknown keys and methods are refused."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise wfutils.InputError(f"unknown destripe parameter(s): {', '.join(sorted(unknown))}")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if p["method"] not in METHODS:
        raise wfutils.InputError(f"unknown destripe method {p['method']!r}; choose one of {', '.join(METHODS)}")
    if p["statistic"] not in ("median", "mean", "mean_median"):
        raise wfutils.InputError(f"statistic must be median, mean or mean_median, not {p['statistic']!r}")
    if p["highpass"] not in HIGHPASS:
        raise wfutils.InputError(f"unknown highpass {p['highpass']!r}; choose one of {', '.join(HIGHPASS)}")
    if not 0.0 <= float(p["fallback_fraction"]) <= 1.0:
        raise wfutils.InputError(f"fallback_fraction must be within [0, 1], got {p['fallback_fraction']}")
    return p


# --------------------------------------------------------------------------- I/O
def is_subarray(model) -> bool:
    name = (model.meta.subarray.name or "FULL").upper()
    return name not in ("FULL", "GENERIC") and not name.startswith("FULL")


def readout_amplifiers(model) -> int:
    """Amplifiers that read the image: NOUTPUTS when recorded, else 4 (full frame) or 1 (subarray)."""
    noutputs = model.meta.exposure.noutputs
    if noutputs in (1, 4):
        return int(noutputs)
    return 1 if is_subarray(model) else 4


def open_nircam_image(path):
    """Open ``path`` as a jwst ImageModel; refuse non-NIRCam, non-2-D and DQ-less files with InputError.

    A file without its DQ extension cannot be opened as a datamodel (the embedded ASDF
    tree points to it) and the flags are what tells reference, saturated and bad pixels
    apart, so it is refused; ``stripe_model(data, None, ...)`` covers arrays without flags.
    """
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    with fits.open(path) as hdul:
        names = {hdu.name for hdu in hdul}
        instrument = str(hdul[0].header.get("INSTRUME", "")).upper()
        ndim = hdul["SCI"].header.get("NAXIS", 0)
    if instrument != "NIRCAM":
        raise wfutils.InputError(
            f"{path}: instrument is {instrument or 'unknown'}, not NIRCAM; 1/f destriping applies to NIRCam only"
        )
    if ndim != 2:
        raise wfutils.InputError(f"{path}: SCI has {ndim} axes; destriping needs a 2-D image (rate or cal)")
    if "DQ" not in names:
        raise wfutils.InputError(
            f"{path}: no DQ extension; the data-quality flags (reference pixels, saturation, bad pixels) are needed"
        )
    model = datamodels.open(str(path))
    if not isinstance(model, datamodels.ImageModel):
        model.close()
        raise wfutils.InputError(f"{path}: not an ImageModel ({type(model).__name__})")
    return model


def read_flat(path, shape):
    from astropy.io import fits

    wfutils.check_image_file(path, extensions=("SCI",), unit=None)
    flat = fits.getdata(path, "SCI").astype(np.float32)
    if flat.shape != shape:
        raise wfutils.InputError(f"{path}: flat shape {flat.shape} differs from the image {shape}")
    return flat


def write_noise_model(result: StripeModel, path, source, params, cfg_hash=None) -> None:
    """FITS file with the subtracted pattern (STRIPES), the MASK bits and the 1-D profiles."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["METHOD"] = (result.info.get("method", ""), "destriping method")
    primary.header["MASKFRAC"] = (result.info.get("masked_fraction", math.nan), "masked fraction of science pixels")
    primary.header["PARAMS"] = json.dumps(params, default=str)[:68]
    for bit, name in ((1, "unusable"), (2, "source"), (4, "bright")):
        primary.header[f"MASKB{bit}"] = (name, f"MASK bit {bit}")
    hdul = fits.HDUList(
        [
            primary,
            fits.ImageHDU(result.model.astype(np.float32), name="STRIPES"),
            fits.ImageHDU(result.mask.astype(np.uint8), name="MASK"),
            fits.ImageHDU(result.rows.astype(np.float32), name="ROWS"),
            fits.ImageHDU(result.columns.astype(np.float32), name="COLUMNS"),
        ]
    )
    hdul["STRIPES"].header["BUNIT"] = "same as SCI"
    wfutils.write_hdulist(hdul, path, [source], cfg_hash, "destripe")


def qa_figure(data, result: StripeModel, title: str, path) -> None:
    """QA figure in the style of PHANGS-JWST Fig. 4: data, mask, stripe model, corrected.

    Data and corrected image are shown minus their smooth local background (32-pixel blocks)
    and smoothed by a Gaussian of 2 pixels (as CEERS Fig. 4), so that stripes of a few
    0.001 MJy/sr show on top of bright emission; data, model and corrected share one stretch
    (+-4 robust sigma of the displayed data).
    """
    import matplotlib
    from scipy.ndimage import gaussian_filter

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = np.isfinite(data) & (result.mask & MASK_BITS["unusable"] == 0)
    corrected = data - result.model
    background = masks.block_background(corrected, usable & (result.mask == 0))

    def shown_version(image):
        return gaussian_filter(np.where(usable, image - background, 0.0), 2.0)

    data_shown, corrected_shown = shown_version(data), shown_version(corrected)
    _, std = masks.clipped_stats(data_shown[result.mask == 0])
    half = 4.0 * std if np.isfinite(std) and std > 0 else 1.0
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.8), constrained_layout=True)
    panels = [
        ("data - smooth background", data_shown, -half, half, "gray"),
        ("mask (1 unusable, 2 source, 4 bright)", result.mask, 0, 7, "viridis"),
        ("stripe model", result.model, -half, half, "gray"),
        ("corrected - smooth background", corrected_shown, -half, half, "gray"),
    ]
    for ax, (label, image, lo, hi, cmap) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, origin="lower", vmin=lo, vmax=hi, cmap=cmap, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02)
    fig.suptitle(title, fontsize=10)
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def destripe_file(input_path, output_path, params, noise_model_path=None, qa_png=None, flat_path=None, cfg_hash=None):
    """Destripe one exposure file; returns the StripeModel."""
    model = open_nircam_image(input_path)
    with model:
        level = "rate" if model.meta.cal_step.flat_field != "COMPLETE" else "cal"
        flat = read_flat(flat_path, model.data.shape) if flat_path else None
        if level == "rate" and flat is None:
            log.warning("%s: flat field not applied and no --flat given; measuring on unflattened data", input_path)
        data = np.asarray(model.data, dtype=np.float32)
        result = stripe_model(
            data, model.dq, params, subarray=is_subarray(model), flat=flat, n_amplifiers=readout_amplifiers(model)
        )
        nan = ~np.isfinite(data)
        corrected = data - result.model
        corrected[nan] = data[nan]
        model.data = corrected.astype(model.data.dtype)
        wfutils.save_model(model, output_path, [input_path], cfg_hash, "destripe")
    if noise_model_path:
        write_noise_model(result, noise_model_path, input_path, resolve_params(params), cfg_hash)
    if qa_png:
        qa_figure(data, result, f"{Path(input_path).name}: {result.info['method']}", qa_png)
    rms = float(np.std(result.model[result.mask == 0])) if (result.mask == 0).any() else 0.0
    log.info(
        "%s: %s, masked %.1f%%, fallback rows per amp %s, stripe model rms %.4g",
        Path(input_path).name,
        result.info["method"],
        100 * result.info["masked_fraction"],
        result.info.get("fallback_rows", "-"),
        rms,
    )
    return result


# --------------------------------------------------------------------------- entry point
def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="NIRCam exposure (ImageModel FITS: SCI/ERR/DQ, rate or cal)")
    parser.add_argument("output", help="corrected exposure (same file layout)")
    parser.add_argument("--method", choices=METHODS, help="default median_filter")
    parser.add_argument("--noise-model", help="write the subtracted pattern, mask and profiles here (FITS)")
    parser.add_argument("--qa-png", help="write a QA figure (data, mask, model, corrected) here")
    parser.add_argument("--flat", help="flat field (FITS with SCI) to divide a rate image by for the measurement")
    parser.add_argument("--params", default="{}", help="JSON dict of the parameters below (config section)")
    parser.add_argument("--scales", type=wfutils.int_list, help="row median-filter scales, default 3,7,15,31,63,127")
    parser.add_argument(
        "--column-scales", type=wfutils.int_list, help="column median-filter scales, default as --scales"
    )
    parser.add_argument(
        "--fallback-fraction", type=float, help="masked fraction of an amp-row above which the full row is used (0.8)"
    )
    parser.add_argument("--highpass", choices=HIGHPASS, help="median_filter: butterworth (published), local or none")
    parser.add_argument("--local-block", type=int, help="highpass=local: block width, columns (16)")
    parser.add_argument(
        "--local-length", type=int, help="highpass=local: running-median length, rows (65; 0: whole column)"
    )
    parser.add_argument("--butterworth-cutoff", type=float, help="Butterworth cutoff, cycles/pixel (0.005)")
    parser.add_argument("--butterworth-order", type=float, help="Butterworth order (2)")
    parser.add_argument("--clip-sigma", type=float, help="row/column clipping (3; remstriping 2)")
    parser.add_argument("--maxiters", type=int, help="clipping iterations (5)")
    parser.add_argument(
        "--statistic",
        choices=("median", "mean", "mean_median"),
        help="clipped median (published), mean, or (highpass=local) block means then median over blocks",
    )
    parser.add_argument("--mask-nsigma", type=float, help="source mask threshold in clipped sigma (3)")
    parser.add_argument("--mask-npixels", type=int, help="source mask minimum area, pixels (10)")
    parser.add_argument("--mask-dilate", type=int, help="source mask dilation square, pixels (11)")
    parser.add_argument("--tier-nsigma", type=float, help="remstriping tier threshold (3)")
    parser.add_argument("--ring-radius", type=float, help="remstriping ring-median inner radius, pixels (40)")
    parser.add_argument("--ring-width", type=float, help="remstriping ring width, pixels (3)")
    parser.add_argument("--columns", type=parse_bool, help="also remove column stripes (true)")
    wfutils.add_run_options(parser)
    return parser


CLI_KEYS = (
    "method",
    "scales",
    "column_scales",
    "fallback_fraction",
    "highpass",
    "local_block",
    "local_length",
    "butterworth_cutoff",
    "butterworth_order",
    "clip_sigma",
    "maxiters",
    "statistic",
    "mask_nsigma",
    "mask_npixels",
    "mask_dilate",
    "tier_nsigma",
    "ring_radius",
    "ring_width",
    "columns",
)


def params_from_args(args) -> dict:
    """--params JSON overridden by explicit command-line options."""
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise wfutils.InputError(f"--params is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise wfutils.InputError("--params must be a JSON object")
    for key in CLI_KEYS:
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    return resolve_params(params)


def main(argv=None):
    args = build_parser().parse_args(argv)
    wfutils.setup_logging(args.log)
    params = params_from_args(args)
    destripe_file(args.input, args.output, params, args.noise_model, args.qa_png, args.flat, args.config_hash)


if __name__ == "__main__":
    wfutils.run_cli(main)
