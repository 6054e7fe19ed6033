# Sheets, exposure tables, input functions and wildcard constraints shared by all rules.

import json
import os
import shlex
import re
import sys
from functools import lru_cache
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

SCRIPTS = Path(workflow.basedir) / "scripts"
sys.path.insert(0, str(SCRIPTS))
from wflib import survey_plan  # noqa: E402
import mosaic_tiles  # noqa: E402
from wflib import wfutils  # noqa: E402
from wflib import exposure_table  # noqa: E402

validate(config, schema="../config/schema/config.schema.yaml")

def repo_path(path):
    """A config path: absolute, relative to the working directory, or else to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return Path(workflow.basedir) / path


TARGETS_SHEET = exposure_table.read_targets_sheet(repo_path(config["targets_sheet"]))
validate(TARGETS_SHEET, schema="../config/schema/targets.schema.yaml")
SELECTED = exposure_table.select_targets(TARGETS_SHEET, config["targets"])
# Provenance: every script records this hash (config minus the target selection) in its outputs.
# It travels as an environment variable, not a rule parameter, so that editing one setting
# does not make Snakemake rerun every job.
CONFIG_HASH = wfutils.config_hash({k: v for k, v in config.items() if k != "targets"})
os.environ[wfutils.CONFIG_HASH_ENV] = CONFIG_HASH
SKIPPED = []  # input files left out by validation.on_bad_exposure: skip (rules/validation.smk)
EXPOSURES = exposure_table.build_exposure_table(SELECTED, config, skipped=SKIPPED)


wildcard_constraints:
    target="|".join(map(re.escape, TARGETS_SHEET.index)),
    filter=r"F\d{3,4}[WMN]2?",
    name=r"jw\d{11}_\d{5}_\d{5}_[a-z0-9]+(_lyot)?",


# ----------------------------------------------------------------------- targets and exposures
def target_row(target):
    return TARGETS_SHEET.loc[target]


def is_simulated(target):
    return target_row(target)["input"] == "simulate"


def exposures_of(target, filter=None, role="science"):
    """Exposure rows of a target (optionally one filter), in time order."""
    rows = EXPOSURES[EXPOSURES["target"] == target]
    if filter is not None:
        rows = rows[rows["filter"] == filter]
    if role is not None:
        rows = rows[rows["role"] == role]
    return rows.sort_values(["start_mjd", "name"])


def filters_of(target):
    """Science filters of a target, NIRCam first, then MIRI, by wavelength."""
    return list(_filters_of(target))


@lru_cache(maxsize=None)
def _filters_of(target):
    rows = exposures_of(target)
    return tuple(sorted(rows["filter"].unique(), key=lambda f: (survey_plan.instrument_of(f) == "MIRI", int(f[1:-1]))))


def simulated_filters(target):
    """Every filter the simulator renders for a target, including off-field parallels."""
    return sorted(exposures_of(target, role=None)["filter"].unique())


# ----------------------------------------------------------------------- the correction chain
# Corrections between Stage 2 and the mosaic, in the order of the papers (DESIGN.md),
# with their unit of work: "exposure" (a job per exposure), "detector" (a job per target,
# filter and detector: wisp templates), "band" (a job per target and filter) or "instrument"
# (a job per target and instrument, all its bands: astrometry, whose solution one reference
# band measures for every band; persistence, which follows a detector through every filter).
# An exposure skips a step when `corrections.<step>` disables it or does not list its
# instrument (or, where the step has them, its detector and filter): the input functions pass
# the previous file on, no copy rule is needed. From `lyot_split` on, a MIRI exposure travels
# as two images, `<name>` (imager part) and `<name>_lyot` (coronagraph part), level-matched
# separately and drizzled together.
CORRECTION_STEPS = [
    ("wisp_subtract", "detector"),
    ("persistence_mask", "instrument"),
    ("destripe", "exposure"),
    ("miri_background", "band"),
    ("align_relative", "instrument"),
    ("align_absolute", "instrument"),
    ("lyot_split", "exposure"),
    ("level_match", "band"),
    ("destripe_multitile", "band"),
    ("noise_model", "exposure"),
]
LYOT_SUFFIX = "_lyot"
INSTRUMENTS = ("NIRCAM", "MIRI")


def step_config(step):
    return config.get("corrections", {}).get(step, {})


def step_applies(step, row):
    """Whether correction ``step`` runs on the exposure ``row``: corrections.<step>.enabled and
    instruments (and its detectors and filters lists where it has them), then the ``enabled`` of
    any matching ``overrides`` entry (the last one wins)."""
    cfg = step_config(step)
    touched = row["instrument"] in cfg.get("instruments", []) and all(
        row[key[:-1]] in cfg[key] for key in ("detectors", "filters") if key in cfg
    )
    enabled = bool(cfg.get("enabled", False)) and touched
    for override in cfg.get("overrides", []):
        if "enabled" in override and override_matches(
            override, row["target"], row["instrument"], row["filter"], row["detector"]
        ):
            enabled = bool(override["enabled"]) and touched
    return enabled


def deep_merge(base, override):
    """``base`` updated by ``override``, nested dictionaries merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def override_matches(when, target, instrument=None, filter=None, detector=None):
    """Whether an override's selectors (targets, layouts, instruments, filters, detectors) all accept
    this job (a `detectors` selector only matches jobs of one detector)."""
    values = {
        "targets": target,
        "layouts": target_row(target)["layout"],
        "instruments": instrument,
        "filters": filter,
        "detectors": detector,
    }
    return all(values[key] in allowed for key, allowed in when.items() if key in values)


