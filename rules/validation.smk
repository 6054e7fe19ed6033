# Early validation (issue 13): every exposure is checked before the first correction reads it.
# A real target's input files are checked while the exposure table is built (rules/common.smk,
# scripts/wflib/exposure_table.py), where `validation.on_bad_exposure: skip` can still leave a bad
# file out of the DAG. The cal-level files entering the corrections (simulated, made by Stage 2,
# or given) are checked again here, one job per target and filter; the corrections read them
# through the links under results/<t>/validated/ that this job makes only after they pass, so no
# correction starts on an unchecked exposure. A fault here always stops: the DAG is built.


for _target in SELECTED.index if VALIDATION else []:
    for _filter in validation_filters(_target):
        _names = list(exposures_of(_target, _filter, role=None)["name"])

        rule:
            name:
                rule_name("validate_inputs", _target, _filter)
            input:
                [input_cal_path(_target, n) for n in _names],
            output:
                links=[validated_path(_target, n) for n in _names],
                report=validation_band_report(_target, _filter),
            params:
                script=script_path("validate_inputs.py"),
                channels=",".join(config["mosaic"]["scale_multiple"]),
                link_dir=lambda wildcards, output: os.path.dirname(output.links[0]),
            log:
                f"logs/validate_inputs/{_target}/{_filter}.log",
            benchmark:
                f"benchmarks/validate_inputs/{_target}/{_filter}.tsv"
            resources:
                mem_mb=streaming_mem_mb,
                runtime=lambda wildcards, input, attempt: int((5 + len(input) / 20) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.script} --log {log} --level cal --on-bad stop --channels {params.channels}"
                " --link-dir {params.link_dir} --report {output.report} {input}"


rule validation_report:
    input:
        lambda w: [validation_band_report(w.target, f) for f in validation_filters(w.target)],
    output:
        "results/{target}/validation/{target}_validation.tsv",
    params:
        script=script_path("validate_inputs.py"),
        skipped=lambda w: skipped_inputs(w.target),
    log:
        "logs/validation_report/{target}.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --merge --skipped {params.skipped:q} --report {output} {input}"
