# JWST NIRCam/MIRI imaging -> astrometrically calibrated, background-matched mosaics -> catalogs.
# Table of contents only; the logic lives in rules/*.smk and scripts/*.py.

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/stage12.smk"
include: "rules/artefacts.smk"
include: "rules/validation.smk"
include: "rules/exposure.smk"
include: "rules/astrometry.smk"
include: "rules/tile.smk"
include: "rules/mosaic.smk"
include: "rules/psf.smk"
include: "rules/finishing_common.smk"
include: "rules/finishing.smk"
include: "rules/report.smk"
include: "rules/catalogs.smk"


rule all:
    input:
        all_products,
        report_products,
    default_target: True
