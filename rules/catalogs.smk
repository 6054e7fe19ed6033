# Catalogs of compact star clusters and multi-scale stellar associations (PHANGS-HST, Lee et al.
# 2022 Sec. 4; issue 11): HST-like UV-optical images (simulated for synthetic galaxies) ->
# point sources -> aperture photometry -> concentration indices -> synthetic clusters and MCI
# regions -> candidates; point sources -> associations. One job per target and step.


include: "catalog_inputs.smk"


rule simulate_hst:
    input:
        hst_simulation_guard,
    output:
        images=expand("results/{{target}}/hst/{{target}}_{band}_drc.fits", band=config["catalogs"]["bands"]),
        psfs=expand("results/{{target}}/hst/psf/{{target}}_{band}_psf.fits", band=config["catalogs"]["bands"]),
        truth="results/{target}/truth/hst/{target}_hst_truth.ecsv",
        associations="results/{target}/truth/hst/{target}_hst_associations_truth.ecsv",
    params:
        script=script_path("simulate_hst.py"),
        sim=json_param({**config["simulation"].get("hst", {}), "seed": config["simulation"]["seed"]}),
        target=lambda w: sim_target_json(w.target),
    log:
        "logs/simulate_hst/{target}.log",
    benchmark:
        "benchmarks/simulate_hst/{target}.tsv"
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --sim {params.sim:q} --target {params.target:q}"
        " --out-dir results/{wildcards.target}/hst --psf-dir results/{wildcards.target}/hst/psf"
        " --truth {output.truth} --truth-associations {output.associations}"


rule detect_sources:
    input:
        images=hst_images_of,
        psfs=hst_psfs_of,
        dolphot=dolphot_catalog,
    output:
        sources=f"{CATALOG_DIR}/{{target}}_sources.ecsv",
        points=f"{CATALOG_DIR}/{{target}}_pointsources.ecsv",
        points_fits=f"{CATALOG_DIR}/{{target}}_pointsources.fits",
    params:
        script=script_path("detect_sources.py"),
        images=lambda w, input: band_args("--image", input.images),
        psfs=lambda w, input: band_args("--psf", input.psfs),
        dolphot=lambda w, input: f"--dolphot {shlex.quote(input.dolphot[0])}" if input.dolphot else "",
        params=catalog_params("detection"),
    log:
        "logs/detect_sources/{target}.log",
    benchmark:
        "benchmarks/detect_sources/{target}.tsv"
    resources:
        mem_mb=lambda w, input, attempt: int(max(2000, 30 * input.size_mb) * attempt),
        runtime=lambda w, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} {params.images} {params.psfs} {params.dolphot}"
        " --sources {output.sources} --pointsources {output.points} --params {params.params:q}"


rule aperture_photometry:
    input:
        images=hst_images_of,
        psfs=hst_psfs_of,
        sources=f"{CATALOG_DIR}/{{target}}_sources.ecsv",
    output:
        f"{CATALOG_DIR}/{{target}}_photometry.ecsv",
    params:
        script=script_path("aperture_photometry.py"),
        images=lambda w, input: band_args("--image", input.images),
        psfs=lambda w, input: band_args("--psf", input.psfs),
        params=catalog_params("photometry"),
    log:
        "logs/aperture_photometry/{target}.log",
    benchmark:
        "benchmarks/aperture_photometry/{target}.tsv"
    resources:
        mem_mb=lambda w, input, attempt: int(max(2000, 20 * input.size_mb) * attempt),
        runtime=lambda w, attempt: 15 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} {params.images} {params.psfs} --sources {input.sources}"
        " --output {output} --params {params.params:q}"


rule concentration:
    input:
        image=lambda w: hst_image(w.target, "F555W"),
        psf=lambda w: hst_psf(w.target, "F555W"),
        photometry=f"{CATALOG_DIR}/{{target}}_photometry.ecsv",
        jwst=jwst_ci_mosaic,
    output:
        ecsv=f"{CATALOG_DIR}/{{target}}_sources_mci.ecsv",
        fits=f"{CATALOG_DIR}/{{target}}_sources_mci.fits",
    params:
        script=script_path("concentration.py"),
        jwst=lambda w, input: f"--jwst-image {shlex.quote(input.jwst[0])}" if input.jwst else "",
        params=catalog_params("concentration"),
    log:
        "logs/concentration/{target}.log",
    benchmark:
        "benchmarks/concentration/{target}.tsv"
    resources:
        mem_mb=lambda w, input, attempt: int(max(2000, 10 * input.size_mb) * attempt),
        runtime=lambda w, attempt: 15 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --image {input.image} --psf {input.psf}"
        " --photometry {input.photometry} --output {output.ecsv} {params.jwst} --params {params.params:q}"


