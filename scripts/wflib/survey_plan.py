"""Observation plan of the synthetic survey: which exposures exist, where they point.

Pure Python (no jwst import) so that the Snakefile can call it at parse time and
the dry run shows every job of the demo.  The pixels are made by
``simulate_survey.py``; this module only decides the layout, following the JWST
conventions the real data use:

* file names ``jw<ppppp><ooo><vvv>_<gg><s><aa>_<eeeee>_<detector>_cal.fits``;
* NIRCam: two modules, each with four short-wavelength (SW, 0.031"/px) detectors
  in a 2x2 block and one long-wavelength (LW, 0.063"/px) detector, 4 amplifiers
  of 512 columns and a 4-pixel reference border;
* MIRI imager: 1032 x 1024 pixels at 0.11"/px with the Lyot coronagraph and
  4QPM regions on the left side of the detector;
* ``scale`` shrinks every detector (pixel counts, gaps, dithers, tiles) but keeps
  pixel scales, the four amplifiers and the fractional regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NIRCAM_SW_FILTERS = {
    "F070W",
    "F090W",
    "F115W",
    "F140M",
    "F150W",
    "F162M",
    "F164N",
    "F150W2",
    "F182M",
    "F187N",
    "F200W",
    "F210M",
    "F212N",
}
NIRCAM_LW_FILTERS = {
    "F250M",
    "F277W",
    "F300M",
    "F322W2",
    "F323N",
    "F335M",
    "F356W",
    "F360M",
    "F405N",
    "F410M",
    "F430M",
    "F444W",
    "F460M",
    "F466N",
    "F470N",
    "F480M",
}
MIRI_FILTERS = {
    "F560W",
    "F770W",
    "F1000W",
    "F1130W",
    "F1280W",
    "F1500W",
    "F1800W",
    "F2100W",
    "F2550W",
}

# Native detector geometry (full frame), pixel scale in arcsec.
CHANNELS = {
    "NRC_SW": {
        "instrument": "NIRCAM",
        "nx": 2048,
        "ny": 2048,
        "pixscale": 0.031,
        "exp_type": "NRC_IMAGE",
        "v3yangle": -0.56,
        "vparity": -1,
    },
    "NRC_LW": {
        "instrument": "NIRCAM",
        "nx": 2048,
        "ny": 2048,
        "pixscale": 0.063,
        "exp_type": "NRC_IMAGE",
        "v3yangle": -0.56,
        "vparity": -1,
    },
    "MIRI": {
        "instrument": "MIRI",
        "nx": 1032,
        "ny": 1024,
        "pixscale": 0.11,
        "exp_type": "MIR_IMAGE",
        "v3yangle": 4.45,
        "vparity": -1,
    },
}
NIRCAM_V2V3_CENTER = (0.0, -492.0)  # arcsec, centre of the NIRCam field
MIRI_V2V3_CENTER = (-415.0, -400.0)  # arcsec, MIRI imager centre (about 7' away)
NIRCAM_MODULE_SEPARATION = 172.0  # arcsec between module centres (full size)
NIRCAM_SW_GAP = 5.0  # arcsec between SW detectors (full size)
REFERENCE_BORDER = 4  # reference pixels on each edge (NIRCam)
SW_DETECTORS = ["NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4"]
LW_DETECTORS = ["NRCALONG", "NRCBLONG"]
MIRI_DETECTORS = ["MIRIMAGE"]
# Position of each SW detector inside its module's 2x2 block (column, row).
SW_BLOCK_POSITION = {"1": (-1, -1), "2": (-1, 1), "3": (1, -1), "4": (1, 1)}


def channel_of(filter_name: str) -> str:
    """Return NRC_SW, NRC_LW or MIRI for a JWST imaging filter name."""
    if filter_name in NIRCAM_SW_FILTERS:
        return "NRC_SW"
    if filter_name in NIRCAM_LW_FILTERS:
        return "NRC_LW"
    if filter_name in MIRI_FILTERS:
        return "MIRI"
    raise ValueError(f"unknown JWST imaging filter {filter_name!r}")


def instrument_of(filter_name: str) -> str:
    return CHANNELS[channel_of(filter_name)]["instrument"]


def detectors_of(channel: str) -> list[str]:
    return {"NRC_SW": SW_DETECTORS, "NRC_LW": LW_DETECTORS, "MIRI": MIRI_DETECTORS}[channel]


def detector_shape(channel: str, scale: float) -> tuple[int, int]:
    """(ny, nx) of a detector shrunk by ``scale``; NIRCam stays divisible by 4 amplifiers."""
    geo = CHANNELS[channel]
    quantum = 8 if geo["instrument"] == "NIRCAM" else 2
    nx = max(quantum * 4, int(round(geo["nx"] * scale / quantum)) * quantum)
    ny = max(quantum * 4, int(round(geo["ny"] * scale / quantum)) * quantum)
    return ny, nx


def detector_v2v3(detector: str, scale: float) -> tuple[float, float]:
    """V2/V3 (arcsec) of the centre of ``detector`` with the focal plane shrunk by ``scale``."""
    if detector in MIRI_DETECTORS:
        return MIRI_V2V3_CENTER
    v2c, v3c = NIRCAM_V2V3_CENTER
    module_sign = 1.0 if detector[3] == "A" else -1.0
    v2_module = v2c + module_sign * 0.5 * NIRCAM_MODULE_SEPARATION * scale
    if detector.endswith("LONG"):
        return v2_module, v3c
    ny, nx = detector_shape("NRC_SW", scale)
    half_step = 0.5 * (nx * CHANNELS["NRC_SW"]["pixscale"] + NIRCAM_SW_GAP * scale)
    col, row = SW_BLOCK_POSITION[detector[-1]]
    return v2_module + col * half_step, v3c + row * half_step


def instrument_field_size(channel: str, scale: float) -> tuple[float, float]:
    """Approximate (width_v2, height_v3) of the instrument's science field, arcsec."""
    ny, nx = detector_shape(channel, scale)
    if channel == "MIRI":
        return 0.65 * nx * CHANNELS["MIRI"]["pixscale"], ny * CHANNELS["MIRI"]["pixscale"]
    lw_size = detector_shape("NRC_LW", scale)[1] * CHANNELS["NRC_LW"]["pixscale"]
    return NIRCAM_MODULE_SEPARATION * scale + lw_size, lw_size