def step_params(step, target=None, instrument=None, filter=None, detector=None):
    """JSON parameters of a step for one job: ``params`` updated by every matching ``overrides`` entry, in order."""
    cfg = step_config(step)
    params = cfg.get("params", {})
    if target is not None:
        for override in cfg.get("overrides", []):
            if "params" in override and override_matches(override, target, instrument, filter, detector):
                params = deep_merge(params, override["params"])
    return json_param(params)


def step_path(step, target, name):
    return f"results/{target}/{step}/{name}_cal.fits"


def base_name(name):
    """Exposure name of an image (a Lyot part carries the exposure name plus a suffix)."""
    return name[: -len(LYOT_SUFFIX)] if name.endswith(LYOT_SUFFIX) else name


def steps_before(upto):
    names = [step for step, _ in CORRECTION_STEPS]
    return names if upto is None else names[: names.index(upto)]


def cal_path(target, name):
    """Stage-2 calibrated exposure as the corrections read it: validated (rules/validation.smk)."""
    return validated_path(target, name) if VALIDATION else input_cal_path(target, name)


def input_cal_path(target, name):
    """Stage-2 calibrated exposure: simulated (rendered, or from a simulated ramp), given by the user,
    or made by Stage 1/2."""
    row = target_row(target)
    if row["input"] == "simulate":
        if has_ramp(target, name):
            return simulated_stage2_path(target, name)
        return f"results/{target}/simulated/cal/{name}_cal.fits"
    if exposure_table.input_level(row, config) == "cal":
        return str(Path(row["input"]) / f"{name}_cal.fits")
    return f"results/{target}/stage2/{name}_cal.fits"


# The functions below depend only on the config and the exposure table, both fixed once the
# workflow is parsed; they are called for every job of every step, hence the caches.
@lru_cache(maxsize=None)
def exposure_path(target, name, upto=None):
    """Path of an image after the last applicable step before ``upto`` (all steps if None)."""
    row = EXPOSURES.loc[(target, base_name(name))]
    lyot_part = name != base_name(name)
    path = cal_path(target, name)
    for step in steps_before(upto):
        if not step_applies(step, row):
            continue
        if step == "lyot_split":
            lyot_part = False  # the coronagraph part exists from here on
        if not lyot_part:
            path = step_path(step, target, name)
    return path


def image_names(target, filter, upto=None):
    """Images of a band entering step ``upto`` (the mosaic if None): exposures plus Lyot parts."""
    return list(_image_names(target, filter, upto))


@lru_cache(maxsize=None)
def _image_names(target, filter, upto):
    rows = exposures_of(target, filter)
    names = list(rows["name"])
    if "lyot_split" in steps_before(upto):
        names += [n + LYOT_SUFFIX for n, (_, r) in zip(rows["name"], rows.iterrows()) if step_applies("lyot_split", r)]
    return tuple(sorted(names))


def step_input(step):
    """Input function of a per-exposure step: the exposure as the previous step left it."""
    return lambda wildcards: exposure_path(wildcards.target, wildcards.name, upto=step)


def band_step_io(step, target, filter):
    """(inputs, outputs) of a per-band step for one target and filter; empty if it does not apply."""
    inputs, outputs = _band_step_io(step, target, filter)
    return list(inputs), list(outputs)


@lru_cache(maxsize=None)
def _band_step_io(step, target, filter):
    names = [n for n in _image_names(target, filter, step) if step_applies(step, EXPOSURES.loc[(target, base_name(n))])]
    return tuple(exposure_path(target, n, upto=step) for n in names), tuple(step_path(step, target, n) for n in names)


