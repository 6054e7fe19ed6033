# Input functions and parameters of the finishing rules (rules/finishing.smk): which targets get
# the tiered background and depths, which files a release ships, memory of the jobs.


def finishing_config(part):
    return config.get("finishing", {}).get(part, {})


def background_applies(target):
    cfg = finishing_config("background")
    return bool(cfg.get("enabled", False)) and target_row(target)["layout"] in cfg.get("layouts", [])


def background_params(filter=None):
    """JSON for mosaic_background.py: `params`, updated by `filters.<band>` for a band's jobs."""
    cfg = finishing_config("background")
    params = dict(cfg.get("params", {}))
    if filter is not None:
        params = deep_merge(params, cfg.get("filters", {}).get(filter, {}))
    return json_param(params)


def background_tiers_path(target, name):
    return f"results/{target}/background/tiers/{target}_{name}_tiers.fits"


def background_mask_path(target):
    return f"results/{target}/background/{target}_bkgmask.fits"


def background_path(target, filter):
    return f"results/{target}/background/{target}_{filter}_i2d.fits"


def background_qa_path(target, filter):
    return f"results/{target}/background/qa/{target}_{filter}_background.png"


def extra_mask_images(target):
    """Pixel-aligned HST-like images whose source masks join the target's merged mask: {name: path}."""
    paths = [p.format(target=target) for p in finishing_config("background").get("extra_mask_images", [])]
    return {f"extra{i}": p for i, p in enumerate(paths, start=1)}


def background_tier_masks(wildcards):
    names = list(filters_of(wildcards.target)) + list(extra_mask_images(wildcards.target))
    return [background_tiers_path(wildcards.target, n) for n in names]


def background_tiers_input(wildcards):
    extra = extra_mask_images(wildcards.target)
    if wildcards.name in extra:
        return extra[wildcards.name]
    return final_mosaic(wildcards.target, wildcards.name)


def depth_applies(target):
    return background_applies(target) and bool(finishing_config("depth").get("enabled", False))


def depth_psf(target, filter):
    """PSF of a band for the depth's encircled energy (config `finishing.depth.psf`).

    `auto`: a simulated target's mosaics carry the simulator's PSF (results/psf_sim/), real data
    the band's PSF model (rules/psf.smk, results/psf/); any other value is a {filter} pattern.
    """
    pattern = finishing_config("depth").get("psf", "auto")
    if pattern == "auto":
        pattern = "results/psf_sim/{filter}_psf.fits" if is_simulated(target) else "results/psf/{filter}_psf.fits"
    return pattern.format(filter=filter)


def depth_table_path(target, filter):
    return f"results/{target}/depth/{target}_{filter}_depth.ecsv"


def depth_plot_path(target, filter):
    return f"results/{target}/depth/{target}_{filter}_depth.png"


def simulator_psf_args(wildcards):
    """Mosaic pixel scale of the band and the top-hats a drizzled mosaic's PSF carries:
    the detector pixel (the simulator integrates over it) and the drizzle footprint (x pixfrac)."""
    channel = survey_plan.channel_of(wildcards.filter)
    scale = config["mosaic"]["pixel_scale_arcsec"] * config["mosaic"]["scale_multiple"][channel]
    detector = survey_plan.CHANNELS[channel]["pixscale"]
    boxes = f"{detector},{detector * config['mosaic']['pixfrac']}"
    return f"--pixel-scale {scale} --pixel-boxes {boxes}"


def release_mosaic(target, filter):
    """The mosaic a user downloads: background-subtracted (deep fields), else the final mosaic."""
    return background_path(target, filter) if background_applies(target) else final_mosaic(target, filter)


def release_qa_files(target):
    """QA plots and tables shipped with a target's release."""
    files = []
    for filt in filters_of(target):
        if background_applies(target):
            files.append(background_qa_path(target, filt))
        if depth_applies(target):
            files += [depth_table_path(target, filt), depth_plot_path(target, filt)]
        if band_step_io("level_match", target, filt)[1]:
            files += [f"results/{target}/level_match/{filt}_offsets.json", f"results/{target}/level_match/{filt}_overlaps.png"]
    if anchored_filters(target):
        files += [f"results/{target}/anchored/{target}_anchoring.ecsv", f"results/{target}/anchored/{target}_anchoring.png"]
    for instrument in INSTRUMENTS:
        if instrument_step_io("align_absolute", target, instrument)[1]:
            for band in sorted(set(absolute_mapping(target, instrument).values())):
                files += [
                    f"results/{target}/align_absolute/{instrument}_{band}_fit.ecsv",
                    f"results/{target}/align_absolute/{instrument}_{band}_scatter.png",
                ]
    return files


def release_extra_products(target):
    """Per-band products shipped when configured (`finishing.release.extra_products`, e.g. the
    PSF-matched images of rules/psf.smk): patterns with {target} and {filter}."""
    patterns = finishing_config("release").get("extra_products", [])
    return [p.format(target=target, filter=f) for p in patterns for f in filters_of(target)]


def release_inputs(wildcards):
    t = wildcards.target
    return {
        "mosaics": [release_mosaic(t, f) for f in filters_of(t)],
        "exposures": final_exposures_all_filters(wildcards),
        "qa": release_qa_files(t),
        "extra": release_extra_products(t),
    }


def release_path(target):
    return f"results/{target}/release"


def finishing_products(target):
    """Final products of the finishing step for a target: its release directory."""
    return [release_path(target)] if finishing_config("release").get("enabled", False) else []


def finishing_mem_mb(wildcards, input, attempt):
    """Memory of a per-band finishing job from the size of its first input (the mosaic, ~28 bytes per
    pixel): tests/bench/mosaic_background.py measured 2.0x (tiers) and 3.4x (subtract) the file size at
    peak for a 50-megapixel mosaic; 4x plus 1 GB, at least 2 GB, a 30000-pixel-square guess in dry runs."""
    first = input[0]
    size_mb = os.path.getsize(first) / 1e6 if os.path.exists(first) else 28 * 30000**2 / 1e6
    return int(max(2000, 4 * size_mb + 1000) * attempt)
