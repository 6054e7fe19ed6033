# Corrections that need all images of a band at once (level matching between dithers and
# tiles, MIRI off-field background, multi-exposure destriping). Output lists differ per band, so these rules are
# declared per (target, filter), like outlier detection.

for _target in SELECTED.index:
    for _filter in filters_of(_target):
        _inputs, _outputs = band_step_io("miri_background", _target, _filter)
        _offfield = offfield_exposures(_target, _filter)
        if _outputs and _offfield:

            rule:
                name:
                    rule_name("miri_background", _target, _filter)
                input:
                    science=_inputs,
                    offfield=_offfield,
                output:
                    images=_outputs,
                    report=f"results/{_target}/miri_background/{_filter}_pairs.json",
                params:
                    script=script_path("miri_background.py"),
                    params=step_params("miri_background", _target, "MIRI", _filter),
                    out_dir=lambda wildcards, output: os.path.dirname(output.report),
                log:
                    f"logs/miri_background/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/miri_background/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=band_mem_mb,
                    runtime=lambda wildcards, attempt: 30 * attempt,
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.script} --log {log} --params {params.params:q} --out-dir {params.out_dir}"
                    " --report {output.report} {input.science} --offfield {input.offfield}"

        _inputs, _outputs = band_step_io("level_match", _target, _filter)
        if _outputs:

            rule:
                name:
                    rule_name("level_match", _target, _filter)
                input:
                    _inputs,
                output:
                    images=_outputs,
                    report=f"results/{_target}/level_match/{_filter}_offsets.json",
                    qa=f"results/{_target}/level_match/{_filter}_overlaps.png",
                params:
                    script=script_path("level_match.py"),
                    params=step_params("level_match", _target, survey_plan.instrument_of(_filter), _filter),
                    out_dir=lambda wildcards, output: os.path.dirname(output.report),
                log:
                    f"logs/level_match/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/level_match/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=band_mem_mb,
                    runtime=lambda wildcards, attempt: 60 * attempt,
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.script} --log {log} --params {params.params:q} --out-dir {params.out_dir}"
                    " --report {output.report} --qa-png {output.qa} {input}"

        _inputs, _outputs = band_step_io("destripe_multitile", _target, _filter)
        if _outputs:

            rule:
                name:
                    rule_name("destripe_multitile", _target, _filter)
                input:
                    _inputs,
                output:
                    images=_outputs,
                    models=[f"results/{_target}/destripe_multitile/models/{Path(p).stem}_stripes.fits" for p in _outputs],
                params:
                    script=script_path("destripe_multitile.py"),
                    params=step_params("destripe_multitile", _target, "NIRCAM", _filter),
                    out_dir=lambda wildcards, output: os.path.dirname(output[0]),
                log:
                    f"logs/destripe_multitile/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/destripe_multitile/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=band_mem_mb,
                    runtime=lambda wildcards, attempt: 60 * attempt,
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.script} --log {log} --params {params.params:q} --out-dir {params.out_dir}"
                    " --noise-model-dir {params.out_dir}/models {input}"
