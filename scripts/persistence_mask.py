"""Flag persistence in NIRCam exposures from the time-ordered exposures of their detector
(CEERS, Bagley et al. 2023, Sects. 3.1.1, 3.1.4 and 4).

Bright sources, or a saturating target observed shortly before, leave fading images at the
same detector pixels in later exposures; they survive the dither combination and can mimic
single-band detections. Two kinds of evidence, both from exposures of the same detector:

1. **Saturation history**: pixels flagged SATURATED (or above ``bright_mjysr``) in an earlier
   exposure whose end precedes this exposure's start by ``age`` <= ``window_s`` are flagged
   when the expected persistence ``saturation_amplitude_mjysr * exp(-age / decay_s)`` is still
   at least ``min_amplitude_mjysr`` (grown by ``saturation_grow_px``).
2. **Fixed pattern** (CEERS Sect. 4: "identify sources that do not move on the detector"):
   each exposure minus the median of itself and its same-filter dithers resampled onto its
   pixels (through the WCS) is an image of what does not move with the sky (sources cancel);
   its per-amplifier row medians are removed (1/f stripes) and it is median-filtered (3x3,
   against cosmic rays) and smoothed (Gaussian
   ``smooth_sigma_px``) into a significance map. Pixels significant (``seed_nsigma``) at the
   SAME pixel in this and another exposure of the detector within ``window_s`` are seeds of
   a fixed pattern (partners must point at least ``min_partner_shift_px`` elsewhere, so that
   imperfectly cancelled sources do not coincide); the footprint is the connected region above ``grow_nsigma`` around at
   least ``min_seed_pixels`` seeds, grown by ``grow_px``. A footprint measured in an exposure
   also flags later exposures within the window while its amplitude, decaying with
   ``decay_s``, stays above ``min_amplitude_mjysr`` (persistence stays at the same pixels and
   fades; this also catches a weak late image whose own significance is lost).

Flagged pixels get DQ PERSISTENCE (and DO_NOT_USE with ``do_not_use``); SCI is not changed.
Exposures of other programs that preceded the survey on the same detector (``--preceding``:
for real data the preceding program's cal files from MAST, which the jwst persistence step also
relies on; for the synthetic survey the previous program's exposure the simulator writes) count
as saturation history only: they are never partners or dithers of the fixed-pattern search (and
need no WCS). Without them a target observed just before the survey leaves persistence that only
the fixed-pattern search can see.

The counts go to the primary header (PERSNPIX, PERSNSAT, PERSNFIX, PERSNPRE) and a QA PNG shows the
significance map with the flags. Exposures of other detectors in ``--history`` and ``--preceding``
are ignored, so one list can serve every exposure of a band.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from wflib import masks, wfutils

log = logging.getLogger("persistence_mask")

DEFAULTS = {
    "window_s": 5000.0,  # earlier exposures whose end is at most this long before our start
    "decay_s": 1500.0,  # e-folding time of persistence
    "saturation_amplitude_mjysr": 0.1,  # persistence of a saturated pixel just after its exposure
    "min_amplitude_mjysr": 0.003,  # flag while the expected persistence is at least this
    "bright_mjysr": None,  # also treat pixels brighter than this (MJy/sr) as saturated (None: DQ only)
    "saturation_grow_px": 2,  # dilation (radius, pixels) of saturated footprints
    "fixed_pattern": True,  # look for sources fixed in detector coordinates
    "smooth_sigma_px": 1.5,
    "seed_nsigma": 5.0,
    "grow_nsigma": 2.5,
    "min_seed_pixels": 5,
    "grow_px": 2,
    "n_amplifiers": 4,
    "do_not_use": True,
    "min_partner_shift_px": 4.0,  # partners must point elsewhere (source residuals then do not coincide)
    "wcs_grid_step_px": 16,
    "snowball_min_jump_px": 20,  # JUMP_DET clusters this large are snowballs ...
    "snowball_wing_factor": 3.0,  # ... whose wings reach this x their radius: no seeds there
}


# --------------------------------------------------------------------------- pure functions
def disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r + 0.5


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, disk(radius)) if radius > 0 and mask.any() else mask.copy()


def expected_amplitude(amplitude: float, age_s: float, decay_s: float) -> float:
    """Persistence left after ``age_s`` seconds by an image of ``amplitude`` (exponential decay)."""
    return amplitude * math.exp(-max(age_s, 0.0) / decay_s)


def saturation_history_mask(start_s: float, history, params: dict, shape) -> np.ndarray:
    """Pixels saturated in earlier exposures whose persistence is still above ``min_amplitude_mjysr``.

    ``history``: (end_s, saturated mask) of earlier exposures of the detector; times in seconds.
    """
    flags = np.zeros(shape, bool)
    for end_s, saturated in history:
        age = start_s - end_s
        if age < 0 or age > params["window_s"]:
            continue
        if (
            expected_amplitude(params["saturation_amplitude_mjysr"], age, params["decay_s"])
            >= params["min_amplitude_mjysr"]
        ):
            flags |= saturated
    return grow(flags, int(params["saturation_grow_px"]))


def remove_row_medians(image: np.ndarray, exclude: np.ndarray, n_amp: int) -> np.ndarray:
    """``image`` minus its per-amplifier row medians (``masks.row_segment_medians``)."""
    return image - masks.row_segment_medians(image, exclude, n_amp)


def excess_significance(image: np.ndarray, aligned_mates: list[np.ndarray], usable: np.ndarray, params: dict):
    """(significance map, excess image in MJy/sr) of what does not move with the sky.

    ``image`` minus the pixel-wise median of itself and its same-filter dithers resampled onto
    its pixels (``aligned_mates``, NaN off their detector), row stripes removed, Gaussian smoothed
    and divided by the robust standard deviation of the smoothed map.
    """
    from astropy.stats import mad_std
    from scipy import ndimage

    levels = [np.nanmedian(a) for a in (image, *aligned_mates)]
    stack = np.stack([a - lev for a, lev in zip((image, *aligned_mates), levels, strict=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(stack, axis=0) if len(aligned_mates) >= 2 else np.nanmin(stack, axis=0)
    excess = np.where(usable & np.isfinite(sky), stack[0] - sky, np.nan)
    # two passes: row medians without the pixels that stand out after the first
    first = remove_row_medians(excess, ~np.isfinite(excess), int(params["n_amplifiers"]))
    spread = mad_std(first, ignore_nan=True)
    excess = remove_row_medians(excess, ~np.isfinite(excess) | (first > 3 * spread), int(params["n_amplifiers"]))
    valid = np.isfinite(excess)
    sigma = params["smooth_sigma_px"]
    # a 3x3 median first: unflagged cosmic rays (single pixels) must not become smoothed blobs
    despiked = ndimage.median_filter(np.where(valid, excess, 0.0), size=3)
    num = ndimage.gaussian_filter(np.where(valid, despiked, 0.0), sigma)
    den = ndimage.gaussian_filter(valid.astype(float), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(den > 0.5, num / den, np.nan)
    scale = mad_std(smooth, ignore_nan=True)
    return np.where(np.isfinite(smooth), smooth / scale, 0.0), excess


def snowball_wings(dq: np.ndarray, params: dict) -> np.ndarray:
    """Pixels within ``snowball_wing_factor`` radii of large JUMP_DET clusters (snowball cores).

    Snowball wings are left unflagged by the jump step (CEERS Sect. 3.1.1) and, at random places
    in each exposure, would otherwise pair up into false fixed patterns.
    """
    from stdatamodels.jwst.datamodels import dqflags

    jumps = (dq & dqflags.pixel["JUMP_DET"]) > 0
    return masks.cluster_wings(jumps, params["snowball_min_jump_px"], params["snowball_wing_factor"])


def fixed_footprint(significance: np.ndarray, partners: list[np.ndarray], params: dict) -> np.ndarray:
    """Connected regions above ``grow_nsigma`` holding enough pixels significant here AND at the same
    pixel of a partner exposure (``seed_nsigma``), grown by ``grow_px``."""
    from scipy import ndimage

    seeds = np.zeros(significance.shape, bool)
    for other in partners:
        seeds |= (significance > params["seed_nsigma"]) & (other > params["seed_nsigma"])
    if not seeds.any():
        return seeds
    labels, n = ndimage.label(significance > params["grow_nsigma"])
    counts = np.bincount(labels[seeds], minlength=n + 1)
    keep = counts >= int(params["min_seed_pixels"])
    keep[0] = False
    return grow(keep[labels], int(params["grow_px"]))


# --------------------------------------------------------------------------- exposures
class Exposure:
    """Header facts of one exposure (cheap: primary header only). ``preceding``: an exposure of another
    program before the survey (saturation history only)."""

    def __init__(self, path, preceding: bool = False):
        from astropy.io import fits

        self.path = str(path)
        try:
            header = fits.getheader(self.path, 0)
        except Exception as exc:  # noqa: BLE001
            raise wfutils.InputError(f"{path}: not a readable FITS file ({exc})") from exc
        missing = [k for k in ("DETECTOR", "FILTER", "EXPSTART", "EXPEND") if k not in header]
        if missing:
            raise wfutils.InputError(f"{path}: primary header lacks {', '.join(missing)} (not a JWST exposure?)")
        self.detector, self.filter = header["DETECTOR"], header["FILTER"]
        self.start_s, self.end_s = header["EXPSTART"] * 86400.0, header["EXPEND"] * 86400.0
        self.name = Path(self.path).name
        self.preceding = bool(preceding)


@functools.lru_cache(maxsize=12)
def load_image(path):
    """(SCI float, DQ, gwcs) of an exposure."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(path) as model:
        if not isinstance(model, datamodels.ImageModel):
            raise wfutils.InputError(f"{path}: expected a 2-D ImageModel (cal), got {type(model).__name__}")
        return np.asarray(model.data, dtype=float), np.asarray(model.dq).copy(), model.meta.wcs