def instrument_filters(target, instrument):
    return [f for f in filters_of(target) if survey_plan.instrument_of(f) == instrument]


def instrument_step_io(step, target, instrument, filters=None):
    """(inputs, outputs) of a per-instrument step over all bands (or ``filters``) of an instrument."""
    inputs, outputs = [], []
    for filt in filters or instrument_filters(target, instrument):
        band_in, band_out = band_step_io(step, target, filt)
        inputs += band_in
        outputs += band_out
    return inputs, outputs


def exposure_side_outputs(step, outputs, fmt):
    """Extra per-exposure files of a step (models, QA, Lyot parts), ``fmt`` of ``{name}`` under results/<t>/<step>/."""
    return [str(Path(p).parent / fmt.format(name=Path(p).name.removesuffix("_cal.fits"))) for p in outputs]


def offfield_exposures(target, filter):
    """Off-field (background) exposures of a band, as calibrated by Stage 2."""
    return [cal_path(target, n) for n in exposures_of(target, filter, role="offfield")["name"]]


def rule_name(step, target, filter):
    """Name of a per-band (or per-instrument) rule, e.g. level_match_NGC0628_F770W."""
    return f"{step}_{target}_{filter}".replace("-", "_")


def band_mem_mb(wildcards, input, attempt):
    """Band-level corrections reproject pairs of images: a few times the largest inputs, at least 2 GB."""
    return int(max(2000, 4 * input.size_mb) * attempt)


def streaming_mem_mb(wildcards, input, attempt):
    """Steps that hold one exposure at a time plus catalogues: a little more than the largest input."""
    largest = max((os.path.getsize(f) for f in input if os.path.exists(f)), default=0) / 1e6
    return int(max(2000, 2000 + 8 * largest) * attempt)


# ----------------------------------------------------------------------- astrometry (rules/astrometry.smk)
def band_wavelength(filter):
    return int(filter[1:-1]) / (100.0 if survey_plan.instrument_of(filter) == "NIRCAM" else 10.0)


def astrometry_reference_band(step, target, instrument):
    """Band whose sources measure an instrument's astrometry: the configured one or, if the target
    lacks it, the observed band nearest in wavelength (announced once)."""
    band = json.loads(step_params(step, target, instrument))["reference_band"][instrument]
    observed = instrument_filters(target, instrument)
    if band in observed:
        return band
    nearest = min(observed, key=lambda f: abs(band_wavelength(f) - band_wavelength(band)))
    key = (step, target, instrument)
    if key not in ANNOUNCED_FALLBACKS:
        ANNOUNCED_FALLBACKS.add(key)
        print(
            f"corrections.{step}: {instrument} reference band {band} was not observed for {target}; using {nearest} "
            f"(set params.reference_band.{instrument} in an `overrides` entry to choose)",
            file=sys.stderr,
        )
    return nearest


ANNOUNCED_FALLBACKS = set()


def absolute_mapping(target, instrument):
    """{band: reference band} of an instrument: config align_mapping, else the instrument's reference band."""
    params = json.loads(step_params("align_absolute", target, instrument))
    default = astrometry_reference_band("align_absolute", target, instrument)
    return {f: params.get("align_mapping", {}).get(f, default) for f in instrument_filters(target, instrument)}


def absolute_catalog(target, instrument, band):
    return f"results/{target}/align_absolute/{instrument}_{band}_catalog.ecsv"


def anchor_instrument(step, target, instrument):
    """Instrument whose aligned catalogue anchors this one (config `anchor_on`), if the target has it."""
    other = step_config(step).get("anchor_on", {}).get(instrument)
    if other and instrument_filters(target, other) and step_config("align_absolute").get("enabled"):
        return other
    return None


def anchor_catalog(target, instrument):
    """Aligned catalogue of the anchoring instrument (e.g. NIRCam's for MIRI), or None."""
    other = anchor_instrument("align_relative", target, instrument)
    if other is None:
        return None
    band = astrometry_reference_band("align_absolute", target, other)
    return absolute_catalog(target, other, band)


def absolute_refcat(target, instrument):
    """Catalogue an instrument's absolute astrometry is fitted to: the anchoring instrument's, else external."""
    other = anchor_instrument("align_absolute", target, instrument)
    if other is not None:
        return absolute_catalog(target, other, astrometry_reference_band("align_absolute", target, other))
    return step_config("align_absolute")["refcat"].format(target=target)


def final_exposures(target, filter):
    return [exposure_path(target, n) for n in image_names(target, filter)]


