# The run report (`snakemake --report report.html`): quick looks, QA figures and tables of every
# step that ran, per target, with captions in report/ that say what to look for; and the
# comparison with a previous release (rule regress). A section appears when the products it
# shows are in the DAG: the input functions below ask the same helpers as the rules that make
# them (step_applies, band_step_io, anchored_filters, ...). Figures are made by
# scripts/qa_plots.py; figures a step already draws (scatterballs, overlap graphs, anchoring
# fits) are copied into results/<target>/report/ so that the report flag stays in this file.

report: "../report/workflow.rst"


localrules:
    report_copy_figure,
    report_table,
    report_regress_table,


REPORT_DIR = "results/{target}/report"
CAPTIONS = Path(workflow.basedir) / "report"


def report_config():
    return config.get("report", {})


def report_enabled():
    return report_config().get("enabled", True)


def report_flag(path, caption, subcategory, **labels):
    """``report()`` of a QA product: category = target, a numbered subcategory, labels from wildcards."""
    return report(
        path,
        caption=f"../report/{caption}",
        category="{target}",
        subcategory=subcategory,
        labels=labels or None,
    )


# Section titles, numbered so that they sort in the order of the data flow.
SECTION = {
    "mosaics": "1. Mosaics (quick look)",
    "composite": "2. Three-colour composite",
    "destripe": "3. 1/f destriping",
    "levels": "4. Level matching",
    "astrometry": "5. Astrometry",
    "anchoring": "6. Sky anchoring",
    "noise": "7. Noise",
    "psf": "8. PSF kernels",
    "depth": "9. Depths",
    "catalog": "10. Catalogs",
    "regress": "11. Comparison with the previous release",
    "benchmarks": "12. Run time and memory",
}


