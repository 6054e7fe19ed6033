"""Ramp-level products of the synthetic survey: ``*_ramp.fits`` RampModels after the jump step.

The synthetic survey starts at cal level; the snowball correction (CEERS, Bagley et al. 2023,
Sect. 3.1.1) needs the ramps. This module renders, for one NIRCam exposure, what Stage 1 holds
after its jump step:

* up-the-ramp data in DN (``nints`` = 1, ``ngroups`` groups of ``nframes`` averaged frames; Poisson
  accumulation of the noiseless count rate, read noise of ``read_noise_dn`` / sqrt(2 nframes) per group);
* snowballs (``per_fullframe_900s``, core radii ``core_radius_px``, wings to ``halo_extent``
  core radii) arriving in one group each: a core that deposits ``core_dn`` (often saturating)
  and a wing whose charge falls off exponentially from the core edge (``halo_dn`` at the edge);
  single-pixel cosmic rays (``cosmic_rays.hit_fraction_per_1000s``);
* GROUPDQ as the jump step leaves it: SATURATED in every group at or above ``saturation_dn``,
  JUMP_DET in the arrival group wherever the jump exceeds ``jump_threshold_sigma`` times the
  noise of a two-group difference -- the core and the inner wing; the outer wing stays
  unflagged and biases the fitted slope, which is what the snowball correction repairs;
* the gain (e-/DN) and read-noise (DN) arrays ramp fitting needs, written as jwst
  ``GainModel`` / ``ReadnoiseModel`` files next to the ramp (a real survey takes them from CRDS);
* truth: the noiseless rate (DN/s), the snowball charge per pixel (DN) and the event list.

``python scripts/simulate_ramps.py --shape 512 512 --seed 1 --out-dir DIR`` writes one blank-sky
ramp (for tests and benchmarks). ``simulate_survey.py exposures --ramps`` renders the survey's
exposures that get the snowball correction through ``simulate_ramp`` (``readout_spanning`` sets
the readout to their exposure time) and writes them with ``write_ramp``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("simulate_ramps")

DEFAULTS = {
    "ngroups": 8,  # MEDIUM8-like: 8 groups of 8 averaged frames and 2 dropped ones (~860 s, CEERS-like)
    "nframes": 8,
    "groupgap": 2,
    "frame_time": 10.737,  # NIRCam full-frame frame time, seconds
    "gain": 2.0,  # e-/DN
    "read_noise_dn": 8.0,  # CDS read noise (DN), as in the CRDS readnoise files; a single read has 1/sqrt(2) of it
    "saturation_dn": 60000.0,
    "jump_threshold_sigma": 25.0,  # effective: flight data show the jump step missing the wings (CEERS Fig. 2)
    "snowballs_per_fullframe_900s": 25.0,
    "core_radius_px": [5.0, 12.0],  # jump-flagged cores of flight snowballs: ~10-25 px across
    "halo_extent": 2.0,
    "core_dn": [20000.0, 80000.0],
    "halo_dn": [100.0, 600.0],
    "cosmic_rays_per_pixel_per_1000s": 0.015,
}


def readout_spanning(exptime: float, params: dict) -> dict:
    """``params`` with ``ngroups`` and ``frame_time`` set so that the ramp spans ``exptime`` seconds.

    As many groups of ``nframes`` + ``groupgap`` nominal frames as fit (at least 2), the frame time
    stretched by the remainder (CEERS Sec. 3.1.1: the ramp of the whole exposure is refitted).
    """
    p = {**DEFAULTS, **params}
    frames = p["nframes"] + p["groupgap"]
    ngroups = max(2, round(exptime / (frames * p["frame_time"])))
    return {**p, "ngroups": ngroups, "frame_time": exptime / (ngroups * frames)}


def snowball_events(shape, params, exptime, rng):
    """(x, y, core radius, core DN, wing DN at the core edge, arrival group) of each snowball."""
    ny, nx = shape
    expected = params["snowballs_per_fullframe_900s"] * ny * nx / 2048**2 * exptime / 900.0
    events = []
    for _ in range(max(int(rng.poisson(expected)), 0)):
        events.append(
            (
                float(rng.uniform(0, nx)),
                float(rng.uniform(0, ny)),
                float(rng.uniform(*params["core_radius_px"])),
                float(rng.uniform(*params["core_dn"])),
                float(rng.uniform(*params["halo_dn"])),
                int(rng.integers(1, params["ngroups"])),
            )
        )
    return events


def simulate_ramp(rate_dn_s: np.ndarray, params: dict, rng, events=None) -> dict:
    """Ramp data (1, ngroups, ny, nx) in DN, GROUPDQ after the jump step, and the truth.

    ``events``: snowballs as returned by ``snowball_events`` (drawn here if None).
    """
    from stdatamodels.jwst.datamodels import dqflags

    p = {**DEFAULTS, **params}
    ng = int(p["ngroups"])
    tg = (p["nframes"] + p["groupgap"]) * p["frame_time"]  # group time
    ny, nx = rate_dn_s.shape
    exptime = ng * tg
    if events is None:
        events = snowball_events((ny, nx), p, exptime, rng)
    # Poisson accumulation (electrons) of the noiseless rate, group by group
    electrons_per_group = np.clip(rate_dn_s, 0, None) * p["gain"] * tg
    accumulated = np.cumsum(rng.poisson(electrons_per_group, size=(ng, ny, nx)), axis=0) / p["gain"]
    # extra charge of snowballs and cosmic rays, from their arrival group on
    extra = np.zeros((ng, ny, nx))
    jump_dn = np.zeros((ng, ny, nx))
    snow_charge = np.zeros((ny, nx))
    yy, xx = np.mgrid[0:ny, 0:nx]
    for x, y, rc, core, halo, g in events:
        r = np.hypot(xx - x, yy - y)
        charge = np.where(r <= rc, core, np.where(r <= p["halo_extent"] * rc, halo * np.exp(-(r - rc) / rc), 0.0))
        jump_dn[g] += charge
        snow_charge += charge
    n_cr = rng.poisson(p["cosmic_rays_per_pixel_per_1000s"] * ny * nx * exptime / 1000.0)
    cr_g = rng.integers(1, ng, n_cr)
    cr_y, cr_x = rng.integers(0, ny, n_cr), rng.integers(0, nx, n_cr)
    np.add.at(jump_dn, (cr_g, cr_y, cr_x), rng.uniform(200.0, 5000.0, n_cr))
    extra = np.cumsum(jump_dn, axis=0)
    signal = accumulated + extra
    read_noise_group = p["read_noise_dn"] / np.sqrt(2 * p["nframes"])  # one read, averaged over nframes
    data = signal + rng.normal(0.0, read_noise_group, size=signal.shape)
    groupdq = np.zeros((ng, ny, nx), np.uint8)
    saturated = signal >= p["saturation_dn"]
    data = np.where(saturated, p["saturation_dn"], data)
    groupdq[saturated] |= dqflags.group["SATURATED"]
    # the jump step: a jump larger than the threshold x the noise of a two-group difference
    diff_noise = np.sqrt(2 * read_noise_group**2 + electrons_per_group / p["gain"] ** 2)
    jumped = (jump_dn > p["jump_threshold_sigma"] * diff_noise[None]) & ~saturated
    groupdq[jumped] |= dqflags.group["JUMP_DET"]
    return {
        "data": data[None].astype(np.float32),
        "groupdq": groupdq[None],
        "gain": np.full((ny, nx), p["gain"], np.float32),
        "readnoise": np.full((ny, nx), p["read_noise_dn"], np.float32),
        "rate": rate_dn_s.astype(np.float32),
        "snowball_dn": snow_charge.astype(np.float32),
        "events": events,
        "params": p,
    }


def ramp_model(ramp: dict, detector: str = "NRCA1", header=None, pixeldq=None):
    """A jwst RampModel of a simulated ramp with the exposure metadata ramp fitting reads.

    ``header``: a datamodel whose metadata (instrument, observation, pointing in ``meta.wcsinfo``)
    the ramp carries, as an uncal file does; ``pixeldq``: the detector's DQ (bad and reference pixels).
    """
    from stdatamodels.jwst import datamodels

    p = ramp["params"]
    model = datamodels.RampModel(
        data=ramp["data"].copy(), groupdq=ramp["groupdq"].copy()
    )  # ramp fitting edits in place
    if header is not None:
        model.update(header)
    model.pixeldq = np.zeros(ramp["data"].shape[2:], np.uint32) if pixeldq is None else pixeldq
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = detector
    model.meta.exposure.type = "NRC_IMAGE"
    model.meta.exposure.readpatt = "MEDIUM8"
    model.meta.exposure.nints = 1
    model.meta.exposure.ngroups = int(p["ngroups"])
    model.meta.exposure.nframes = int(p["nframes"])
    model.meta.exposure.groupgap = int(p["groupgap"])
    model.meta.exposure.frame_time = float(p["frame_time"])
    model.meta.exposure.group_time = float((p["nframes"] + p["groupgap"]) * p["frame_time"])
    model.meta.exposure.drop_frames1 = 0
    model.meta.subarray.name = "FULL"
    model.meta.bunit_data = "DN"
    model.meta.cal_step.jump = "COMPLETE"
    return model


def write_ramp(ramp: dict, out_dir, stem: str, model=None, cfg_hash=None, truth_dir=None, inputs=()) -> dict:
    """``<stem>_ramp.fits`` (``model``, default ``ramp_model(ramp)``), ``<stem>_gain.fits`` and
    ``<stem>_readnoise.fits`` in ``out_dir``; ``<stem>_ramptruth.fits`` in ``truth_dir`` (default ``out_dir``)."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    out = Path(out_dir)
    paths = {k: out / f"{stem}_{k}.fits" for k in ("ramp", "gain", "readnoise")}
    paths["ramptruth"] = Path(truth_dir or out_dir) / f"{stem}_ramptruth.fits"
    model = ramp_model(ramp) if model is None else model
    wfutils.save_model(model, paths["ramp"], inputs, cfg_hash, "simulate_ramps")
    wfutils.save_model(datamodels.GainModel(data=ramp["gain"]), paths["gain"], inputs, cfg_hash, "simulate_ramps")
    wfutils.save_model(
        datamodels.ReadnoiseModel(data=ramp["readnoise"]), paths["readnoise"], inputs, cfg_hash, "simulate_ramps"
    )
    events = np.array([e[:5] + (float(e[5]),) for e in ramp["events"]], float).reshape(-1, 6)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(ramp["rate"], name="RATE"),
            fits.ImageHDU(ramp["snowball_dn"], name="SNOWBALL"),
            fits.BinTableHDU.from_columns(
                [
                    fits.Column(name=n, format="D", array=events[:, i])
                    for i, n in enumerate(("x", "y", "core_radius", "core_dn", "halo_dn", "group"))
                ],  # fmt: skip
                name="EVENTS",
            ),
        ]
    )
    hdul["RATE"].header["BUNIT"] = "DN/s"
    wfutils.write_hdulist(hdul, paths["ramptruth"], inputs, cfg_hash, "simulate_ramps")
    return paths


def blank_sky_ramp(shape, seed: int, params: dict | None = None, rate_dn_s: float = 0.3) -> dict:
    """A ramp of a flat sky (``rate_dn_s``) with snowballs and cosmic rays, for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    return simulate_ramp(np.full(shape, rate_dn_s), params or {}, rng)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[2048, 2048])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.3, help="sky count rate, DN/s")
    parser.add_argument("--stem", default="jw09999001001_02101_00001_nrca1")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    ramp = blank_sky_ramp(tuple(args.shape), args.seed, rate_dn_s=args.rate)
    paths = write_ramp(ramp, args.out_dir, args.stem)
    log.info("ramp %s: %d snowballs, shape %s", paths["ramp"], len(ramp["events"]), ramp["data"].shape)


if __name__ == "__main__":
    wfutils.run_cli(main)