def final_exposures_all_filters(wildcards):
    return [p for f in filters_of(wildcards.target) for p in final_exposures(wildcards.target, f)]


# ----------------------------------------------------------------------- products
def mosaic_path(target, filter):
    return f"results/{target}/mosaic/{target}_{filter}_i2d.fits"


def truth_mosaic_path(target, filter):
    return f"results/{target}/truth/mosaics/{target}_{filter}_truth.fits"


def anchored_instruments(target):
    """Instruments of a target whose reference band was observed (sky anchoring applies)."""
    if not config["anchoring"].get("enabled", False):
        return []
    bands = set(filters_of(target))
    return [i for i, band in config["anchoring"]["reference_band"].items() if band in bands]


def anchored_filters(target):
    instruments = anchored_instruments(target)
    return [f for f in filters_of(target) if survey_plan.instrument_of(f) in instruments]


def anchored_path(target, filter):
    return f"results/{target}/anchored/{target}_{filter}_i2d.fits"


def final_mosaic(target, filter):
    """The mosaic a user downloads: anchored to zero sky when anchoring applies."""
    return anchored_path(target, filter) if filter in anchored_filters(target) else mosaic_path(target, filter)


def anchoring_references(target):
    """--reference arguments: BAND=PATH for each anchored instrument."""
    cfg = config["anchoring"]
    return {cfg["reference_band"][i]: cfg["references"][i].format(target=target) for i in anchored_instruments(target)}


def anchoring_excluded(target):
    """Exposures whose footprints the anchoring fits leave out: the MIRI coronagraph (Lyot) parts."""
    if not config["anchoring"].get("exclude_coronagraph", True):
        return []
    return [
        crf_path(target, f, n)
        for f in anchored_filters(target)
        for n in image_names(target, f)
        if n.endswith(LYOT_SUFFIX)
    ]


def all_products(wildcards=None):
    """Final products: mosaics per target and filter, truth for simulated targets, catalogs for galaxies."""
    products = []
    for target in SELECTED.index:
        for filt in filters_of(target):
            products.append(final_mosaic(target, filt))
            if is_simulated(target):
                products.append(truth_mosaic_path(target, filt))
        if is_simulated(target):
            products.append(f"results/{target}/truth/{target}_exposures_truth.ecsv")
        products += psf_products(target)  # PSF-matched images, kernels' tables (rules/psf.smk)
        products += finishing_products(target)  # release directory (rules/finishing.smk)
        products += catalog_products(target)  # rules/catalogs.smk
        if VALIDATION:
            products.append(validation_report_path(target))
    return products


def script_path(name):
    return str(SCRIPTS / name)


def json_param(value):
    """Compact JSON for passing structured config to a script (quote with :q in shell)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------- the synthetic survey (rules/simulate.smk)
def survey_sim_param():
    """The ``simulation`` config the JWST survey simulator reads: all but the HST-like images
    (``hst``, rules/catalogs.smk), so that changing those does not re-render the survey."""
    return json_param({key: value for key, value in config["simulation"].items() if key != "hst"})


def sim_target_json(target):
    row = target_row(target)
    distance = row.get("distance_mpc")
    return json_param(
        {
            "target": target,
            "ra": float(row["ra"]),
            "dec": float(row["dec"]),
            "layout": row["layout"],
            "program": int(row["program"]),
            "distance_mpc": None if pd.isna(distance) else float(distance),
        }
    )


def widefield_names():
    return [w["name"].lower() for w in config["simulation"]["references"]["widefield"]]


def simulated_band_outputs(target, filt):
    """Files of a simulated band: cal files, or ramps (with gain and read noise) where the snowball
    correction applies; per-exposure truth (and ramp truth); wisp templates."""
    names = list(exposures_of(target, filt, role=None)["name"])
    ramps = ramp_names(target, filt)
    wisp_cfg = config["simulation"]["effects"]["wisps"]
    detectors = set(exposures_of(target, filt, role=None)["detector"])
    wisp_detectors = sorted(detectors & set(wisp_cfg["detectors"])) if filt in wisp_cfg["amplitude_mjysr"] else []
    return {
        "cal": [f"results/{target}/simulated/cal/{n}_cal.fits" for n in names if n not in ramps],
        "ramps": [ramp_path(target, n, kind) for n in ramps for kind in ("ramp", "gain", "readnoise")],
        "truth": [f"results/{target}/truth/exposures/{n}_truth.fits" for n in names]
        + [f"results/{target}/truth/exposures/{n}_ramptruth.fits" for n in ramps],
        "wisps": [f"results/{target}/references/wisps/wisp_{d.lower()}_{filt.lower()}.fits" for d in wisp_detectors],
    }


# ----------------------------------------------------------------------- preceding-program exposures
# Exposures of other programs read out on a detector just before the survey: persistence history
# only (scripts/persistence_mask.py --preceding). They are not in the exposure table, so nothing but
# the persistence jobs reads them (no calibration, no alignment, no mosaic).
def preceding_config():
    return step_config("persistence_mask").get("preceding", {})


def simulated_history_path(target, detector):
    """The simulated previous program's exposure on ``detector`` (simulate_survey.py history_file_name)."""
    return f"results/{target}/simulated/history/preceding_{detector.lower()}_cal.fits"