def pixel_map(wcs_from, wcs_to, shape, step: int):
    """Pixel coordinates (y, x) in ``wcs_to``'s detector of each pixel of ``wcs_from``'s, via the sky."""
    from scipy import ndimage

    ny, nx = shape
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1])
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    gx, gy = np.meshgrid(xs, ys)
    ra, dec = wcs_from(gx.astype(float), gy.astype(float), with_bounding_box=False)
    tx, ty = wcs_to.invert(ra, dec, with_bounding_box=False)
    # bilinear interpolation of the coarse maps onto every pixel
    fy = np.interp(np.arange(ny), ys, np.arange(ys.size))
    fx = np.interp(np.arange(nx), xs, np.arange(xs.size))
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    return ndimage.map_coordinates(ty, [yy, xx], order=1), ndimage.map_coordinates(tx, [yy, xx], order=1)


def usable_pixels(dq) -> np.ndarray:
    from stdatamodels.jwst.datamodels import dqflags

    return (dq & dqflags.pixel["DO_NOT_USE"]) == 0


def pointing_shift_px(path_a: str, path_b: str) -> float:
    """Distance (pixels) between where the sky at the centre of ``path_a``'s detector falls on each detector."""
    _, _, wcs_a = load_image(path_a)
    sci, _, wcs_b = load_image(path_b)
    cy, cx = (np.array(sci.shape) - 1) / 2.0
    ra, dec = wcs_a(cx, cy, with_bounding_box=False)
    x, y = wcs_b.invert(ra, dec, with_bounding_box=False)
    return float(np.hypot(x - cx, y - cy))


