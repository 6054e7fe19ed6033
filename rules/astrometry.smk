# Astrometry (PHANGS-JWST Sec. 3.3 and 3.8): one shift per visit measured in a reference band
# and applied to every band of the instrument, then an absolute fit of the reference band to
# an external catalogue (for MIRI: NIRCam's aligned catalogue) propagated to the exposures of
# every band mapped to it. Jobs per (target, instrument) and per (target, reference band).

for _target in SELECTED.index:
    for _instrument in INSTRUMENTS:
        _inputs, _outputs = instrument_step_io("align_relative", _target, _instrument)
        if _outputs:
            _band = astrometry_reference_band("align_relative", _target, _instrument)
            _anchor = anchor_catalog(_target, _instrument)

            rule:
                name:
                    rule_name("align_relative", _target, _instrument)
                input:
                    images=_inputs,
                    anchor=[_anchor] if _anchor else [],
                output:
                    images=_outputs,
                    table=f"results/{_target}/align_relative/{_instrument}_shifts.ecsv",
                    catalog=f"results/{_target}/align_relative/{_instrument}_{_band}_catalog.ecsv",
                    qa=f"results/{_target}/align_relative/{_instrument}_scatter.png",
                    qa_json=f"results/{_target}/align_relative/{_instrument}_residuals.json",
                params:
                    script=script_path("align_relative.py"),
                    params=step_params("align_relative", _target, _instrument),
                    band=_band,
                    anchor=f"--anchor-catalog {_anchor}" if _anchor else "",
                    out_dir=lambda wildcards, output: os.path.dirname(output.table),
                log:
                    f"logs/align_relative/{_target}/{_instrument}.log",
                benchmark:
                    f"benchmarks/align_relative/{_target}/{_instrument}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, attempt: 60 * attempt,
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.script} --log {log} --params {params.params:q} --out-dir {params.out_dir}"
                    " --reference-band {params.band} {params.anchor} --table {output.table}"
                    " --catalog {output.catalog} --qa-png {output.qa} --qa-json {output.qa_json} {input.images}"

        _applies = instrument_step_io("align_absolute", _target, _instrument)[1]
        _mapping = absolute_mapping(_target, _instrument) if _applies else {}
        for _band in sorted(set(_mapping.values())):
            _inputs, _outputs = instrument_step_io(
                "align_absolute", _target, _instrument, [f for f, b in _mapping.items() if b == _band]
            )
            if not _outputs:
                continue

            rule:
                name:
                    rule_name("align_absolute", _target, _band)
                input:
                    images=_inputs,
                    refcat=absolute_refcat(_target, _instrument),
                output:
                    images=_outputs,
                    table=f"results/{_target}/align_absolute/{_instrument}_{_band}_fit.ecsv",
                    catalog=absolute_catalog(_target, _instrument, _band),
                    qa=f"results/{_target}/align_absolute/{_instrument}_{_band}_scatter.png",
                    qa_json=f"results/{_target}/align_absolute/{_instrument}_{_band}_residuals.json",
                params:
                    script=script_path("align_absolute.py"),
                    params=step_params("align_absolute", _target, _instrument),
                    band=_band,
                    band_map=json_param(_mapping),
                    out_dir=lambda wildcards, output: os.path.dirname(output.table),
                log:
                    f"logs/align_absolute/{_target}/{_band}.log",
                benchmark:
                    f"benchmarks/align_absolute/{_target}/{_band}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, attempt: 60 * attempt,
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.script} --log {log} --params {params.params:q} --out-dir {params.out_dir}"
                    " --refcat {input.refcat} --reference-band {params.band} --band-map {params.band_map:q}"
                    " --fit-table {output.table} --catalog {output.catalog} --qa-png {output.qa}"
                    " --qa-json {output.qa_json} {input.images}"