def simulated_history_detectors(target):
    """NIRCam detectors of a simulated target whose previous-program exposure is written and used:
    corrections.persistence_mask.preceding.simulated, and simulation.effects.persistence with blobs."""
    effect = config["simulation"]["effects"]["persistence"]
    if not (
        is_simulated(target)
        and preceding_config().get("simulated", False)
        and effect.get("enabled", False)
        and effect.get("previous_program_blobs", 0) > 0
    ):
        return []
    rows = exposures_of(target, role=None)
    return sorted(rows[rows["instrument"] == "NIRCAM"]["detector"].unique())


@lru_cache(maxsize=None)
def preceding_dir_files(directory):
    """(path, DETECTOR) of the ``*_cal.fits`` files in a directory of preceding-program exposures."""
    from astropy.io import fits

    return tuple(
        (str(p), str(fits.getheader(p, 0).get("DETECTOR", "")).strip()) for p in sorted(Path(directory).glob("*_cal.fits"))
    )


def preceding_exposures(target, detector):
    """Preceding-program exposures of ``detector`` for the persistence job of ``target``: the simulated
    one, and those in corrections.persistence_mask.preceding.dirs (``{target}`` filled in; a directory
    named with ``{target}`` may be missing for some targets, one without must exist)."""
    files = [simulated_history_path(target, detector)] if detector in simulated_history_detectors(target) else []
    for fmt in preceding_config().get("dirs", []):
        directory = fmt.format(target=target)
        if not Path(directory).is_dir():
            if "{target}" in fmt:
                continue
            raise exposure_table.SheetError(
                f"corrections.persistence_mask.preceding.dirs: {directory} is not a directory"
            )
        files += [p for p, det in preceding_dir_files(directory) if det == detector]
    return files


# ----------------------------------------------------------------------- simulated ramps (rules/stage12.smk)
def has_ramp(target, name):
    """Whether a simulated exposure is rendered as a ramp after the jump step: the snowball correction
    (CEERS Sec. 3.1.1, corrections.snowball_flag) applies to it, and it works on ramps."""
    return is_simulated(target) and step_applies("snowball_flag", EXPOSURES.loc[(target, name)])


def ramp_names(target, filter):
    """Exposures of a band (science and off-field) rendered as ramps."""
    return [n for n in exposures_of(target, filter, role=None)["name"] if has_ramp(target, n)]


def ramp_path(target, name, kind="ramp"):
    """A simulated ramp (``kind`` ramp) or its gain or read-noise reference (``gain``, ``readnoise``)."""
    return f"results/{target}/simulated/ramps/{name}_{kind}.fits"


def simulated_ramp_args(target, filter):
    """Options of ``simulate_survey.py exposures`` rendering the ramps of a band (none: empty)."""
    names = ramp_names(target, filter)
    return f"--ramp-dir {os.path.dirname(ramp_path(target, names[0]))} --ramps {' '.join(names)}" if names else ""


def snowball_rate_path(target, name):
    return f"results/{target}/snowball_flag/{name}_rate.fits"


def simulated_stage2_path(target, name):
    return f"results/{target}/simulated_stage2/{name}_cal.fits"


# ----------------------------------------------------------------------- early validation (rules/validation.smk)
VALIDATION = config["validation"]["enabled"]


def validation_filters(target):
    """Every filter of a target's exposures, science and off-field."""
    return sorted(exposures_of(target, role=None)["filter"].unique())


def validated_path(target, name):
    return f"results/{target}/validated/{name}_cal.fits"


def validation_band_report(target, filter):
    return f"results/{target}/validation/{filter}_validated.tsv"


def validation_report_path(target):
    return f"results/{target}/validation/{target}_validation.tsv"


def skipped_inputs(target):
    """Input files of ``target`` left out at parse time (validation.on_bad_exposure: skip)."""
    return json_param([{"path": s["path"], "faults": s["faults"]} for s in SKIPPED if s["target"] == target])