@functools.lru_cache(maxsize=24)
def significance_of(path, mates: tuple[str, ...], params_json: str):
    """Significance and excess maps of one exposure given its same-filter dithers (cached per run)."""
    from scipy import ndimage

    params = json.loads(params_json)
    sci, dq, wcs = load_image(path)
    usable = usable_pixels(dq) & np.isfinite(sci)
    aligned = []
    for mate in mates:
        msci, mdq, mwcs = load_image(mate)
        y, x = pixel_map(wcs, mwcs, sci.shape, int(params["wcs_grid_step_px"]))
        values = np.where(usable_pixels(mdq) & np.isfinite(msci), msci, np.nan)
        aligned.append(ndimage.map_coordinates(values, [y, x], order=1, cval=np.nan))
    significance, excess = excess_significance(sci, aligned, usable, params)
    significance[snowball_wings(dq, params)] = 0.0
    return significance, excess


def persistence_flags(target: Exposure, pool: list[Exposure], params: dict) -> dict:
    """Persistence flags of ``target`` from the exposures of its detector in ``pool``."""
    from stdatamodels.jwst.datamodels import dqflags

    same = sorted({e.path: e for e in pool if e.detector == target.detector}.values(), key=lambda e: e.start_s)
    if target.path not in {e.path for e in same}:
        same = sorted([*same, target], key=lambda e: e.start_s)
    window = params["window_s"]
    n_preceding = sum(e.preceding and 0 <= target.start_s - e.end_s <= window for e in same)
    sci, dq, _ = load_image(target.path)
    shape = sci.shape
    sat_bit = dqflags.pixel["SATURATED"]

    history = []
    for e in same:
        if e.end_s <= target.start_s and target.start_s - e.end_s <= window:
            esci, edq, _ = load_image(e.path)
            if esci.shape != shape:  # e.g. a preceding program's subarray exposure
                log.warning("%s: shape %s is not %s's %s: not used as history", e.name, esci.shape, target.name, shape)
                continue
            saturated = (edq & sat_bit) > 0
            if params["bright_mjysr"] is not None:
                saturated |= np.nan_to_num(esci) > params["bright_mjysr"]
            history.append((e.end_s, saturated))
    sat_flags = saturation_history_mask(target.start_s, history, params, shape)

    fixed_flags = np.zeros(shape, bool)
    significance = np.zeros(shape)
    if params["fixed_pattern"]:
        same = [e for e in same if not e.preceding]  # no WCS needed, not a dither of ours
        params_json = json.dumps(params, sort_keys=True)

        def mates_of(e):
            return tuple(m.path for m in same if m.filter == e.filter and m.path != e.path)

        near = [e for e in same if abs(e.start_s - target.start_s) <= window + e.end_s - e.start_s]
        maps = {e.path: significance_of(e.path, mates_of(e), params_json) for e in near if mates_of(e)}
        if target.path in maps:
            significance = maps[target.path][0]
        for e in near:
            if e.path not in maps or e.start_s > target.start_s:
                continue
            partners = [
                maps[o.path][0] for o in near
                if o.path != e.path and o.path in maps and abs(o.start_s - e.start_s) <= window + o.end_s - o.start_s
                and pointing_shift_px(e.path, o.path) >= params["min_partner_shift_px"]
            ]  # fmt: skip
            footprint = fixed_footprint(maps[e.path][0], partners, params)
            if not footprint.any():
                continue
            if e.path == target.path:
                fixed_flags |= footprint
                continue
            # a footprint seen earlier flags this exposure while its decayed amplitude is still large
            from scipy import ndimage

            labels, n = ndimage.label(footprint)
            amplitudes = ndimage.median(np.nan_to_num(maps[e.path][1]), labels, np.arange(1, n + 1))
            age = target.start_s - e.end_s
            for k, amp in enumerate(np.atleast_1d(amplitudes), start=1):
                if expected_amplitude(float(amp), age, params["decay_s"]) >= params["min_amplitude_mjysr"]:
                    fixed_flags |= labels == k
        if not maps:
            log.info("%s: no same-filter dithers on %s: fixed-pattern search skipped", target.name, target.detector)
    return {
        "flags": sat_flags | fixed_flags,
        "saturation": sat_flags,
        "fixed": fixed_flags,
        "significance": significance,
        "n_history": len(history),
        "n_preceding": n_preceding,
    }