rule inject_clusters:
    input:
        image=lambda w: hst_image(w.target, "F555W"),
        psf=lambda w: hst_psf(w.target, "F555W"),
        catalog=f"{CATALOG_DIR}/{{target}}_sources_mci.ecsv",
    output:
        table=f"{CATALOG_DIR}/{{target}}_synthetic_clusters.ecsv",
        regions=f"{CATALOG_DIR}/{{target}}_mci_regions.fits",
        qa=f"{CATALOG_DIR}/qa/{{target}}_synthetic_mci.png",
    params:
        script=script_path("inject_clusters.py"),
        distance=lambda w: target_distance(w.target),
        seed=lambda w: config["simulation"]["seed"],
        params=lambda w: json_param({**config["catalogs"].get("synthetic", {}),
                                     "detection": config["catalogs"].get("detection", {}),
                                     "concentration": config["catalogs"].get("concentration", {})}),
    log:
        "logs/inject_clusters/{target}.log",
    benchmark:
        "benchmarks/inject_clusters/{target}.tsv"
    resources:
        mem_mb=lambda w, input, attempt: int(max(2000, 10 * input.size_mb) * attempt),
        runtime=lambda w, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --image {input.image} --psf {input.psf} --catalog {input.catalog}"
        " --distance-mpc {params.distance} --seed {params.seed} --output {output.table}"
        " --regions {output.regions} --qa-png {output.qa} --params {params.params:q}"


rule select_clusters:
    input:
        catalog=f"{CATALOG_DIR}/{{target}}_sources_mci.ecsv",
        regions=f"{CATALOG_DIR}/{{target}}_mci_regions.fits",
    output:
        model=f"{CATALOG_DIR}/{{target}}_candidates.ecsv",
        model_fits=f"{CATALOG_DIR}/{{target}}_candidates.fits",
        polygon=f"{CATALOG_DIR}/{{target}}_candidates_polygon.ecsv",
        polygon_fits=f"{CATALOG_DIR}/{{target}}_candidates_polygon.fits",
        ds9=f"{CATALOG_DIR}/{{target}}_candidates.reg",
        qa=f"{CATALOG_DIR}/qa/{{target}}_mci_plane.png",
    params:
        script=script_path("select_clusters.py"),
        distance=lambda w: target_distance(w.target),
        params=catalog_params("selection"),
    log:
        "logs/select_clusters/{target}.log",
    benchmark:
        "benchmarks/select_clusters/{target}.tsv"
    resources:
        mem_mb=1500,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --catalog {input.catalog} --regions {input.regions}"
        " --distance-mpc {params.distance} --output {output.model} --output-polygon {output.polygon}"
        " --ds9 {output.ds9} --qa-png {output.qa} --params {params.params:q}"


rule associations:
    input:
        images=hst_images_of,
        points=f"{CATALOG_DIR}/{{target}}_pointsources.ecsv",
    output:
        table=f"{CATALOG_DIR}/{{target}}_associations.ecsv",
        table_fits=f"{CATALOG_DIR}/{{target}}_associations.fits",
        masks=f"{CATALOG_DIR}/{{target}}_association_masks.fits",
        ds9=f"{CATALOG_DIR}/{{target}}_associations.reg",
        qa=f"{CATALOG_DIR}/qa/{{target}}_associations.png",
    params:
        script=script_path("associations.py"),
        images=lambda w, input: band_args("--image", input.images),
        distance=lambda w: target_distance(w.target),
        params=catalog_params("associations"),
    log:
        "logs/associations/{target}.log",
    benchmark:
        "benchmarks/associations/{target}.tsv"
    resources:
        mem_mb=lambda w, input, attempt: int(max(2000, 20 * input.size_mb) * attempt),
        runtime=lambda w, attempt: 15 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --pointsources {input.points} {params.images}"
        " --distance-mpc {params.distance} --output {output.table} --masks {output.masks}"
        " --ds9 {output.ds9} --qa-png {output.qa} --params {params.params:q}"