def miri_science_center_offset(scale: float) -> tuple[float, float]:
    """Offset (V2, V3 arcsec) from the MIRI detector centre to the imager field centre.

    The imager occupies the right ~65% of the columns; pointing at the field centre
    keeps the coronagraph side off the target, as the MIRIM_ILLUM aperture does.
    """
    ny, nx = detector_shape("MIRI", scale)
    return -0.175 * nx * CHANNELS["MIRI"]["pixscale"], 0.0


@dataclass(frozen=True)
class Exposure:
    """One detector image of one exposure, with everything needed to name and place it."""

    name: str  # jw..._<detector> (file stem without the _cal suffix)
    target: str
    role: str  # science | offfield
    instrument: str  # NIRCAM | MIRI
    channel: str  # NRC_SW | NRC_LW | MIRI
    detector: str
    filter: str
    pupil: str
    program: int
    observation: int
    visit: int
    visit_group: int
    sequence: int  # 1 prime, 2 parallel
    activity: int
    exposure_number: int
    dither: int
    n_dithers: int
    tile: int
    start_mjd: float
    exptime: float
    # true pointing: V2/V3 point (arcsec) placed on ra/dec (deg) with V3 position angle pa_v3 (deg)
    point_v2: float
    point_v3: float
    point_ra: float
    point_dec: float
    pa_v3: float

    @property
    def visit_id(self) -> str:
        """Unique id of the visit: all its exposures share one guide star and pointing error."""
        return f"{self.program:05d}{self.observation:03d}{self.visit:03d}"

    def as_dict(self) -> dict:
        return asdict(self)


def exposure_name(program, observation, visit, visit_group, sequence, activity, number, detector):
    """JWST file stem, e.g. jw02107001001_02101_00001_nrca1."""
    return (
        f"jw{program:05d}{observation:03d}{visit:03d}_{visit_group:02d}{sequence:1d}"
        f"{activity:02d}_{number:05d}_{detector.lower()}"
    )


def tile_step(channel: str, scale: float, overlap: float) -> tuple[float, float]:
    """Step (V2, V3 arcsec) between neighbouring tiles of a mosaic.

    NIRCam steps by half the module separation along V2, so that one tile's module A
    fills the gap between the other's two modules and the mosaic is contiguous (as the
    PHANGS-JWST NIRCam mosaics are laid out); MIRI steps by its field minus the overlap.
    """
    width, height = instrument_field_size(channel, scale)
    if channel == "MIRI":
        return width * (1 - overlap), height * (1 - overlap)
    return 0.5 * NIRCAM_MODULE_SEPARATION * scale, height * (1 - overlap)