def qa_png(result: dict, title: str, path) -> None:
    """Significance map with the flagged pixels outlined (saturation history red, fixed pattern cyan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.imshow(result["significance"], origin="lower", cmap="gray", vmin=-3, vmax=10)
    for key, color in (("saturation", "red"), ("fixed", "cyan")):
        if result[key].any():
            ax.contour(result[key].astype(float), levels=[0.5], colors=color, linewidths=0.7)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("x (pixels); red: saturated earlier, cyan: fixed pattern", fontsize=7)
    with wfutils.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="calibrated NIRCam exposure (ImageModel FITS)")
    parser.add_argument("output", help="exposure with persistence flagged in DQ")
    parser.add_argument("--history", nargs="*", default=[], help="other exposures (any detector, any time)")
    parser.add_argument(
        "--preceding", nargs="*", default=[],
        help="exposures of other programs before the survey (any detector): saturation history only",
    )  # fmt: skip
    parser.add_argument("--qa-png", help="QA image of the significance map and flags")
    wfutils.add_run_options(parser, params_help="JSON overriding " + ", ".join(DEFAULTS))
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    wfutils.check_image_file(args.input)
    from stdatamodels.jwst import datamodels
    from stdatamodels.jwst.datamodels import dqflags

    params = wfutils.parse_params(args.params, DEFAULTS)
    target = Exposure(args.input)
    pool = [Exposure(p) for p in args.history if Path(p).name != target.name]
    pool += [Exposure(p, preceding=True) for p in args.preceding]
    result = persistence_flags(target, pool, params)
    flags = result["flags"]
    bits = dqflags.pixel["PERSISTENCE"] | (dqflags.pixel["DO_NOT_USE"] if params["do_not_use"] else 0)
    with datamodels.open(args.input) as model:
        model.dq = np.where(flags, model.dq | bits, model.dq).astype(np.uint32)
        cards = [
            ("PERSNPIX", int(flags.sum()), "pixels flagged as persistence"),
            ("PERSNSAT", int(result["saturation"].sum()), "... saturated in an earlier exposure"),
            ("PERSNFIX", int(result["fixed"].sum()), "... fixed pattern in detector coordinates"),
            ("PERSNPRE", int(result["n_preceding"]), "preceding-program exposures in the window"),
        ]
        inputs = [args.input, *[e.path for e in pool if e.detector == target.detector]]
        wfutils.save_model(model, args.output, inputs, args.config_hash, "persistence_mask", cards)
    log.info(
        "%s (%s): %d pixels flagged as persistence (%d saturated in %d earlier exposures, %d of them of a"
        " preceding program, %d fixed pattern)",
        target.name, target.detector, flags.sum(), result["saturation"].sum(), result["n_history"],
        result["n_preceding"], result["fixed"].sum(),
    )  # fmt: skip
    if args.qa_png:
        qa_png(result, f"{target.name}: {int(flags.sum())} persistence pixels", args.qa_png)


if __name__ == "__main__":
    wfutils.run_cli(main)
