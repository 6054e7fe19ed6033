# Input functions and helpers of rules/catalogs.smk (snakemake --lint wants them apart from the rules).

CATALOG_DIR = "results/{target}/catalogs"


def catalog_targets():
    """Selected targets that get catalogs: catalogs.enabled and the target's layout in catalogs.layouts."""
    cfg = config.get("catalogs", {})
    if not cfg.get("enabled", False):
        return []
    return [t for t in SELECTED.index if target_row(t)["layout"] in cfg.get("layouts", [])]


def simulates_hst(target):
    return is_simulated(target) and target_row(target)["layout"] in config["simulation"].get("hst", {}).get("layouts", [])


def hst_simulation_guard(wildcards):
    """No inputs; a clear error when a target that is not simulated would need simulated HST images."""
    if not simulates_hst(wildcards.target):
        raise ValueError(
            f"target {wildcards.target}: no HST-like images at {hst_image(wildcards.target, 'F555W')} and the target "
            f"is not simulated (set catalogs.hst_images to the target's DRC files, or add its layout to simulation.hst.layouts)"
        )
    return []


def hst_image(target, band):
    return config["catalogs"]["hst_images"].format(target=target, band=band)


def hst_psf(target, band):
    return config["catalogs"]["hst_psfs"].format(target=target, band=band)


def hst_bands():
    return list(config["catalogs"]["bands"])


def hst_images_of(wildcards):
    return [hst_image(wildcards.target, b) for b in hst_bands()]


def hst_psfs_of(wildcards):
    return [hst_psf(wildcards.target, b) for b in hst_bands()]


def band_args(flag, paths):
    """--image F275W=path ... in the order of catalogs.bands."""
    return " ".join(f"{flag} {b}={shlex.quote(p)}" for b, p in zip(hst_bands(), paths))


def target_distance(target):
    """Distance (Mpc) from the sheet; catalogs need it for physical scales."""
    distance = target_row(target).get("distance_mpc")
    if distance is None or pd.isna(distance):
        raise ValueError(f"target {target}: distance_mpc is empty in {config['targets_sheet']} (catalogs need it)")
    return float(distance)


def jwst_ci_mosaic(wildcards):
    """The JWST mosaic whose CI is measured too (catalogs.jwst_ci_band), if the target observed it."""
    band = config["catalogs"].get("jwst_ci_band")
    if band and band in filters_of(wildcards.target):
        return [final_mosaic(wildcards.target, band)]
    return []


def dolphot_catalog(wildcards):
    path = config["catalogs"].get("dolphot")
    return [path.format(target=wildcards.target)] if path else []


def catalog_params(step):
    return json_param(config["catalogs"].get(step, {}))


def catalog_products(target):
    """Catalogs, regions, masks and QA plots of a target (empty unless catalogs apply to it)."""
    if target not in catalog_targets():
        return []
    d = CATALOG_DIR.format(target=target)
    return [
        f"{d}/{target}_sources_mci.ecsv",
        f"{d}/{target}_candidates.ecsv",
        f"{d}/{target}_candidates_polygon.ecsv",
        f"{d}/{target}_candidates.reg",
        f"{d}/qa/{target}_mci_plane.png",
        f"{d}/qa/{target}_synthetic_mci.png",
        f"{d}/{target}_associations.ecsv",
        f"{d}/{target}_association_masks.fits",
        f"{d}/{target}_associations.reg",
        f"{d}/qa/{target}_associations.png",
    ]