def tile_offsets(n_x: int, n_y: int, step: tuple[float, float]):
    """Offsets (V2, V3 arcsec) of an n_x x n_y grid of tiles ``step`` apart, centred on zero."""
    return [((i - (n_x - 1) / 2) * step[0], (j - (n_y - 1) / 2) * step[1]) for j in range(n_y) for i in range(n_x)]


def dither_offsets(n: int, channel: str, scale: float):
    """Small dither offsets (V2, V3 arcsec) that cover the NIRCam SW gaps / MIRI columns."""
    base = (NIRCAM_SW_GAP + 1.5) * scale if channel != "MIRI" else 0.08 * instrument_field_size("MIRI", scale)[1]
    pattern = [(0.0, 0.0), (1.0, 0.4), (0.35, 1.05), (1.3, 1.4), (0.6, -0.5), (-0.5, 0.7)]
    if n > len(pattern):
        raise ValueError(f"at most {len(pattern)} dithers are supported, got {n}")
    return [(base * a, base * b) for a, b in pattern[:n]]


def plan_target(target: str, ra: float, dec: float, layout: dict, scale: float, program: int = 9001) -> list[Exposure]:
    """All exposures of one simulated target, in time order.

    ``layout`` comes from the config (``simulation.layouts.<name>``): filters per
    instrument, tiles, dithers, exposure times, position angle, off-field parallels.
    """
    pa = float(layout.get("pa_v3", 0.0))
    exposures: list[Exposure] = []
    mjd = 60000.0 + (program % 97)
    obs = 0
    for instrument_key, instrument in (("nircam", "NIRCAM"), ("miri", "MIRI")):
        spec = layout.get(instrument_key)
        if not spec or not spec.get("filters"):
            continue
        obs += 1
        filters = list(spec["filters"])
        channel0 = "MIRI" if instrument == "MIRI" else "NRC_LW"
        tiles = tile_offsets(
            spec["tiles"][0], spec["tiles"][1], tile_step(channel0, scale, spec.get("tile_overlap", 0.12))
        )
        parallel = layout.get("miri_offfield") if instrument == "NIRCAM" else None
        for tile_index, (tx, ty) in enumerate(tiles, start=1):
            visit = tile_index
            for activity, filt in enumerate(filters, start=1):
                channel = channel_of(filt)
                n_dither = int(spec["dithers"])
                for dither, (dx, dy) in enumerate(dither_offsets(n_dither, channel, scale), start=1):
                    exptime = float(spec["exptime"])
                    if instrument == "MIRI":
                        cx, cy = MIRI_V2V3_CENTER
                        ox, oy = miri_science_center_offset(scale)
                        cx, cy = cx + ox, cy + oy
                    else:
                        cx, cy = NIRCAM_V2V3_CENTER
                    pv2, pv3 = cx - tx - dx, cy - ty - dy
                    common = dict(
                        target=target,
                        program=program,
                        observation=obs,
                        visit=visit,
                        visit_group=2,
                        activity=activity,
                        exposure_number=dither,
                        dither=dither,
                        n_dithers=n_dither,
                        tile=tile_index,
                        start_mjd=round(mjd, 6),
                        exptime=exptime,
                        point_v2=pv2,
                        point_v3=pv3,
                        point_ra=ra,
                        point_dec=dec,
                        pa_v3=pa,
                    )
                    for det in detectors_of(channel):
                        exposures.append(
                            Exposure(
                                name=exposure_name(program, obs, visit, 2, 1, activity, dither, det),
                                role="science",
                                instrument=instrument,
                                channel=channel,
                                detector=det,
                                filter=filt,
                                pupil="CLEAR",
                                sequence=1,
                                **common,
                            )
                        )
                    if parallel and parallel.get("filters"):
                        pfilt = parallel["filters"][(activity - 1) % len(parallel["filters"])]
                        exposures.append(
                            Exposure(
                                name=exposure_name(program, obs, visit, 2, 2, activity, dither, "MIRIMAGE"),
                                role="offfield",
                                instrument="MIRI",
                                channel="MIRI",
                                detector="MIRIMAGE",
                                filter=pfilt,
                                pupil="CLEAR",
                                sequence=2,
                                **common,
                            )
                        )
                    mjd += (exptime + 120.0) / 86400.0
            mjd += 1800.0 / 86400.0
    return exposures


def previous_on_detector(exposures: list[Exposure]) -> dict[str, str | None]:
    """Map each exposure name to the exposure read out just before it on the same detector."""
    last: dict[str, str] = {}
    previous: dict[str, str | None] = {}
    for exp in sorted(exposures, key=lambda e: (e.start_mjd, e.name)):
        previous[exp.name] = last.get(exp.detector)
        last[exp.detector] = exp.name
    return previous
