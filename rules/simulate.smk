# The synthetic survey (targets whose sheet input is `simulate`): sky model and
# references per target, exposures per filter, truth mosaics on the common grid.

rule simulate_sky:
    output:
        truth="results/{target}/truth/sky_truth.json",
        sources="results/{target}/truth/sky_sources.ecsv",
        refcat="results/{target}/references/{target}_refcat.ecsv",
        widefield=expand(
            "results/{{target}}/references/{{target}}_{name}.fits", name=widefield_names()
        ),
    params:
        script=script_path("simulate_survey.py"),
        sim=survey_sim_param(),
        target=lambda w: sim_target_json(w.target),
    log:
        "logs/simulate_sky/{target}.log",
    benchmark:
        "benchmarks/simulate_sky/{target}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} sky --sim {params.sim:q} --target {params.target:q}"
        " --out-dir results/{wildcards.target}/truth"
        " --references-dir results/{wildcards.target}/references"


# One job renders all exposures of a filter (hundreds of small files; a job per
# file would spend its time importing jwst). Output lists differ per band, so the
# rule is declared once per simulated (target, filter). Exposures the snowball correction
# applies to are rendered as ramps after the jump step (rules/stage12.smk takes them on).
for _target in [t for t in SELECTED.index if is_simulated(t)]:
    for _filter in simulated_filters(_target):
        _out = simulated_band_outputs(_target, _filter)

        rule:
            name:
                f"simulate_exposures_{_target}_{_filter}".replace("-", "_")
            input:
                truth=f"results/{_target}/truth/sky_truth.json",
                sources=f"results/{_target}/truth/sky_sources.ecsv",
            output:
                cal=_out["cal"],
                ramps=_out["ramps"],
                truth=_out["truth"],
                wisps=_out["wisps"],
                table=f"results/{_target}/truth/tables/{_filter}_exposures_truth.ecsv",
            params:
                script=script_path("simulate_survey.py"),
                sim=survey_sim_param(),
                target=sim_target_json(_target),
                filter=_filter,
                target_name=_target,
                ramps=simulated_ramp_args(_target, _filter),
            log:
                f"logs/simulate_exposures/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/simulate_exposures/{_target}/{_filter}.tsv"
            resources:
                mem_mb=lambda wildcards, input, attempt: 1500 * attempt,
                runtime=lambda wildcards, attempt: 20 * attempt,
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.script} --log {log} exposures --sim {params.sim:q} --target {params.target:q}"
                " --filter {params.filter} --sky-dir results/{params.target_name}/truth"
                " --out-dir results/{params.target_name}/simulated/cal"
                " --truth-dir results/{params.target_name}/truth/exposures"
                " --wisp-dir results/{params.target_name}/references/wisps"
                " --truth-table {output.table} {params.ramps}"


# The previous program's exposure on each NIRCam detector (the saturated target that left the
# simulator's previous-program persistence): history for the persistence jobs only, under
# simulated/history, never in the exposure table (corrections.persistence_mask.preceding).
for _target in [t for t in SELECTED.index if is_simulated(t) and simulated_history_detectors(t)]:

    rule:
        name:
            f"simulate_history_{_target}".replace("-", "_")
        input:
            truth=f"results/{_target}/truth/sky_truth.json",
            sources=f"results/{_target}/truth/sky_sources.ecsv",
        output:
            [simulated_history_path(_target, d) for d in simulated_history_detectors(_target)],
        params:
            script=script_path("simulate_survey.py"),
            sim=survey_sim_param(),
            target=sim_target_json(_target),
            target_name=_target,
        log:
            f"logs/simulate_history/{_target}.log",
        benchmark:
            f"benchmarks/simulate_history/{_target}.tsv"
        resources:
            mem_mb=lambda wildcards, attempt: 1500 * attempt,
            runtime=lambda wildcards, attempt: 10 * attempt,
        conda:
            "../envs/jwst.yaml"
        shell:
            "python {params.script} --log {log} history --sim {params.sim:q} --target {params.target:q}"
            " --sky-dir results/{params.target_name}/truth --out-dir results/{params.target_name}/simulated/history"


rule simulate_truth_table:
    input:
        lambda w: [
            f"results/{w.target}/truth/tables/{f}_exposures_truth.ecsv" for f in simulated_filters(w.target)
        ],
    output:
        "results/{target}/truth/{target}_exposures_truth.ecsv",
    params:
        script=script_path("simulate_survey.py"),
    log:
        "logs/simulate_truth_table/{target}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} truth-table {input} --out {output}"


rule simulate_truth_mosaic:
    input:
        truth="results/{target}/truth/sky_truth.json",
        sources="results/{target}/truth/sky_sources.ecsv",
        grid="results/{target}/mosaic/grid.json",
    output:
        "results/{target}/truth/mosaics/{target}_{filter}_truth.fits",
    params:
        script=script_path("simulate_survey.py"),
        sim=survey_sim_param(),
    log:
        "logs/simulate_truth_mosaic/{target}/{filter}.log",
    benchmark:
        "benchmarks/simulate_truth_mosaic/{target}/{filter}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} truth-mosaic --sim {params.sim:q} --filter {wildcards.filter}"
        " --sky-dir results/{wildcards.target}/truth --grid {input.grid} --out {output}"
