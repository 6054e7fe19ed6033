# The run report (`snakemake --report report.html`): quick looks, QA figures and tables of every
# step that ran, per target, with captions in report/ that say what to look for; and the
# comparison with a previous release (rule regress). A section appears when the products it
# shows are in the DAG: the input functions (rules/report_common.smk) ask the same helpers as the rules that make
# them (step_applies, band_step_io, anchored_filters, ...). Figures are made by
# scripts/qa_plots.py; figures a step already draws (scatterballs, overlap graphs, anchoring
# fits) are copied into results/<target>/report/ so that the report flag stays in this file.

report: "../report/workflow.rst"


include: "report_common.smk"


localrules:
    report_copy_figure,
    report_table,
    report_regress_table,


# ----------------------------------------------------------------------- figures
rule report_quicklook:
    input:
        lambda w: final_mosaic(w.target, w.filter),
    output:
        report_flag(f"{REPORT_DIR}/mosaics/{{target}}_{{filter}}_quicklook.png", "quicklook.rst",
                    SECTION["mosaics"], band="{filter}"),
    params:
        script=script_path("qa_plots.py"),
        max_side=report_config().get("max_side_px", 1200),
    log:
        "logs/report_quicklook/{target}/{filter}.log",
    benchmark:
        "benchmarks/report_quicklook/{target}/{filter}.tsv"
    resources:
        mem_mb=lambda wildcards, input, attempt: int((1000 + 0.5 * input.size_mb) * attempt),
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} quicklook --max-side {params.max_side} --out {output} {input}"


rule report_composite:
    input:
        unpack(composite_inputs),
    output:
        report(
            f"{REPORT_DIR}/composite/{{target}}_rgb.png",
            caption="../report/composite.rst",
            category="{target}",
            subcategory=SECTION["composite"],
            labels=lambda w: {"bands (R/G/B)": "/".join(composite_bands(w.target))},
        ),
    params:
        script=script_path("qa_plots.py"),
        max_side=report_config().get("max_side_px", 1200),
    log:
        "logs/report_composite/{target}.log",
    benchmark:
        "benchmarks/report_composite/{target}.tsv"
    resources:
        mem_mb=lambda wildcards, input, attempt: int((1500 + 1.5 * input.size_mb) * attempt),
        runtime=lambda wildcards, attempt: 15 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} composite --red {input.red} --green {input.green} --blue {input.blue}"
        " --title {wildcards.target} --max-side {params.max_side} --out {output}"


rule report_destripe:
    input:
        lambda w: destripe_models(w.target, w.filter),
    output:
        report_flag(f"{REPORT_DIR}/destripe/{{target}}_{{filter}}_stripes.png", "destripe.rst",
                    SECTION["destripe"], band="{filter}", step="single exposure"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_destripe/{target}/{filter}.log",
    resources:
        mem_mb=1500,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} destripe --title '{wildcards.target} {wildcards.filter}:"
        " single-exposure stripe models' --out {output} {input}"


rule report_destripe_multitile:
    input:
        lambda w: multitile_models(w.target, w.filter),
    output:
        report_flag(f"{REPORT_DIR}/destripe/{{target}}_{{filter}}_multitile_stripes.png", "destripe.rst",
                    SECTION["destripe"], band="{filter}", step="multi-exposure"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_destripe_multitile/{target}/{filter}.log",
    resources:
        mem_mb=1500,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} destripe --title '{wildcards.target} {wildcards.filter}:"
        " multi-exposure stripe models' --out {output} {input}"


rule report_level_offsets:
    input:
        "results/{target}/level_match/{filter}_offsets.json",
    output:
        report_flag(f"{REPORT_DIR}/level_match/{{target}}_{{filter}}_offsets.png", "level_offsets.rst",
                    SECTION["levels"], band="{filter}", figure="solved offsets"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_level_offsets/{target}/{filter}.log",
    resources:
        mem_mb=1000,
        runtime=lambda wildcards, attempt: 5 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} level-offsets --title '{wildcards.target} {wildcards.filter}'"
        " --out {output} {input}"


localrules: report_copy_figure


rule report_copy_figure:
    input:
        copied_figure,
    output:
        report(
            f"{REPORT_DIR}/figures/{{figure}}.png",
            caption="../report/step_figure.rst",
            category="{target}",
            subcategory=lambda w: SECTION[step_figures(w.target)[w.figure][2]],
            labels={"figure": "{figure}"},
        ),
    params:
        caption=section_caption("figure"),
    log:
        "logs/report_copy_figure/{target}/{figure}.log",
    resources:
        mem_mb=100,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    # a copy, so that the report can carry the step's own figure: no Python start-up per figure
    shell:
        "cp {input} {output} 2> {log}"


