# Real data, Stage 1 (Detector1Pipeline: uncal -> rate) and Stage 2 (Image2Pipeline: rate -> cal).
# Only for targets whose sheet `input` is a directory and whose input level is uncal or rate;
# cal_path() in common.smk points the per-exposure chain at results/{target}/stage2/ for them.
# The exposures of a detector go through Stage 1 in time order: each one's persistence step
# reads the open persistence windows left by the previous exposure (`previous` column of
# EXPOSURES). MIRI science exposures get the off-field rates of their filter as background
# members of their Image2 association.

# ----------------------------------------------------------------------- Stage 1
rule stage1:
    input:
        unpack(stage1_inputs),
    output:
        rate="results/{target}/stage1/{name}_rate.fits",
        persistence="results/{target}/stage1/{name}_persistence.asdf",
    params:
        script=script_path("run_stage1.py"),
        steps=json_param(config.get("stage1", {}).get("steps", {})),
        persistence_in=stage1_persistence_arg,
        crds=crds_args(),
    log:
        "logs/stage1/{target}/{name}.log",
    benchmark:
        "benchmarks/stage1/{target}/{name}.tsv"
    resources:
        mem_mb=stage1_mem_mb,
        runtime=stage1_runtime,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --out {output.rate} --persistence-out {output.persistence}"
        " {params.persistence_in} --steps {params.steps:q} {params.crds}"
        " {input.uncal:q}"


# ----------------------------------------------------------------------- Stage 2
rule stage2:
    input:
        unpack(stage2_inputs),
    output:
        "results/{target}/stage2/{name}_cal.fits",
    params:
        script=script_path("run_stage2.py"),
        steps=json_param(config.get("stage2", {}).get("steps", {})),
        background=stage2_background_arg,
        crds=crds_args(),
    log:
        "logs/stage2/{target}/{name}.log",
    benchmark:
        "benchmarks/stage2/{target}/{name}.tsv"
    resources:
        mem_mb=stage2_mem_mb,
        runtime=stage2_runtime,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --out {output} --steps {params.steps:q} {params.crds}"
        " {input.rate:q} {params.background}"
