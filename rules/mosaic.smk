# Stage 3: common grid per target; outlier detection and drizzle per band, one job per output tile.


checkpoint mosaic_grid:
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


rule mosaic_tiles:
    input:
        exposures=lambda w: final_exposures(w.target, w.filter),
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/mosaic/tiles/{filter}_tiles.json",
    params:
        script=script_path("mosaic_tiles.py"),
        tile_size=config["mosaic"]["tile_size_px"],
    log:
        "logs/mosaic_tiles/{target}/{filter}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --grid {input.grid} --filter {wildcards.filter}"
        " --tile-size {params.tile_size} --out {output} {input.exposures}"


# Outlier detection, step 1: median of the singly drizzled exposures, one output tile per job.
rule median_tile:
    input:
        exposures=lambda w: final_exposures(w.target, w.filter),
        tiles="results/{target}/mosaic/tiles/{filter}_tiles.json",
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/outliers/{filter}/median_{tile}.fits",
    wildcard_constraints:
        tile=r"\d{3}",
    params:
        script=script_path("median_tile.py"),
        params=median_params(),
        tile_size=config["mosaic"]["tile_size_px"],
    log:
        "logs/median_tile/{target}/{filter}_{tile}.log",
    benchmark:
        "benchmarks/median_tile/{target}/{filter}_{tile}.tsv"
    resources:
        mem_mb=median_tile_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --tiles {input.tiles} --grid {input.grid} --filter {wildcards.filter}"
        " --tile {wildcards.tile} --tile-size {params.tile_size} --params {params.params:q} --out {output}"
        " {input.exposures}"


# Outlier detection, step 2: each exposure flagged against the blotted median tiles (one
# exposure in memory at a time; a job per band so that jwst is imported once).
for _target in SELECTED.index:
    for _filter in filters_of(_target):

        rule:
            name:
                rule_name("flag_outliers", _target, _filter)
            input:
                exposures=final_exposures(_target, _filter),
                medians=median_tiles(_target, _filter),
                grid=f"results/{_target}/mosaic/grid.json",
            output:
                crf_files(_target, _filter),
            params:
                runner=script_path("each_exposure.py"),
                args=lambda wildcards, input, f=_filter: shlex.quote(
                    f"--grid {input.grid} --filter {f} --params {shlex.quote(flag_params())} "
                    + " ".join(input.medians)
                ),
                out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            log:
                f"logs/flag_outliers/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/flag_outliers/{_target}/{_filter}.tsv"
            resources:
                mem_mb=streaming_mem_mb,
                runtime=lambda wildcards, input, attempt: int((10 + len(input) / 6) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.runner} flag_outliers --log {log} --out-dir {params.out_dir} --input-option exposure"
                " --per-file 'out={{name}}_crf.fits' --args {params.args} {input.exposures}"


# Drizzle, one output tile per job, from the outlier-flagged exposures.
rule drizzle_tile:
    input:
        exposures=lambda w: crf_files(w.target, w.filter),
        tiles="results/{target}/mosaic/tiles/{filter}_tiles.json",
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/drizzled/{filter}/tile_{tile}.fits",
    wildcard_constraints:
        tile=r"\d{3}",
    params:
        script=script_path("drizzle_tile.py"),
        params=drizzle_params(),
        tile_size=config["mosaic"]["tile_size_px"],
    log:
        "logs/drizzle_tile/{target}/{filter}_{tile}.log",
    benchmark:
        "benchmarks/drizzle_tile/{target}/{filter}_{tile}.tsv"
    resources:
        mem_mb=drizzle_tile_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --tiles {input.tiles} --grid {input.grid} --filter {wildcards.filter}"
        " --tile {wildcards.tile} --tile-size {params.tile_size} --params {params.params:q} --out {output}"
        " {input.exposures}"


rule gather_tiles:
    input:
        tiles=drizzled_tiles,
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/drizzled/{target}_{filter}_i2d.fits",
    params:
        script=script_path("gather_tiles.py"),
    log:
        "logs/gather_tiles/{target}/{filter}.log",
    benchmark:
        "benchmarks/gather_tiles/{target}/{filter}.tsv"
    resources:
        mem_mb=gather_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --grid {input.grid} --filter {wildcards.filter} --out {output}"
        " {input.tiles}"


# CEERS Sec. 4: pixel-to-pixel correlation from the drizzle; factors in the header, errors
# rescaled when mosaic.correlated_noise.apply is set.
rule correlated_noise:
    input:
        "results/{target}/drizzled/{target}_{filter}_i2d.fits",
    output:
        "results/{target}/mosaic/{target}_{filter}_i2d.fits",
    params:
        script=script_path("correlated_noise.py"),
        params=json_param(config["mosaic"]["correlated_noise"].get("params", {})),
        apply="--apply" if config["mosaic"]["correlated_noise"]["apply"] else "",
    log:
        "logs/correlated_noise/{target}/{filter}.log",
    benchmark:
        "benchmarks/correlated_noise/{target}/{filter}.tsv"
    resources:
        mem_mb=correlated_noise_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --params {params.params:q} {params.apply} {input} {output}"


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
                excluded=anchoring_excluded(_target),
            output:
                mosaics=[anchored_path(_target, f) for f in _filters],
                table=f"results/{_target}/anchored/{_target}_anchoring.ecsv",
                qa=f"results/{_target}/anchored/{_target}_anchoring.png",
            params:
                script=script_path("anchor_background.py"),
                params=json_param(config["anchoring"].get("params", {})),
                references=" ".join(f"--reference {band}={path}" for band, path in _refs.items()),
                excluded=" ".join(f"--exclude-footprint {path}" for path in anchoring_excluded(_target)),
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
                "python {params.script} --log {log} --params {params.params:q} {params.references} {params.excluded}"
                " --out-dir {params.out_dir} --table {output.table} --qa-png {output.qa} {input.mosaics}"
