# Per-exposure corrections between Stage 2 and the mosaic. Each exposure is corrected on its
# own (memory of one exposure), but a job takes a whole band through scripts/each_exposure.py
# so that jwst is imported once per band rather than once per file; outputs are the files
# the script writes when run alone on each exposure. Declared per (target, filter).

for _target in SELECTED.index:
    for _filter in filters_of(_target):
        # PHANGS-JWST Sec. 3.6.1 / CEERS Sec. 3.1.3: 1/f stripes of each NIRCam exposure.
        _inputs, _outputs = band_step_io("destripe", _target, _filter)
        if _outputs:

            rule:
                name:
                    rule_name("destripe", _target, _filter)
                input:
                    _inputs,
                output:
                    images=_outputs,
                    models=exposure_side_outputs("destripe", _outputs, "models/{name}_stripes.fits"),
                    qa=exposure_side_outputs("destripe", _outputs, "qa/{name}_destripe.png"),
                params:
                    runner=script_path("each_exposure.py"),
                    args=shlex.quote(f"--params {shlex.quote(step_params('destripe', _target, 'NIRCAM', _filter))}"),
                    out_dir=lambda wildcards, output: os.path.dirname(output[0]),
                log:
                    f"logs/destripe/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/destripe/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, input, attempt: int((5 + len(input) / 6) * attempt),
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.runner} destripe --log {log} --out-dir {params.out_dir} --output '{{name}}_cal.fits'"
                    " --per-file 'noise-model=models/{{name}}_stripes.fits' --per-file 'qa-png=qa/{{name}}_destripe.png'"
                    " --args {params.args} {input}"

        # PHANGS-JWST Sec. 3.4: the coronagraph region of each MIRI exposure becomes its own image.
        _inputs, _outputs = band_step_io("lyot_split", _target, _filter)
        if _outputs:

            rule:
                name:
                    rule_name("lyot_split", _target, _filter)
                input:
                    _inputs,
                output:
                    imager=_outputs,
                    lyot=exposure_side_outputs("lyot_split", _outputs, f"{{name}}{LYOT_SUFFIX}_cal.fits"),
                params:
                    runner=script_path("each_exposure.py"),
                    args=shlex.quote(f"--params {shlex.quote(step_params('lyot_split', _target, 'MIRI', _filter))}"),
                    out_dir=lambda wildcards, output: os.path.dirname(output[0]),
                    lyot_name=lambda wildcards: f"'lyot-out={{name}}{LYOT_SUFFIX}_cal.fits'",
                log:
                    f"logs/lyot_split/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/lyot_split/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, input, attempt: int((5 + len(input) / 6) * attempt),
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.runner} miri_lyot_split --log {log} --out-dir {params.out_dir}"
                    " --per-file 'imager-out={{name}}_cal.fits' --per-file {params.lyot_name}"
                    " --args {params.args} {input}"

        # CEERS Sec. 3.3.2: pedestal, VAR_RNOISE rescaled to the measured sky variance, zero variances -> inf.
        _inputs, _outputs = band_step_io("noise_model", _target, _filter)
        if _outputs:

            rule:
                name:
                    rule_name("noise_model", _target, _filter)
                input:
                    _inputs,
                output:
                    _outputs,
                params:
                    runner=script_path("each_exposure.py"),
                    args=shlex.quote(
                        f"--params {shlex.quote(step_params('noise_model', _target, survey_plan.instrument_of(_filter), _filter))}"
                    ),
                    out_dir=lambda wildcards, output: os.path.dirname(output[0]),
                log:
                    f"logs/noise_model/{_target}/{_filter}.log",
                benchmark:
                    f"benchmarks/noise_model/{_target}/{_filter}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, input, attempt: int((5 + len(input) / 6) * attempt),
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.runner} noise_model --log {log} --out-dir {params.out_dir}"
                    " --output '{{name}}_cal.fits' --args {params.args} {input}"
