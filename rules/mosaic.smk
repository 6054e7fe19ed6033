# Stage 3: common grid per target, outlier detection and drizzle per band.


rule mosaic_grid:
    input:
        final_exposures_all_filters,
    output:
        "results/{target}/mosaic/grid.json",
    params:
        script=script_path("mosaic_grid.py"),
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
        "python {params.script} --log {log} --out {output} --ra {params.ra} --dec {params.dec}"
        " --pixel-scale {params.scale} --multiples {params.multiples:q} --margin {params.margin} {input}"


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
                script=script_path("outlier_detection.py"),
                od=outlier_params(),
                out_dir=lambda wildcards, output: os.path.dirname(output[0]),
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
                "python {params.script} --log {log} --out-dir {params.out_dir}"
                " --params {params.od:q} {input}"


rule resample:
    input:
        exposures=lambda w: [crf_path(w.target, w.filter, n) for n in exposures_of(w.target, w.filter)["name"]],
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/mosaic/{target}_{filter}_i2d.fits",
    params:
        script=script_path("resample_mosaic.py"),
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
        "python {params.script} --log {log} --grid {input.grid} --filter {wildcards.filter}"
        " --out {output} --params {params.resample:q} {input.exposures}"
