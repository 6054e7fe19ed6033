# JWST NIRCam/MIRI imaging -> astrometrically calibrated, background-matched mosaics -> catalogs.
# Table of contents only; the logic lives in rules/*.smk and scripts/*.py.

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/stage12.smk"
include: "rules/validation.smk"
include: "rules/exposure.smk"
include: "rules/astrometry.smk"
include: "rules/tile.smk"
include: "rules/mosaic.smk"


rule all:
    input:
        all_products,
    default_target: True
