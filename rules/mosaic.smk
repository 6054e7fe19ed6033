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
        _names = image_names(_target, _filter)

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
        exposures=lambda w: [crf_path(w.target, w.filter, n) for n in image_names(w.target, w.filter)],
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


# Sky anchoring: all anchored bands of a target in one job (the other bands of an instrument
# are fitted against its anchored reference band), declared per target.
for _target in SELECTED.index:
    _filters = anchored_filters(_target)
    if _filters:
        _refs = anchoring_references(_target)

        rule:
            name:
                f"anchor_background_{_target}".replace("-", "_")
            input:
                mosaics=[mosaic_path(_target, f) for f in _filters],
                references=list(_refs.values()),
            output:
                mosaics=[anchored_path(_target, f) for f in _filters],
                table=f"results/{_target}/anchored/{_target}_anchoring.ecsv",
                qa=f"results/{_target}/anchored/{_target}_anchoring.png",
            params:
                script=script_path("anchor_background.py"),
                params=json_param(config["anchoring"].get("params", {})),
                references=" ".join(f"--reference {band}={path}" for band, path in _refs.items()),
                out_dir=lambda wildcards, output: os.path.dirname(output.table),
            log:
                f"logs/anchor_background/{_target}.log",
            benchmark:
                f"benchmarks/anchor_background/{_target}.tsv"
            resources:
                mem_mb=band_mem_mb,
                runtime=lambda wildcards, attempt: 30 * attempt,
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.script} --log {log} --params {params.params:q} {params.references}"
                " --out-dir {params.out_dir} --table {output.table} --qa-png {output.qa} {input.mosaics}"