# ----------------------------------------------------------------------- real data, Stage 1 and 2 (rules/stage12.smk)
def stage12_exposure(target, name, levels):
    """EXPOSURES row of a real target's exposure whose input level is one of ``levels``; a clear error otherwise."""
    row = target_row(target)
    if row["input"] == "simulate":
        raise ValueError(
            f"target {target} is simulated (its exposures are rendered at cal level): "
            f"Stage 1/2 do not apply to {name}"
        )
    level = exposure_table.input_level(row, config)
    if level not in levels:
        raise ValueError(
            f"target {target} starts at input level {level!r}: {name} is not processed by this stage "
            f"(it applies to input levels {', '.join(levels)})"
        )
    if (target, name) not in EXPOSURES.index:
        raise ValueError(
            f"exposure {name} of target {target} is not in the exposure table "
            f"(no matching file in {row['input']}, or the target is not selected)"
        )
    return EXPOSURES.loc[(target, name)]


def real_input_file(target, name, level):
    return str(Path(target_row(target)["input"]) / f"{name}{exposure_table.LEVEL_SUFFIX[level]}")


def stage1_rate_path(target, name):
    return f"results/{target}/stage1/{name}_rate.fits"


def real_snowball(target, name):
    """Whether a real exposure starting at uncal has its snowballs flagged (CEERS Sec. 3.1.1,
    corrections.snowball_flag): its Stage 1 stops after the jump step (rule stage1_jump)."""
    return (
        not is_simulated(target)
        and exposure_table.input_level(target_row(target), config) == "uncal"
        and step_applies("snowball_flag", EXPOSURES.loc[(target, name)])
    )


def real_snowball_rate_path(target, name):
    return f"results/{target}/stage1_snowball/{name}_rate.fits"


def persistence_path(target, name):
    stage = "stage1_jump" if real_snowball(target, name) else "stage1"
    return f"results/{target}/{stage}/{name}_persistence.asdf"


def rate_path(target, name):
    """Rate image of an exposure: made by Stage 1 (input level uncal; refitted after snowball
    flagging where that applies) or given by the user (rate)."""
    stage12_exposure(target, name, ("uncal", "rate"))
    if exposure_table.input_level(target_row(target), config) == "uncal":
        return real_snowball_rate_path(target, name) if real_snowball(target, name) else stage1_rate_path(target, name)
    return real_input_file(target, name, "rate")


def real_snowball_params(wildcards):
    row = EXPOSURES.loc[(wildcards.target, wildcards.name)]
    return step_params("snowball_flag", wildcards.target, row["instrument"], row["filter"], row["detector"])


def stage1_inputs(wildcards):
    """The uncal file and, if the detector read out an exposure just before, that one's persistence record."""
    row = stage12_exposure(wildcards.target, wildcards.name, ("uncal",))
    inputs = {"uncal": real_input_file(wildcards.target, wildcards.name, "uncal"), "persistence": []}
    if row["previous"]:
        inputs["persistence"] = [persistence_path(wildcards.target, row["previous"])]
    return inputs


def stage1_persistence_arg(wildcards, input):
    return f"--persistence-in {shlex.quote(input.persistence[0])}" if input.persistence else ""


def crds_args():
    """CRDS context pinned in the config (and the server used when CRDS_SERVER_URL is unset)."""
    crds = config.get("crds", {})
    args = []
    if crds.get("context"):
        args.append(f"--crds-context {crds['context']}")
    if crds.get("server_url"):
        args.append(f"--crds-server-url {crds['server_url']}")
    return " ".join(args)


def stage1_mem_mb(wildcards, input, attempt):
    """Detector1 holds the ramp as float32 plus DQ and error arrays and per-step copies: ~12x the uncal size."""
    return int(max(4000, 12 * input.size_mb) * attempt)


def stage1_runtime(wildcards, input, attempt):
    """Minutes: jump detection and ramp fitting dominate and scale with the ramp size."""
    return int((20 + input.size_mb / 10) * attempt)


