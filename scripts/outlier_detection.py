"""Outlier (cosmic-ray) flagging of all exposures of one band with jwst's OutlierDetectionStep.

Each exposure group is drizzled to a common frame, the median is blotted back
and pixels deviating by more than ``snr``/``scale`` are flagged OUTLIER +
DO_NOT_USE in DQ (the Stage 3 method the PHANGS-JWST and CEERS reductions use).
Writes ``<name>_crf.fits`` per input under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from wflib import wfutils

log = logging.getLogger("outlier_detection")


def crf_name(path) -> str:
    name = Path(path).name
    for suffix in ("_cal.fits", "_crf.fits", ".fits"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "_crf.fits"
    return name


def flag_outliers(paths, params: dict):
    """Run OutlierDetectionStep on ``paths``; return a ModelLibrary of the flagged models."""
    from jwst.datamodels import ModelLibrary
    from jwst.outlier_detection import OutlierDetectionStep

    library = ModelLibrary([str(p) for p in paths], on_disk=False)
    step = OutlierDetectionStep(**params)
    return step.run(library)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="calibrated exposures of one band (ImageModel FITS)")
    parser.add_argument("--out-dir", required=True)
    wfutils.add_run_options(parser, params_help="JSON of OutlierDetectionStep parameters")
    args = parser.parse_args(argv)
    wfutils.setup_logging(args.log)
    for path in args.inputs:
        wfutils.check_image_file(path)
    params = json.loads(args.params)
    if len(args.inputs) < 2:
        log.warning(
            "only %d exposure: outlier detection needs overlapping exposures; copying flags as they are",
            len(args.inputs),
        )
        params["skip"] = True
    result = flag_outliers(args.inputs, params)
    from stdatamodels.jwst.datamodels import dqflags

    with result:
        for i in range(len(result)):
            model = result.borrow(i)
            name = Path(args.inputs[i]).name
            flagged = int(np.count_nonzero(model.dq & dqflags.pixel["OUTLIER"]))
            wfutils.save_model(
                model, Path(args.out_dir) / crf_name(name), [args.inputs[i]], args.config_hash, "outlier_detection"
            )
            log.info("%d/%d %s: %d pixels flagged as outliers", i + 1, len(result), name, flagged)
            result.shelve(model, i, modify=False)


if __name__ == "__main__":
    wfutils.run_cli(main)
