# Deep-field detector artefacts (CEERS Sec. 3.1), at the exposure level before destriping:
# wisps (a scaled template per detector and filter; a job per target, filter and detector)
# and persistence (from the time-ordered exposures of a detector, all filters; a job per
# target and detector). Snowballs are a ramp-level correction (rules/stage12.smk); where it ran,
# the wisp fit does not mask snowball wings (wisp_params).
# The jobs run their script on each exposure through scripts/each_exposure.py, like
# rules/exposure.smk; an exposure outside `corrections.<step>` (instrument, detectors,
# filters, overrides) skips the step in the input functions.


def exposure_detector(target, name):
    return EXPOSURES.loc[(target, base_name(name)), "detector"]


def detector_step_io(step, target, detector, filters):
    """(inputs, outputs) of a per-detector step over ``filters``: the exposures of ``detector``."""
    inputs, outputs = [], []
    for filt in filters:
        band_in, band_out = band_step_io(step, target, filt)
        for path_in, path_out in zip(band_in, band_out):
            name = Path(path_out).name.removesuffix("_cal.fits")
            if exposure_detector(target, name) == detector:
                inputs.append(path_in)
                outputs.append(path_out)
    return inputs, outputs


def step_detectors(step, target, filters):
    """Detectors with at least one exposure of ``filters`` that the step touches."""
    names = [Path(p).name.removesuffix("_cal.fits") for f in filters for p in band_step_io(step, target, f)[1]]
    return sorted({exposure_detector(target, n) for n in names})


def wisp_template_path(target, detector, filter):
    """Wisp template of a detector and filter (corrections.wisp_subtract.template; names in lower case)."""
    fmt = step_config("wisp_subtract")["template"]
    return fmt.format(target=target, detector=detector.lower(), filter=filter.lower())


def wisp_params(target, outputs, instrument, filter, detector):
    """wisp_subtract parameters of a job making ``outputs``. Exposures whose snowballs were refitted in
    their ramps (CEERS Sec. 3.1.1, rules/stage12.smk: simulated or real) carry the grown snowball footprints as JUMP_DET
    and no unflagged wings around them: when every exposure of the job is one, the fit does not mask
    snowball wings (snowball_min_jump_px 0; with the mask, 3 radii around those footprints, the
    1/8-scale deep field's F200W fit kept 3k of ~50k pixels in one exposure and failed in another).
    The persistence step's wing mask serves only its fixed-pattern search (off by default)."""
    params = json.loads(step_params("wisp_subtract", target, instrument, filter, detector))
    names = [Path(p).name.removesuffix("_cal.fits") for p in outputs]
    if names and all(has_ramp(target, n) or real_snowball(target, n) for n in names):
        params["snowball_min_jump_px"] = 0
    return json_param(params)


def each_exposure_args(*parts):
    """--args value of scripts/each_exposure.py (one shell word)."""
    return shlex.quote(" ".join(parts))


for _target in SELECTED.index:
    # CEERS Sec. 3.1.2: wisps on NIRCam A3/A4/B3/B4 in F150W/F200W, one scale per exposure.
    for _filter in filters_of(_target):
        for _detector in step_detectors("wisp_subtract", _target, [_filter]):
            _inputs, _outputs = detector_step_io("wisp_subtract", _target, _detector, [_filter])
            _instrument = survey_plan.instrument_of(_filter)

            rule:
                name:
                    f"wisp_subtract_{_target}_{_filter}_{_detector}".replace("-", "_")
                input:
                    images=_inputs,
                    template=wisp_template_path(_target, _detector, _filter),
                output:
                    _outputs,
                params:
                    runner=script_path("each_exposure.py"),
                    args=lambda wildcards, input, _t=_target, _o=_outputs, _i=_instrument, _f=_filter, _d=_detector: each_exposure_args(
                        f"--template {shlex.quote(input.template)}",
                        f"--params {shlex.quote(wisp_params(_t, _o, _i, _f, _d))}",
                    ),
                    out_dir=lambda wildcards, output: os.path.dirname(output[0]),
                log:
                    f"logs/wisp_subtract/{_target}/{_filter}_{_detector}.log",
                benchmark:
                    f"benchmarks/wisp_subtract/{_target}/{_filter}_{_detector}.tsv"
                resources:
                    mem_mb=streaming_mem_mb,
                    runtime=lambda wildcards, input, attempt: int((5 + len(input) / 3) * attempt),
                conda:
                    "../envs/jwst.yaml"
                shell:
                    "python {params.runner} wisp_subtract --log {log} --out-dir {params.out_dir}"
                    " --output '{{name}}_cal.fits' --args {params.args} {input.images}"

    # CEERS Sec. 3.1.4 / 4: persistence of saturated pixels and of fixed patterns, per detector
    # through every filter in time order (an earlier exposure in any filter leaves it), and of
    # the exposures of preceding programs on the detector (corrections.persistence_mask.preceding).
    _filters = [f for f in filters_of(_target) if survey_plan.instrument_of(f) == "NIRCAM"]
    for _detector in step_detectors("persistence_mask", _target, _filters):
        _inputs, _outputs = detector_step_io("persistence_mask", _target, _detector, _filters)

        rule:
            name:
                f"persistence_mask_{_target}_{_detector}".replace("-", "_")
            input:
                images=_inputs,
                preceding=preceding_exposures(_target, _detector),
            output:
                images=_outputs,
                qa=exposure_side_outputs("persistence_mask", _outputs, "qa/{name}_persistence.png"),
            params:
                runner=script_path("each_exposure.py"),
                args=lambda wildcards, input, _t=_target: each_exposure_args(
                    f"--params {shlex.quote(step_params('persistence_mask', _t, 'NIRCAM'))}",
                    "--history",
                    *map(shlex.quote, input.images),
                    *(["--preceding", *map(shlex.quote, input.preceding)] if input.preceding else []),
                ),
                out_dir=lambda wildcards, output: os.path.dirname(output.images[0]),
            log:
                f"logs/persistence_mask/{_target}/{_detector}.log",
            benchmark:
                f"benchmarks/persistence_mask/{_target}/{_detector}.tsv"
            resources:
                # up to 12 exposures (SCI, DQ: ~0.5x a cal file) and 24 significance/excess maps (~0.7x) are
                # cached while a detector's history is scanned: ~25x one file, 40x with headroom
                mem_mb=lambda wildcards, input, attempt: int(max(2000, 1000 + 40 * input.size_mb / max(len(input), 1)) * attempt),
                runtime=lambda wildcards, input, attempt: int((5 + len(input)) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.runner} persistence_mask --log {log} --out-dir {params.out_dir}"
                " --output '{{name}}_cal.fits' --per-file 'qa-png=qa/{{name}}_persistence.png'"
                " --args {params.args} {input.images}"