def miri_background_rates(target, name):
    """Off-field MIRI rates to subtract from a MIRI science exposure: all dithers of the closest visit.

    The off-field exposures of the same filter whose start is closest in time to the science
    exposure pick the visit; every exposure of that visit and filter is a background member.
    Empty for NIRCam, off-field exposures themselves, or when stage2.miri_offfield_background is off.
    """
    row = stage12_exposure(target, name, ("uncal", "rate"))
    if not config.get("stage2", {}).get("miri_offfield_background", True):
        return []
    if row["instrument"].upper() != "MIRI" or row["role"] != "science":
        return []
    offfield = exposures_of(target, row["filter"], role="offfield")
    offfield = offfield[offfield["instrument"].str.upper() == "MIRI"]
    if offfield.empty:
        return []
    closest = (offfield["start_mjd"] - row["start_mjd"]).abs().idxmin()
    visit = offfield.loc[closest, "visit_id"]
    return [rate_path(target, n) for n in offfield[offfield["visit_id"] == visit]["name"]]


def stage2_inputs(wildcards):
    return {
        "rate": rate_path(wildcards.target, wildcards.name),
        "background": miri_background_rates(wildcards.target, wildcards.name),
    }


def stage2_background_arg(wildcards, input):
    return ("--background " + " ".join(map(shlex.quote, input.background))) if input.background else ""


def stage2_mem_mb(wildcards, input, attempt):
    """Image2 holds the science and background rates and a few same-size work arrays: ~6x the inputs."""
    return int(max(2000, 6 * input.size_mb) * attempt)


def stage2_runtime(wildcards, input, attempt):
    return int((10 + input.size_mb / 20) * attempt)


# ----------------------------------------------------------------------- mosaics (rules/mosaic.smk)
# Output-tiled Stage 3: the grid of every band is cut into tiles of mosaic.tile_size_px; a
# job per tile makes the outlier-detection median or the drizzle from the exposures that reach
# it, so no job holds every exposure of a band. The number of tiles comes from the grid
# (checkpoint mosaic_grid), hence these input functions ask the checkpoint.
def crf_path(target, filter, name):
    return f"results/{target}/outliers/{filter}/{name}_crf.fits"


def crf_files(target, filter):
    return [crf_path(target, filter, n) for n in image_names(target, filter)]


def band_tiles(target, filter):
    """Tile indices of a band's grid (known once the target's grid.json exists)."""
    grid = json.loads(Path(checkpoints.mosaic_grid.get(target=target).output[0]).read_text())
    return range(mosaic_tiles.tile_count(mosaic_tiles.filter_spec(grid, filter), config["mosaic"]["tile_size_px"]))


def median_tile_path(target, filter, tile):
    return f"results/{target}/outliers/{filter}/median_{int(tile):03d}.fits"


def drizzled_tile_path(target, filter, tile):
    return f"results/{target}/drizzled/{filter}/tile_{int(tile):03d}.fits"


def median_tiles(target, filter):
    """Input function of a band's outlier flagging: every median tile of the band."""
    return lambda wildcards: [median_tile_path(target, filter, i) for i in band_tiles(target, filter)]


def drizzled_tiles(wildcards):
    return [drizzled_tile_path(wildcards.target, wildcards.filter, i) for i in band_tiles(wildcards.target, wildcards.filter)]


def median_params():
    m = config["mosaic"]
    return json_param({"maskpt": m["outlier_detection"]["maskpt"], "pixfrac": m["pixfrac"], "kernel": m["kernel"],
                       "weight_type": m["weight_type"]})


def flag_params():
    od = config["mosaic"]["outlier_detection"]
    return json_param({"snr": od["snr"], "scale": od["scale"], "kernel": config["mosaic"]["kernel"]})


def drizzle_params():
    m = config["mosaic"]
    return json_param({"pixfrac": m["pixfrac"], "kernel": m["kernel"], "weight_type": m["weight_type"]})


def largest_input_megapixels(input):
    """Pixels (1e6) of the largest input image: a cal/crf file carries ~24 bytes per pixel (SCI, ERR, DQ, 3 VAR)."""
    largest = max((os.path.getsize(f) for f in input if os.path.exists(f) and f.endswith(".fits")), default=0)
    return largest / 24e6


def tile_job_mb(input, median):
    """Tile jobs, envelope of the jobs measured by tests/bench/mosaic.py (T tile and I largest-input
    megapixels, N inputs): 620 + 60 T + 150 min(T, I) + 5 N MB, with 20% headroom; the median job
    also holds its stack in memory (4 N T MB) up to median_tile.py's median_memory_mb (2000)."""
    side = config["mosaic"]["tile_size_px"]
    tile, n = side * side / 1e6, len(input)
    stack = min(4 * n * tile, 2000) if median else 0
    return 1.2 * (620 + 60 * tile + 150 * min(tile, largest_input_megapixels(input)) + 5 * n + stack)


def median_tile_mem_mb(wildcards, input, attempt):
    return int(tile_job_mb(input, median=True) * attempt)


