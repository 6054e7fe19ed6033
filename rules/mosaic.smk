# Stage 3: common grid per target, outlier detection and drizzle per band.


def mosaic_inputs(wildcards):
    return final_exposures(wildcards.target, wildcards.filter)


rule mosaic_grid:
    input:
        final_exposures_all_filters,
    output:
        "results/{target}/mosaic/grid.json",
    params:
        ra=lambda w: float(target_row(w.target)["ra"]),
        dec=lambda w: float(target_row(w.target)["dec"]),
        scale=config["mosaic"]["pixel_scale_arcsec"],
        multiples=json_param(config["mosaic"]["scale_multiple"]),
        margin=config["mosaic"]["margin_arcsec"],
    log:
        "logs/mosaic_grid/{target}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {SCRIPTS}/mosaic_grid.py --log {log} --out {output} --ra {params.ra} --dec {params.dec}"
        " --pixel-scale {params.scale} --multiples {params.multiples:q} --margin {params.margin}"
        " --config-hash {CONFIG_HASH} {input}"


def crf_path(target, filter, name):
    return f"results/{target}/outliers/{filter}/{name}_crf.fits"


def outlier_params():
    od = config["mosaic"]["outlier_detection"]
    return json_param(
        {
            "snr": od["snr"],
            "scale": od["scale"],
            "maskpt": od["maskpt"],
            "pixfrac": config["mosaic"]["pixfrac"],
            "kernel": config["mosaic"]["kernel"],
            "weight_type": config["mosaic"]["weight_type"],
        }
    )


def mosaic_mem_mb(wildcards, input, attempt):
    """All inputs are held in memory by jwst's steps: ~8x the input size, at least 1 GB."""
    return int(max(1000, 8 * input.size_mb) * attempt)


# Outlier detection writes one crf file per input exposure of the band; the
# output list differs per band, so the rule is declared per (target, filter).
for _target in SELECTED.index:
    for _filter in filters_of(_target):
        _names = list(exposures_of(_target, _filter)["name"])

        rule:
            name:
                f"outlier_detection_{_target}_{_filter}".replace("-", "_")
            input:
                final_exposures(_target, _filter),
            output:
                [crf_path(_target, _filter, n) for n in _names],
            params:
                od=outlier_params(),
                out_dir=f"results/{_target}/outliers/{_filter}",
            log:
                f"logs/outlier_detection/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/outlier_detection/{_target}/{_filter}.tsv"
            resources:
                mem_mb=mosaic_mem_mb,
                runtime=lambda wildcards, attempt: 30 * attempt,
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {SCRIPTS}/outlier_detection.py --log {log} --out-dir {params.out_dir}"
                " --params {params.od:q} --config-hash {CONFIG_HASH} {input}"


rule resample:
    input:
        exposures=lambda w: [crf_path(w.target, w.filter, n) for n in exposures_of(w.target, w.filter)["name"]],
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/mosaic/{target}_{filter}_i2d.fits",
    params:
        resample=json_param(
            {
                "pixfrac": config["mosaic"]["pixfrac"],
                "kernel": config["mosaic"]["kernel"],
                "weight_type": config["mosaic"]["weight_type"],
            }
        ),
    log:
        "logs/resample/{target}/{filter}.log",
    benchmark:
        "benchmarks/resample/{target}/{filter}.tsv"
    resources:
        mem_mb=mosaic_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {SCRIPTS}/resample_mosaic.py --log {log} --grid {input.grid} --filter {wildcards.filter}"
        " --out {output} --params {params.resample:q} --config-hash {CONFIG_HASH} {input.exposures}"