rule report_table:
    input:
        table_sources,
    output:
        tsv=f"{REPORT_DIR}/tables/{{table}}.tsv",
        html=report(
            f"{REPORT_DIR}/tables/{{table}}.html",
            caption="../report/step_table.rst",
            category="{target}",
            subcategory=lambda w: SECTION[step_tables(w.target)[w.table][2]],
            labels={"table": "{table}"},
        ),
    params:
        script=script_path("qa_plots.py"),
        command=table_command,
        caption=section_caption("table"),
    log:
        "logs/report_table/{target}/{table}.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} {params.command} --out {output.tsv} --html {output.html}"


rule report_noise:
    input:
        lambda w: [mosaic_path(w.target, f) for f in filters_of(w.target)],
    output:
        figure=report_flag(f"{REPORT_DIR}/noise/{{target}}_noise.png", "noise.rst", SECTION["noise"],
                           figure="error map vs measured noise"),
        table=f"{REPORT_DIR}/noise/{{target}}_noise.tsv",
        html=report_flag(f"{REPORT_DIR}/noise/{{target}}_noise.html", "noise_table.rst", SECTION["noise"],
                         figure="table"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_noise/{target}.log",
    benchmark:
        "benchmarks/report_noise/{target}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2500 * attempt,
        runtime=lambda wildcards, input, attempt: int((10 + len(input)) * attempt),
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} noise --out {output.figure} --table {output.table}"
        " --html {output.html} {input}"


# Run time and memory of every job of the target, from the benchmark files: it waits for all
# other products of the target, then reads benchmarks/<rule>/<target>/*.tsv.
rule report_benchmarks:
    input:
        benchmark_report_inputs,
    output:
        figure=report_flag(f"{REPORT_DIR}/benchmarks/{{target}}_benchmarks.png", "benchmarks.rst",
                           SECTION["benchmarks"], figure="per rule"),
        table=f"{REPORT_DIR}/benchmarks/{{target}}_benchmarks.tsv",
        html=report_flag(f"{REPORT_DIR}/benchmarks/{{target}}_benchmarks.html", "benchmarks_table.rst",
                         SECTION["benchmarks"], figure="table"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_benchmarks/{target}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} benchmarks benchmarks --target {wildcards.target}"
        " --out {output.figure} --table {output.table} --html {output.html}"


# ----------------------------------------------------------------------- regression
# Each mosaic reprojected onto the previous release's grid and subtracted (regress.previous_release).
for _target in SELECTED.index:
    _pairs = regress_pairs(_target)
    if _pairs:

        rule:
            name:
                f"regress_{_target}".replace("-", "_")
            input:
                new=[final_mosaic(_target, f) for f in _pairs],
                old=list(_pairs.values()),
            output:
                table=f"results/{_target}/regress/{_target}_regress.tsv",
                images=[f"results/{_target}/regress/{Path(final_mosaic(_target, f)).stem}_regress.fits" for f in _pairs],
                figures=[
                    report(f"results/{_target}/regress/{Path(final_mosaic(_target, f)).stem}_regress.png",
                           caption="../report/regress.rst", category=_target, subcategory=SECTION["regress"],
                           labels={"band": f})
                    for f in _pairs
                ],
            params:
                script=script_path("regress.py"),
                pairs=" ".join(f"{final_mosaic(_target, f)}={old}" for f, old in _pairs.items()),
                out_dir=f"results/{_target}/regress",
            log:
                f"logs/regress/{_target}.log",
            benchmark:
                f"benchmarks/regress/{_target}.tsv"
            resources:
                mem_mb=lambda wildcards, input, attempt: int((1000 + 6 * input.size_mb / max(1, len(input) / 2)) * attempt),
                runtime=lambda wildcards, input, attempt: int((10 + 2 * len(input)) * attempt),
            conda:
                "../envs/jwst.yaml"
            shell:
                "python {params.script} --log {log} --out-dir {params.out_dir} --table {output.table} {params.pairs}"


rule report_regress_table:
    input:
        "results/{target}/regress/{target}_regress.tsv",
    output:
        report_flag(f"{REPORT_DIR}/regress/{{target}}_regress.html", "regress_table.rst", SECTION["regress"],
                    band="all"),
    params:
        script=script_path("qa_plots.py"),
    log:
        "logs/report_regress_table/{target}.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} tsv-html --title 'This run vs the previous release' --html {output} {input}"
