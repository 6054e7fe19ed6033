# Sheets, exposure tables, input functions and wildcard constraints shared by all rules.

import json
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

SCRIPTS = Path(workflow.basedir) / "scripts"
sys.path.insert(0, str(SCRIPTS))
import survey_plan  # noqa: E402
import wfutils  # noqa: E402
import exposure_table  # noqa: E402

validate(config, schema="../config/schema/config.schema.yaml")

TARGETS_SHEET = exposure_table.read_targets_sheet(config["targets_sheet"])
validate(TARGETS_SHEET, schema="../config/schema/targets.schema.yaml")
SELECTED = exposure_table.select_targets(TARGETS_SHEET, config["targets"])
CONFIG_HASH = wfutils.config_hash(config)
EXPOSURES = exposure_table.build_exposure_table(SELECTED, config)


wildcard_constraints:
    target="|".join(map(re.escape, TARGETS_SHEET.index)),
    filter=r"F\d{3,4}[WMN]2?",
    name=r"jw\d{11}_\d{5}_\d{5}_[a-z0-9]+",


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
    rows = exposures_of(target)
    return sorted(rows["filter"].unique(), key=lambda f: (survey_plan.instrument_of(f) == "MIRI", int(f[1:-1])))


def simulated_filters(target):
    """Every filter the simulator renders for a target, including off-field parallels."""
    return sorted(exposures_of(target, role=None)["filter"].unique())


# ----------------------------------------------------------------------- the per-exposure chain
# Per-exposure corrections in the order of the papers (see DESIGN.md). Each entry is
# (step name, predicate on an exposure row). A step whose predicate is false for an
# exposure is skipped by the input functions: no copy rule is needed.
EXPOSURE_STEPS = []


def cal_path(target, name):
    """Stage-2 calibrated exposure: simulated, given by the user, or made by Stage 1/2."""
    row = target_row(target)
    if row["input"] == "simulate":
        return f"results/{target}/simulated/cal/{name}_cal.fits"
    if exposure_table.input_level(row, config) == "cal":
        return str(Path(row["input"]) / f"{name}_cal.fits")
    return f"results/{target}/stage2/{name}_cal.fits"


def exposure_path(target, name, upto=None):
    """Path of an exposure after the last applicable step before ``upto`` (all steps if None)."""
    path = cal_path(target, name)
    row = EXPOSURES.loc[(target, name)]
    for step, applies in EXPOSURE_STEPS:
        if step == upto:
            break
        if applies(row):
            path = f"results/{target}/{step}/{name}_cal.fits"
    return path


def final_exposures(target, filter):
    return [exposure_path(target, n) for n in exposures_of(target, filter)["name"]]


def final_exposures_all_filters(wildcards):
    return [p for f in filters_of(wildcards.target) for p in final_exposures(wildcards.target, f)]


# ----------------------------------------------------------------------- products
def mosaic_path(target, filter):
    return f"results/{target}/mosaic/{target}_{filter}_i2d.fits"


def truth_mosaic_path(target, filter):
    return f"results/{target}/truth/mosaics/{target}_{filter}_truth.fits"


def all_products(wildcards=None):
    """What `rule all` asks for: mosaics per target and filter, and truth for simulated targets."""
    products = []
    for target in SELECTED.index:
        for filt in filters_of(target):
            products.append(mosaic_path(target, filt))
            if is_simulated(target):
                products.append(truth_mosaic_path(target, filt))
        if is_simulated(target):
            products.append(f"results/{target}/truth/{target}_exposures_truth.ecsv")
    return products


def json_param(value):
    """Compact JSON for passing structured config to a script (quote with :q in shell)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
