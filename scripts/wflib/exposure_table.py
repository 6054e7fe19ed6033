"""The targets sheet and the table of exposures the DAG is built from.

Imported by ``rules/common.smk`` at parse time, so it stays light (pandas,
astropy.io.fits headers only). Simulated targets take their exposure list from
``survey_plan``; real targets from the primary headers of the files in their
input directory (MAST names ``jw..._uncal|rate|cal.fits``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from wflib import survey_plan

LEVEL_SUFFIX = {"uncal": "_uncal.fits", "rate": "_rate.fits", "cal": "_cal.fits"}
TABLE_COLUMNS = [
    "target",
    "name",
    "role",
    "instrument",
    "channel",
    "detector",
    "filter",
    "pupil",
    "visit_id",
    "start_mjd",
    "exptime",
    "dither",
    "tile",
    "previous",
]


class SheetError(ValueError):
    """A problem in the targets sheet, the target selection or an input directory."""


def read_targets_sheet(path) -> pd.DataFrame:
    """Read ``config/targets.tsv``; one row per target, indexed by target name."""
    sheet = pd.read_csv(
        path,
        sep="\t",
        dtype={"target": str, "input": str, "layout": str, "input_level": str, "offfield_obs": str, "notes": str},
        comment=None,
    ).fillna({"input_level": "", "layout": "", "offfield_obs": "", "notes": ""})
    duplicated = sheet["target"][sheet["target"].duplicated()].tolist()
    if duplicated:
        raise SheetError(f"{path}: target(s) listed more than once: {', '.join(duplicated)}")
    if "program" not in sheet:
        sheet["program"] = 9000 + pd.RangeIndex(1, len(sheet) + 1)
    return sheet.set_index("target", drop=False)


def select_targets(sheet: pd.DataFrame, wanted) -> pd.DataFrame:
    """Rows for ``wanted`` (list, comma-separated string, or empty for all); unknown names fail."""
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    wanted = list(wanted or [])
    unknown = [w for w in wanted if w not in sheet.index]
    if unknown:
        raise SheetError(f"target(s) {', '.join(unknown)} not in the targets sheet (known: {', '.join(sheet.index)})")
    return sheet.loc[wanted] if wanted else sheet


def input_level(row, config) -> str:
    level = row.get("input_level") or config["input_level"]
    if level not in LEVEL_SUFFIX:
        raise SheetError(f"target {row['target']}: input_level {level!r} is not one of {', '.join(LEVEL_SUFFIX)}")
    return level


def simulated_rows(row, config) -> list[dict]:
    sim = config["simulation"]
    layout_name = row["layout"]
    if layout_name not in sim["layouts"]:
        raise SheetError(
            f"target {row['target']}: layout {layout_name!r} not in simulation.layouts "
            f"(known: {', '.join(sim['layouts'])})"
        )
    plan = survey_plan.plan_target(
        row["target"],
        float(row["ra"]),
        float(row["dec"]),
        sim["layouts"][layout_name],
        sim["scale"],
        program=int(row["program"]),
    )
    previous = survey_plan.previous_on_detector(plan)
    return [
        {
            **{k: getattr(e, k) for k in TABLE_COLUMNS if hasattr(e, k)},
            "visit_id": e.visit_id,
            "previous": previous[e.name] or "",
        }
        for e in plan
    ]


def validated_files(row, config, level, files, skipped) -> list[Path]:
    """The input files of a real target that pass ``validate_inputs`` (issue 13). A bad file stops
    the workflow with every fault listed, or with ``validation.on_bad_exposure: skip`` is left out
    of the exposure table, announced on stderr and appended to ``skipped`` ({target, path, faults})."""
    import validate_inputs
    from wflib import wfutils

    if not config.get("validation", {}).get("enabled", True):
        return files
    on_bad = config.get("validation", {}).get("on_bad_exposure", "stop")
    channels = tuple(config.get("mosaic", {}).get("scale_multiple", {}) or ("NRC_SW", "NRC_LW", "MIRI"))
    cache = Path(".snakemake") / "jwstflow_validation" / f"{row['target']}_{level}.json"
    try:
        good, bad = validate_inputs.validate(files, level, on_bad, channels, cache_file=cache)
    except wfutils.InputError as exc:
        raise SheetError(f"target {row['target']}: {exc}") from None
    for check in bad:
        print(f"validation: skipping {check.message()} (validation.on_bad_exposure: skip)", file=sys.stderr)
        skipped.append({"target": row["target"], "path": check.path, "faults": check.faults})
    if not good:
        raise SheetError(
            f"target {row['target']}: no exposures left in {row['input']}: all {len(files)} failed validation"
        )
    return [Path(c.path) for c in good]


def real_rows(row, config, skipped=None) -> list[dict]:
    """Exposure rows from the primary headers of a real target's input files that pass validation."""
    from astropy.io import fits

    level = input_level(row, config)
    directory = Path(row["input"])
    if not directory.is_dir():
        raise SheetError(f"target {row['target']}: input directory {directory} does not exist")
    files = sorted(directory.glob(f"jw*{LEVEL_SUFFIX[level]}"))
    if not files:
        raise SheetError(f"target {row['target']}: no exposures in {directory} (looked for jw*{LEVEL_SUFFIX[level]})")
    files = validated_files(row, config, level, files, [] if skipped is None else skipped)
    offfield = {o.strip().zfill(3) for o in str(row.get("offfield_obs", "")).split(",") if o.strip()}
    rows = []
    for path in files:
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:
            raise SheetError(f"{path}: cannot read the primary header ({exc})") from exc
        missing = [
            k for k in ("INSTRUME", "DETECTOR", "FILTER", "EXPSTART", "PROGRAM", "OBSERVTN", "VISIT") if k not in header
        ]
        if missing:
            raise SheetError(f"{path}: primary header lacks {', '.join(missing)}")
        filt = header["FILTER"].strip()
        try:
            channel = survey_plan.channel_of(filt)
        except ValueError as exc:
            raise SheetError(f"{path}: {exc}") from exc
        program, obs, visit = str(header["PROGRAM"]), str(header["OBSERVTN"]), str(header["VISIT"])
        rows.append(
            {
                "target": row["target"],
                "name": path.name[: -len(LEVEL_SUFFIX[level])],
                "role": "offfield" if obs.zfill(3) in offfield else "science",
                "instrument": header["INSTRUME"].strip(),
                "channel": channel,
                "detector": header["DETECTOR"].strip(),
                "filter": filt,
                "pupil": str(header.get("PUPIL", "CLEAR")).strip(),
                "visit_id": f"{program.zfill(5)}{obs.zfill(3)}{visit.zfill(3)}",
                "start_mjd": float(header["EXPSTART"]),
                "exptime": float(header.get("EFFEXPTM", 0.0)),
                "dither": int(header.get("PATT_NUM", 1)),
                "tile": int(visit),
            }
        )
    return with_previous(rows)


def with_previous(rows: list[dict]) -> list[dict]:
    """Add the name of the exposure read out just before each one on the same detector."""
    last: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: (r["start_mjd"], r["name"])):
        r["previous"] = last.get(r["detector"], "")
        last[r["detector"]] = r["name"]
    return rows


def build_exposure_table(selected: pd.DataFrame, config, skipped=None) -> pd.DataFrame:
    """One row per exposure of the selected targets, indexed by (target, name). Input files that
    fail validation and are skipped are appended to ``skipped`` (see ``validated_files``)."""
    rows = []
    for _, row in selected.iterrows():
        rows += simulated_rows(row, config) if row["input"] == "simulate" else real_rows(row, config, skipped)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    empty = [t for t in selected.index if not (table["target"] == t).any()]
    if empty:
        raise SheetError(f"target(s) {', '.join(empty)} have no exposures (check the layout or input directory)")
    duplicated = table[table.duplicated(["target", "name"])]
    if len(duplicated):
        raise SheetError(f"exposure(s) claimed twice: {', '.join(duplicated['name'])}")
    table.index = pd.MultiIndex.from_arrays([table["target"], table["name"]], names=["target_id", "exposure_id"])
    return table.sort_index()