# ----------------------------------------------------------------------- input functions
def composite_bands(target):
    """(red, green, blue) of a target: the first configured triple it observed, else its
    longest, middle and shortest band; None with fewer than three bands."""
    bands = filters_of(target)
    for triple in report_config().get("composites", []):
        if all(b in bands for b in triple):
            return tuple(triple)
    if len(bands) < 3:
        return None
    by_wavelength = sorted(bands, key=band_wavelength)
    return by_wavelength[-1], by_wavelength[len(by_wavelength) // 2], by_wavelength[0]


def destripe_models(target, filter):
    """Stripe models of a band's single-exposure destriping (destripe.py --noise-model)."""
    outputs = band_step_io("destripe", target, filter)[1]
    return exposure_side_outputs("destripe", outputs, "models/{name}_stripes.fits")


def multitile_models(target, filter):
    outputs = band_step_io("destripe_multitile", target, filter)[1]
    return [f"results/{target}/destripe_multitile/models/{Path(p).stem}_stripes.fits" for p in outputs]


def relative_astrometry_products(target):
    """{instrument: reference band} of the relative-astrometry jobs of a target."""
    return {
        i: astrometry_reference_band("align_relative", target, i)
        for i in INSTRUMENTS
        if instrument_step_io("align_relative", target, i)[1]
    }


def absolute_astrometry_products(target):
    """[(instrument, reference band)] of the absolute-astrometry jobs of a target."""
    jobs = []
    for instrument in INSTRUMENTS:
        if instrument_step_io("align_absolute", target, instrument)[1]:
            jobs += [(instrument, band) for band in sorted(set(absolute_mapping(target, instrument).values()))]
    return jobs


# Figures a step draws itself, copied into the report folder: {name: (source, caption, section)}.
def step_figures(target):
    figures = {}
    for filt in filters_of(target):
        if band_step_io("level_match", target, filt)[1]:
            figures[f"level_match_{filt}_graph"] = (
                f"results/{target}/level_match/{filt}_overlaps.png", "level_graph.rst", "levels")
    for instrument, band in relative_astrometry_products(target).items():
        figures[f"align_relative_{instrument}_scatter"] = (
            f"results/{target}/align_relative/{instrument}_scatter.png", "astrometry_relative.rst", "astrometry")
    for instrument, band in absolute_astrometry_products(target):
        figures[f"align_absolute_{instrument}_{band}_scatter"] = (
            f"results/{target}/align_absolute/{instrument}_{band}_scatter.png", "astrometry_absolute.rst", "astrometry")
    if anchored_filters(target):
        figures["anchoring_fit"] = (f"results/{target}/anchored/{target}_anchoring.png", "anchoring.rst", "anchoring")
    return figures  # fmt: skip


def rule_produces(path):
    """Whether some rule of the workflow makes ``path`` (a section of a later step is then shown)."""
    return any(rule.is_producer(path) for rule in workflow.rules if not rule.name.startswith("report_"))


# Tables of steps added later (issues 7, 10, 11), shown when a rule produces them:
# {name: (path with {target}, caption, section)}. A step's own figure can be listed in
# step_figures the same way; a new section needs only a line here and a caption.
OPTIONAL_TABLES = {
    "psf_kernel_metrics": ("results/psf/{target}_kernel_metrics.ecsv", "psf_kernels.rst", "psf"),
    "depths": ("results/{target}/depth/{target}_depths.ecsv", "depths.rst", "depth"),
    "catalog_summary": ("results/{target}/catalog/{target}_catalog_summary.ecsv", "catalog.rst", "catalog"),
}


def step_tables(target):
    """{name: (source, caption, section)} of tables shown in the report (ECSV/JSON -> TSV)."""
    tables = {}
    if relative_astrometry_products(target):
        tables["align_relative_residuals"] = (
            [f"results/{target}/align_relative/{i}_residuals.json" for i in relative_astrometry_products(target)],
            "astrometry_table.rst", "astrometry")
    if absolute_astrometry_products(target):
        tables["align_absolute_residuals"] = (
            [f"results/{target}/align_absolute/{i}_{b}_residuals.json" for i, b in absolute_astrometry_products(target)],
            "astrometry_table.rst", "astrometry")
    if anchored_filters(target):
        tables["anchoring_fit"] = ([f"results/{target}/anchored/{target}_anchoring.ecsv"], "anchoring_table.rst", "anchoring")
    for name, (fmt, caption, section) in OPTIONAL_TABLES.items():
        path = fmt.format(target=target)
        if rule_produces(path):
            tables[name] = ([path], caption, section)
    return tables  # fmt: skip


def previous_release_mosaic(target, filter):
    """The previous release's mosaic of a band (regress.previous_release), or None.

    The release directory is laid out like results/ (a previous run's results/ folder, or a
    release with the same names): <dir>/<target>/anchored|mosaic/<target>_<band>_i2d.fits,
    or flat: <dir>/<target>_<band>_i2d.fits. The first that exists is used.
    """
    root = config.get("regress", {}).get("previous_release") or ""
    if not root:
        return None
    root = Path(root)
    name = f"{target}_{filter}_i2d.fits"
    for candidate in (root / target / "anchored" / name, root / target / "mosaic" / name, root / name):
        if candidate.exists():
            return str(candidate)
    return None


def regress_pairs(target):
    """{band: previous mosaic} of the bands of a target found in the previous release."""
    pairs = {f: previous_release_mosaic(target, f) for f in filters_of(target)}
    return {f: p for f, p in pairs.items() if p}


def report_products(wildcards=None):
    """Every QA product of the selected targets (the report's content), when report.enabled."""
    if not report_enabled():
        return []
    products = []
    for target in SELECTED.index:
        products += target_report_products(target)
        products.append(f"results/{target}/report/benchmarks/{target}_benchmarks.png")
    return products


def target_report_products(target):
    """QA products of one target, except the run-time summary (which waits for all of them)."""
    out = f"results/{target}/report"
    products = [f"{out}/mosaics/{target}_{f}_quicklook.png" for f in filters_of(target)]
    if composite_bands(target):
        products.append(f"{out}/composite/{target}_rgb.png")
    for filt in filters_of(target):
        if destripe_models(target, filt):
            products.append(f"{out}/destripe/{target}_{filt}_stripes.png")
        if multitile_models(target, filt):
            products.append(f"{out}/destripe/{target}_{filt}_multitile_stripes.png")
        if band_step_io("level_match", target, filt)[1]:
            products.append(f"{out}/level_match/{target}_{filt}_offsets.png")
    products += [f"{out}/figures/{name}.png" for name in step_figures(target)]
    products += [f"{out}/tables/{name}.html" for name in step_tables(target)]
    products.append(f"{out}/noise/{target}_noise.png")
    if regress_pairs(target):
        products.append(f"{out}/regress/{target}_regress.html")
    return products


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
        lambda w: [final_mosaic(w.target, b) for b in composite_bands(w.target)],
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
        "python {params.script} --log {log} composite --red {input[0]} --green {input[1]} --blue {input[2]}"
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


def copied_figure(wildcards):
    return step_figures(wildcards.target)[wildcards.figure][0]


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
        script=script_path("qa_plots.py"),
    log:
        "logs/report_copy_figure/{target}/{figure}.log",
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} copy {input} {output}"


def table_sources(wildcards):
    return step_tables(wildcards.target)[wildcards.table][0]


def table_command(wildcards, input):
    """qa_plots.py subcommand turning the source(s) into TSV: JSON residuals or an ECSV table."""
    if all(str(p).endswith(".json") for p in input):
        return "json-table " + " ".join(map(shlex.quote, input))
    return "ecsv-table " + shlex.quote(input[0])


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
        products=lambda w: [final_mosaic(w.target, f) for f in filters_of(w.target)]
        + target_report_products(w.target),
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
