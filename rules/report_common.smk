# Helpers of rules/report.smk: which QA products exist for a target (the report's sections)
# and where they come from. A section is listed when the step it shows is in the DAG.

REPORT_DIR = "results/{target}/report"


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


# Section titles, numbered (two digits: the report sorts them as text) in the order of the data flow.
SECTION = {
    "inputs": "00. Input validation",
    "mosaics": "01. Mosaics (quick look)",
    "composite": "02. Three-colour composite",
    "destripe": "03. 1/f destriping",
    "levels": "04. Level matching",
    "astrometry": "05. Astrometry",
    "anchoring": "06. Sky anchoring",
    "noise": "07. Noise",
    "psf": "08. PSF kernels",
    "depth": "09. Depths",
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
    for name, path, caption, section in optional_products(OPTIONAL_FIGURES, target):
        figures[name] = (path, caption, section)
    return figures  # fmt: skip


def rule_produces(path):
    """Whether some rule of the workflow makes ``path`` (a section of a later step is then shown)."""
    return _rule_produces(path, len(workflow.rules))


@lru_cache(maxsize=None)
def _rule_produces(path, n_rules):
    """``rule_produces`` for the ``n_rules`` rules defined so far (the key keeps parse-time answers apart)."""
    return any(rule.is_producer(path) for rule in workflow.rules if not rule.name.startswith("report_"))


# Figures and tables of the later steps (PSF matching, deep-field finishing, catalogs), shown
# when that step runs for the target: {name: (path with {target} and optionally {filter},
# caption file in report/, section, step)}; a {filter} entry gives one item per band.
OPTIONAL_FIGURES = {
    "psf_gaussian_search": ("results/psf/search/{filter}_gaussian_search.png", "psf_kernels.rst", "psf", "psf"),
    "noise_vs_smoothing": ("results/{target}/matched/qa/{target}_{filter}_noise_curve.png", "psf_noise.rst", "noise", "psf"),
    "background": ("results/{target}/background/qa/{target}_{filter}_background.png", "background.rst", "depth", "background"),
    "depth": ("results/{target}/depth/{target}_{filter}_depth.png", "depths.rst", "depth", "depth"),
    "mci_plane": ("results/{target}/catalogs/qa/{target}_mci_plane.png", "catalog.rst", "catalog", "catalogs"),
    "association_maps": ("results/{target}/catalogs/qa/{target}_associations.png", "catalog.rst", "catalog", "catalogs"),
}
OPTIONAL_TABLES = {
    "psf_fwhm": ("results/psf/psf_fwhm.ecsv", "psf_kernels.rst", "psf", "psf"),
    "psf_gaussian_targets": ("results/psf/gaussian_targets.ecsv", "psf_kernels.rst", "psf", "psf"),
    "depth": ("results/{target}/depth/{target}_{filter}_depth.ecsv", "depths.rst", "depth", "depth"),
    "cluster_candidates": ("results/{target}/catalogs/{target}_candidates.ecsv", "catalog.rst", "catalog", "catalogs"),
    "input_validation": ("results/{target}/validation/{target}_validation.tsv", "validation.rst", "inputs", "validation"),
}


def optional_step_runs(step, target):
    """Whether a later step runs for the target (its config switches and layouts)."""
    if step == "psf":
        return bool(psf_products(target))
    if step == "background":
        return background_applies(target)
    if step == "depth":
        return depth_applies(target)
    if step == "validation":
        return VALIDATION
    return bool(catalog_products(target))


def optional_products(entries, target):
    """(name, path, caption, section) of the entries whose step runs for the target, per band
    where the path has {filter}."""
    for name, (fmt, caption, section, step) in entries.items():
        if not optional_step_runs(step, target):
            continue
        for band in filters_of(target) if "{filter}" in fmt else [None]:
            path = fmt.format(target=target, filter=band)
            if rule_produces(path):
                yield (f"{name}_{band}" if band else name), path, caption, section


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
    for name, path, caption, section in optional_products(OPTIONAL_TABLES, target):
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


def section_caption(kind):
    """Params function: the caption text (report/<file>.rst) of a copied figure or table, which the
    rule's caption template inserts (one rule serves several kinds of figure)."""

    def caption(wildcards):
        entry = (step_figures if kind == "figure" else step_tables)(wildcards.target)[getattr(wildcards, kind)]
        return (Path(workflow.basedir) / "report" / entry[1]).read_text()

    return caption


def copied_figure(wildcards):
    return step_figures(wildcards.target)[wildcards.figure][0]


def table_sources(wildcards):
    return step_tables(wildcards.target)[wildcards.table][0]


def table_command(wildcards, input):
    """qa_plots.py subcommand turning the source(s) into TSV: JSON residuals or an ECSV table."""
    if all(str(p).endswith(".json") for p in input):
        return f"json-table {' '.join(map(shlex.quote, input))}"
    if str(input[0]).endswith(".tsv"):
        return f"tsv-html {shlex.quote(input[0])}"
    return f"ecsv-table {shlex.quote(input[0])}"


def composite_inputs(wildcards):
    """{red, green, blue: final mosaic} of the target's composite bands."""
    bands = composite_bands(wildcards.target)
    return {colour: final_mosaic(wildcards.target, band) for colour, band in zip(("red", "green", "blue"), bands)}


def benchmark_report_inputs(wildcards):
    """Everything else of a target: the run-time summary is made last, when every benchmark file exists."""
    mosaics = [final_mosaic(wildcards.target, f) for f in filters_of(wildcards.target)]
    return mosaics + target_report_products(wildcards.target)
