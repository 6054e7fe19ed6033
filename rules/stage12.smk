# Real data, Stage 1 (Detector1Pipeline: uncal -> rate) and Stage 2 (Image2Pipeline: rate -> cal).
# Only for targets whose sheet `input` is a directory and whose input level is uncal or rate;
# cal_path() in common.smk points the per-exposure chain at results/{target}/stage2/ for them.
# Simulated ramps (snowball correction, then the simulator's Stage 2): at the end of this file;
# real exposures whose snowballs are flagged: rules stage1_jump and snowball_flag_real.
# The exposures of a detector go through Stage 1 in time order: each one's persistence step
# reads the open persistence windows left by the previous exposure (`previous` column of
# EXPOSURES). MIRI science exposures get the off-field rates of their filter as background
# members of their Image2 association.

# ----------------------------------------------------------------------- Stage 1
rule stage1:
    input:
        unpack(stage1_inputs),
    output:
        product="results/{target}/stage1/{name}_rate.fits",
        persistence="results/{target}/stage1/{name}_persistence.asdf",
    params:
        script=script_path("run_stage1.py"),
        mode="",
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
        "python {params.script} --log {log} {params.mode} --out {output.product}"
        " --persistence-out {output.persistence} {params.persistence_in} --steps {params.steps:q} {params.crds}"
        " {input.uncal:q}"


# CEERS Sec. 3.1.1 on real data: an exposure whose snowballs are flagged (real_snowball) stops
# Stage 1 after the jump step; its ramp (temporary: ~10x the rate's size) gets the snowball wings
# flagged and is refitted with the gain and read noise the jump step used (from the CRDS cache),
# and Stage 2 reads that rate (rate_path).
use rule stage1 as stage1_jump with:
    output:
        product=temp("results/{target}/stage1_jump/{name}_ramp.fits"),
        persistence="results/{target}/stage1_jump/{name}_persistence.asdf",
    params:
        mode="--ramp-only",
    log:
        "logs/stage1_jump/{target}/{name}.log",
    benchmark:
        "benchmarks/stage1_jump/{target}/{name}.tsv"


rule snowball_flag_real:
    input:
        "results/{target}/stage1_jump/{name}_ramp.fits",
    output:
        "results/{target}/stage1_snowball/{name}_rate.fits",
    params:
        script=script_path("snowball_flag.py"),
        params=real_snowball_params,
    log:
        "logs/snowball_flag/{target}/{name}.log",
    benchmark:
        "benchmarks/snowball_flag/{target}/{name}.tsv"
    resources:
        mem_mb=lambda wildcards, input, attempt: int(max(2000, 4 * input.size_mb) * attempt),
        runtime=lambda wildcards, input, attempt: int(10 * attempt),
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --gain crds --readnoise crds --params {params.params:q}"
        " {input:q} {output:q}"


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


# ----------------------------------------------------------------------- simulated ramps
# CEERS Sec. 3.1.1: the synthetic survey renders the exposures the snowball correction applies to
# as ramps after the jump step (rules/simulate.smk). Their Stage 1 ends with the snowball flagging
# and stcal's ramp fit, and the simulator's Stage 2 (CEERS Sec. 3.2: WCS, flux calibration) turns
# the rates into the cal files the corrections read (input_cal_path). A job per target and filter
# for each: the exposures go through one process (scripts/each_exposure.py), one import.
for _target in [t for t in SELECTED.index if is_simulated(t)]:
    for _filter in simulated_filters(_target):
        _names = ramp_names(_target, _filter)
        if not _names:
            continue

        rule:
            name:
                rule_name("snowball_flag", _target, _filter)
            input:
                ramps=[ramp_path(_target, n) for n in _names],
                gain=[ramp_path(_target, n, "gain") for n in _names],
                readnoise=[ramp_path(_target, n, "readnoise") for n in _names],
            output:
                [snowball_rate_path(_target, n) for n in _names],
            params:
                runner=script_path("each_exposure.py"),
                args=shlex.quote(
                    f"--params {shlex.quote(step_params('snowball_flag', _target, 'NIRCAM', _filter))}"
                ),
                out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            log:
                f"logs/snowball_flag/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/snowball_flag/{_target}/{_filter}.tsv"
            resources:
                mem_mb=streaming_mem_mb,
                runtime=lambda wildcards, input, attempt: int((5 + len(input.ramps) / 6) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.runner} snowball_flag --log {log} --out-dir {params.out_dir} --output '{{name}}_rate.fits'"
                " --beside 'gain={{name}}_gain.fits' --beside 'readnoise={{name}}_readnoise.fits'"
                " --args {params.args} {input.ramps}"

        rule:
            name:
                rule_name("simulate_stage2", _target, _filter)
            input:
                [snowball_rate_path(_target, n) for n in _names],
            output:
                [simulated_stage2_path(_target, n) for n in _names],
            params:
                script=script_path("simulate_survey.py"),
                sim=survey_sim_param(),
                out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            log:
                f"logs/simulate_stage2/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/simulate_stage2/{_target}/{_filter}.tsv"
            resources:
                mem_mb=streaming_mem_mb,
                runtime=lambda wildcards, input, attempt: int((5 + len(input) / 6) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.script} --log {log} calibrate --sim {params.sim:q} --out-dir {params.out_dir} {input}"