def drizzle_tile_mem_mb(wildcards, input, attempt):
    return int(tile_job_mb(input, median=False) * attempt)


def gather_mem_mb(wildcards, input, attempt):
    """The gather streams one row of tiles of one extension (8 bytes x tile side x grid width) plus a
    tile; before the grid exists (dry runs) a full-size guess of 30000 pixels across."""
    side = config["mosaic"]["tile_size_px"]
    nx = 30000
    if os.path.exists(input.grid):
        nx = mosaic_tiles.filter_spec(json.loads(Path(input.grid).read_text()), wildcards.filter)["shape"][1]
    return int(1.2 * (300 + 8 * side * nx / 1e6 + 16 * side * side / 1e6) * attempt) + 500


def correlated_noise_mem_mb(wildcards, input, attempt):
    """Measured on a window of at most 4096 x 4096 pixels: 350 + 95 W MB (W window megapixels)."""
    return int(1.2 * (350 + 95 * 4096 * 4096 / 1e6) * attempt) + 500


# ----------------------------------------------------------------------- PSF matching (rules/psf.smk)
# PSFs and kernels do not depend on a target (results/psf/); matched images: results/{target}/matched/.
def psf_config():
    return config.get("psf", {"enabled": False})


def resolution_tag(fwhm):
    """0.9 -> '0p90' (file names of Gaussian resolutions)."""
    return f"{float(fwhm):.2f}".replace(".", "p")


def tag_resolution(tag):
    return float(tag.replace("p", "."))


def psf_path(filter):
    return f"results/psf/{filter}_psf.fits"


def psf_filters_of(target):
    """Bands of a target that get PSF-matched products (psf.bands restricts; empty: all)."""
    wanted = psf_config().get("bands") or None
    return [f for f in filters_of(target) if wanted is None or f in wanted]


def psf_bands():
    """Every band a PSF is made for: the PSF-matched bands of the selected targets."""
    bands = {f for t in SELECTED.index for f in psf_filters_of(t)}
    return sorted(bands, key=lambda f: (survey_plan.instrument_of(f) == "MIRI", int(f[1:-1])))


def broadest_band(target):
    """The target's band of longest wavelength (broadest PSF): the band-to-band kernels' target."""
    bands = psf_filters_of(target)
    return max(bands, key=band_wavelength) if bands else None


def gauss_kernel_path(filter, fwhm):
    return f"results/psf/kernels/{filter}_to_gauss{resolution_tag(fwhm)}.fits"


def band_kernel_path(filter, ref):
    return f"results/psf/kernels/{filter}_to_{ref}.fits"


def matched_gauss_path(target, filter, fwhm):
    return f"results/{target}/matched/{target}_{filter}_gauss{resolution_tag(fwhm)}.fits"


def matched_band_path(target, filter, ref):
    return f"results/{target}/matched/{target}_{filter}_to_{ref}.fits"


def noise_curve_path(target, filter, ext):
    return f"results/{target}/matched/qa/{target}_{filter}_noise_curve.{ext}"


def psf_products(target):
    """PSF tables, matched images (Gaussian resolutions, broadest band) and noise curves of a target."""
    cfg = psf_config()
    if not cfg.get("enabled", False):
        return []
    bands = psf_filters_of(target)
    if not bands:
        return []
    products = ["results/psf/psf_fwhm.ecsv", "results/psf/gaussian_targets.ecsv"]
    ref = broadest_band(target)
    for f in bands:
        products += [matched_gauss_path(target, f, r) for r in cfg["resolutions_arcsec"]]
        if cfg.get("band_to_band", True) and f != ref:
            products.append(matched_band_path(target, f, ref))
        if cfg["noise_curve"].get("enabled", True):
            products += [noise_curve_path(target, f, "ecsv"), noise_curve_path(target, f, "png")]
    return products


def mosaic_megapixels(path):
    """Pixels (1e6) of a mosaic's SCI from its header; before it exists (dry runs) a full-size MIRI guess."""
    if os.path.exists(path):
        from astropy.io import fits

        header = fits.getheader(path, "SCI")
        return header["NAXIS1"] * header["NAXIS2"] / 1e6
    return 21.0


def matched_mem_mb(wildcards, input, attempt):
    """convolve_image.py holds float64 SCI, ERR, mask, coverage and products plus FFT blocks: 500 MB + 120 bytes
    per pixel (tests/bench/psf.py: 2.5 GB for a 4152 x 5144 MIRI mosaic)."""
    return int((500 + 120 * mosaic_megapixels(input.image)) * attempt)
