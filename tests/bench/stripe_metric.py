"""Residual-stripe metric of the 1/f destriping, judged against the simulator's truth.

For one exposure with truth arrays (``<name>_truth.fits``: SKY, BKG, STRIPES, WISP, ...):

* ``R = corrected SCI - (SKY + BKG + WISP + PERSIST + CR + SNOWBALL)`` on the valid pixels
  (finite, not DO_NOT_USE, inside the 4-pixel reference border).  ``R`` still holds the
  pixel noise (and the flat-field error times the signal): a median over the 64 columns of an
  amplifier at ``simulation.scale = 0.125`` has a noise of ~0.3-1 x the injected stripes in a
  galaxy field, so this raw form would mostly measure noise.
* The noise realisation is known exactly in the simulation: ``N = input SCI - truth
  components - STRIPES``.  The metric therefore uses ``E = R - N = corrected - (input -
  STRIPES) = STRIPES - subtracted model``: the stripes left in the image plus any sky the
  correction removed.  A perfect destriper gives E = 0; the noise of the *estimate* (a row
  median of noisy pixels) is part of E, as it should be, while the noise of the *metric* is
  gone.  ``raw=True`` gives the ``R`` form for comparison.
* Profiles: per amplifier, the median over that amplifier's valid columns of each row;
  and the median over valid rows of each column.  A constant (the median of the image) is
  removed first: a level is not a stripe.  With ``highpass`` (rows), each profile has its
  running median over ``highpass`` samples subtracted (the "scales below 128 rows" metric).
* Ratio = RMS(profile of E) / RMS(profile of STRIPES measured the same way); exposures are
  pooled as sqrt(sum of squares / sum of squares).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

NON_STRIPE_TRUTH = ("SKY", "BKG", "WISP", "PERSIST", "CR", "SNOWBALL")
DO_NOT_USE = 1


def valid_pixels(sci: np.ndarray, dq: np.ndarray | None, border: int = 4) -> np.ndarray:
    valid = np.isfinite(sci)
    if dq is not None:
        valid &= (dq & DO_NOT_USE) == 0
    if border:
        region = np.zeros_like(valid)
        region[border:-border, border:-border] = True
        valid &= region
    return valid


def nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row (NaN for empty rows); sort-based, fast on wide rows."""
    s = np.sort(values, axis=1)
    n = np.isfinite(s).sum(axis=1)
    rows = np.arange(s.shape[0])
    lo = s[rows, np.clip((n - 1) // 2, 0, s.shape[1] - 1)]
    hi = s[rows, np.clip(n // 2, 0, s.shape[1] - 1)]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def stripe_profiles(image: np.ndarray, valid: np.ndarray, n_amp: int = 4, highpass: int | None = None) -> np.ndarray:
    """Concatenated per-amplifier row profiles and column profile of ``image`` (valid pixels only)."""
    from scipy.ndimage import median_filter

    values = np.where(valid, image, np.nan).astype(np.float64)
    values -= np.nanmedian(values)
    nx = values.shape[1]
    width = nx // n_amp
    parts = [nanmedian_rows(values[:, a * width : (a + 1) * width]) for a in range(n_amp)]
    parts.append(nanmedian_rows(np.ascontiguousarray(values.T)))
    out = []
    for prof in parts:
        prof = prof[np.isfinite(prof)]
        if highpass and prof.size:
            prof = prof - median_filter(prof, size=int(highpass) | 1, mode="reflect")
        out.append(prof)
    return np.concatenate(out)


def exposure_residual(corrected, original, truth: dict, dq=None, highpass=None, raw=False, n_amp=4):
    """(sum of squares of the residual profile, sum of squares of the injected profile, n samples).

    ``truth`` maps truth extension names to arrays; ``original`` is the input SCI (used for the
    noise-free form).  Pool exposures by adding the sums, then ratio = sqrt(res / inj).
    """
    stripes = truth["STRIPES"]
    valid = valid_pixels(corrected, dq) & valid_pixels(original, dq)
    if raw:
        model = sum(truth[name].astype(np.float64) for name in NON_STRIPE_TRUTH if name in truth)
        residual = corrected - model
    else:
        residual = corrected.astype(np.float64) - (original.astype(np.float64) - stripes)
    res = stripe_profiles(residual, valid, n_amp, highpass)
    inj = stripe_profiles(stripes, valid, n_amp, highpass)
    return float(np.sum(res**2)), float(np.sum(inj**2)), int(res.size)


def pooled_ratio(sums) -> float:
    """sqrt(sum residual^2 / sum injected^2) over a list of ``exposure_residual`` results."""
    res = sum(s[0] for s in sums)
    inj = sum(s[1] for s in sums)
    return float(np.sqrt(res / inj)) if inj > 0 else float("nan")


def flux_sums(change: np.ndarray, valid: np.ndarray, sky: np.ndarray, sample_step: int = 16) -> dict:
    """Sums describing the flux a correction moved on one image without 1/f noise (pool with ``pool_flux``).

    ``change`` = corrected - original (MJy/sr), ``sky`` the astrophysical signal (truth SKY, or
    a real image minus its sky level).  "The galaxy" is the brighter half of the valid pixels
    of ``sky``.  Every ``sample_step``-th |change| is kept for the pooled median.
    """
    change = change[valid].astype(np.float64)
    signal = sky[valid].astype(np.float64)
    galaxy = signal >= np.median(signal)
    return {
        "change": change.sum(),
        "sky": signal.sum(),
        "galaxy_change": change[galaxy].sum(),
        "galaxy_sky": signal[galaxy].sum(),
        "abs_sample": np.abs(change[::sample_step]).astype(np.float32),
    }


def pool_flux(parts: list[dict]) -> dict:
    """Median |change| (image units) and summed change / summed sky, over all and in the galaxy."""
    total = {k: sum(p[k] for p in parts) for k in ("change", "sky", "galaxy_change", "galaxy_sky")}
    return {
        "median_abs_change": float(np.median(np.concatenate([p["abs_sample"] for p in parts]))),
        "total_change_fraction": float(total["change"] / total["sky"]),
        "galaxy_change_fraction": float(total["galaxy_change"] / total["galaxy_sky"]),
    }


def flux_change(change: np.ndarray, valid: np.ndarray, sky: np.ndarray) -> dict:
    """``pool_flux`` of a single image, every pixel in the median."""
    return pool_flux([flux_sums(change, valid, sky, sample_step=1)])


def read_truth(path, names=None) -> dict:
    """Truth arrays of one exposure (float32), all extensions or only ``names``."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {
            hdu.name: hdu.data.astype(np.float32)
            for hdu in hdul[1:]
            if hdu.data is not None and (names is None or hdu.name in names)
        }


# Effects switched off for the destriping benchmark: wisps and persistence are corrected before
# 1/f at cal level (DESIGN.md), the multi-exposure step runs after level matching (no per-exposure
# background offsets) and relative astrometry (no pointing errors).
BENCH_EFFECTS = {
    "wisps": {"enabled": False},
    "persistence": {"enabled": False},
    "background": {"nircam_offset_rms_mjysr": 0.0},
    "pointing_errors": {"enabled": False},
}
TARGETS = {
    "phangs_galaxy": {"target": "BENCHGAL", "ra": 24.17, "dec": 15.78, "program": 9003, "distance_mpc": 9.8},
    "ceers_deep": {"target": "BENCHDEEP", "ra": 214.825, "dec": 52.825, "program": 9004, "distance_mpc": None},
}


def simulate(root, sim_config: dict, layout: str, filters, scale: float, tiles=(1, 1), dithers=None, effects=None):
    """Render the NIRCam exposures of ``filters`` for one layout with the simulator CLI into ``root``.

    ``root/cal/*_cal.fits`` and ``root/truth/exp/*_truth.fits`` are written; a band already
    rendered there (its truth table exists) is reused.  MIRI is left out of the layout.
    """
    import simulate_survey

    root = Path(root)
    cfg = copy.deepcopy(sim_config)
    cfg["scale"] = scale
    spec = cfg["layouts"][layout]
    spec["nircam"]["filters"] = list(filters)
    spec["nircam"]["tiles"] = list(tiles)
    if dithers:
        spec["nircam"]["dithers"] = int(dithers)
    spec.pop("miri", None)
    spec.pop("miri_offfield", None)
    for name, values in (BENCH_EFFECTS if effects is None else effects).items():
        cfg["effects"][name].update(values)
    target = {"layout": layout, **TARGETS[layout]}
    simulate_survey.simulate_target(root, cfg, target, filters, reuse=True)
    return root


def exposures_of(root, band: str) -> list[Path]:
    """Calibrated exposures of ``band`` under ``root/cal`` (file names sorted)."""
    from astropy.io import fits

    return [p for p in sorted(Path(root, "cal").glob("*_cal.fits")) if fits.getheader(p)["FILTER"] == band]


def truth_path(cal_path) -> Path:
    cal_path = Path(cal_path)
    return cal_path.parent.parent / "truth" / "exp" / cal_path.name.replace("_cal.fits", "_truth.fits")
