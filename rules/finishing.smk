# Finishing (CEERS Sec. 3.3.3-3.3.4, Appendix A): tiered background subtraction of deep-field
# mosaics (a tier mask per band, one merged mask per target, a subtraction job per band),
# empty-aperture depths, and the release directory a user downloads. Galaxies keep their
# sky anchoring (rules/mosaic.smk); which targets get the tiered background is
# `finishing.background.layouts`.


# ----------------------------------------------------------------------- tiered background


rule background_tiers:
    input:
        background_tiers_input,
    output:
        "results/{target}/background/tiers/{target}_{name}_tiers.fits",
    wildcard_constraints:
        name=r"F\d{3,4}[WMN]2?|extra\d+",
    params:
        script=script_path("mosaic_background.py"),
        params=lambda w: background_params(w.name if w.name.startswith("F") else None),
    log:
        "logs/background_tiers/{target}/{name}.log",
    benchmark:
        "benchmarks/background_tiers/{target}/{name}.tsv"
    resources:
        mem_mb=finishing_mem_mb,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --params {params.params:q} tiers {input} {output}"


rule background_mask:
    input:
        background_tier_masks,
    output:
        "results/{target}/background/{target}_bkgmask.fits",
    params:
        script=script_path("mosaic_background.py"),
    log:
        "logs/background_mask/{target}.log",
    benchmark:
        "benchmarks/background_mask/{target}.tsv"
    resources:
        mem_mb=lambda wildcards, input, attempt: int(max(1000, 4 * input.size_mb + 500) * attempt),
        runtime=lambda wildcards, attempt: 20 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} merge {input} --out {output}"


rule mosaic_background:
    input:
        mosaic=lambda w: final_mosaic(w.target, w.filter),
        mask="results/{target}/background/{target}_bkgmask.fits",
        exposures=lambda w: crf_files(w.target, w.filter),
    output:
        mosaic="results/{target}/background/{target}_{filter}_i2d.fits",
        qa="results/{target}/background/qa/{target}_{filter}_background.png",
    params:
        script=script_path("mosaic_background.py"),
        params=lambda w: background_params(w.filter),
    log:
        "logs/mosaic_background/{target}/{filter}.log",
    benchmark:
        "benchmarks/mosaic_background/{target}/{filter}.tsv"
    resources:
        mem_mb=finishing_mem_mb,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --params {params.params:q} subtract {input.mosaic} {output.mosaic}"
        " --mask {input.mask} --qa-png {output.qa} --hdrtab {input.exposures}"


# ----------------------------------------------------------------------- depths


# The simulator's PSF per band, in the PSF-model file format: the PSF of the synthetic mosaics
# (real data use rules/psf.smk's models; finishing.depth.psf).
rule simulator_psf:
    output:
        "results/psf_sim/{filter}_psf.fits",
    params:
        script=script_path("simulator_psf.py"),
        sim=survey_sim_param(),
        args=simulator_psf_args,
    log:
        "logs/simulator_psf/{filter}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --filter {wildcards.filter} --sim {params.sim:q} {params.args}"
        " --out {output}"


rule depth:
    input:
        mosaic="results/{target}/background/{target}_{filter}_i2d.fits",
        mask="results/{target}/background/tiers/{target}_{filter}_tiers.fits",
        psf=lambda w: depth_psf(w.target, w.filter),
    output:
        table="results/{target}/depth/{target}_{filter}_depth.ecsv",
        plot="results/{target}/depth/{target}_{filter}_depth.png",
    params:
        script=script_path("depth.py"),
        params=json_param(finishing_config("depth").get("params", {})),
        inject=finishing_config("depth").get("inject", 0),
    log:
        "logs/depth/{target}/{filter}.log",
    benchmark:
        "benchmarks/depth/{target}/{filter}.tsv"
    resources:
        mem_mb=finishing_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --params {params.params:q} --inject {params.inject} {input.mosaic}"
        " --mask {input.mask} --psf {input.psf} --table {output.table} --plot {output.plot}"


# ----------------------------------------------------------------------- release


rule release:
    input:
        unpack(release_inputs),
    output:
        directory("results/{target}/release"),
    params:
        script=script_path("release.py"),
        config=lambda w: json_param({k: v for k, v in config.items() if k != "targets"}),
        level=finishing_config("release").get("archive_compresslevel", 6),
        extra=lambda wildcards, input: ("--extra " + " ".join(input.extra)) if input.extra else "",
        qa=lambda wildcards, input: ("--qa " + " ".join(input.qa)) if input.qa else "",
    log:
        "logs/release/{target}.log",
    benchmark:
        "benchmarks/release/{target}.tsv"
    resources:
        mem_mb=finishing_mem_mb,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --target {wildcards.target} --out-dir {output}"
        " --config-json {params.config:q} --compresslevel {params.level}"
        " --mosaics {input.mosaics} --exposures {input.exposures} {params.qa} {params.extra}"
