# PHANGS-JWST Sec. 3.10 and 4.1: PSF models per band, Aniano et al. (2011) kernels (to Gaussians of
# the common resolutions and to the target's broadest band), PSF-matched mosaics, noise-vs-smoothing QA.
# PSFs and kernels do not depend on a target: results/psf/...; matched images: results/{target}/matched/.


rule psf_model:
    output:
        "results/psf/{filter}_psf.fits",
    params:
        script=script_path("psf_model.py"),
        params=lambda w: json_param(psf_config()["model"]),
    log:
        "logs/psf_model/{filter}.log",
    benchmark:
        "benchmarks/psf_model/{filter}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --filter {wildcards.filter} --params {params.params:q} --out {output}"


rule psf_fwhm_table:
    input:
        lambda w: [psf_path(f) for f in psf_bands()],
    output:
        "results/psf/psf_fwhm.ecsv",
    params:
        script=script_path("psf_model.py"),
    log:
        "logs/psf_fwhm_table/psf_fwhm_table.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --fwhm-table {output} {input}"


# Smallest very safe / safe / aggressive Gaussian of each band (W- thresholds), with a QA plot.
rule gaussian_search:
    input:
        "results/psf/{filter}_psf.fits",
    output:
        table="results/psf/search/{filter}_gaussian_search.ecsv",
        qa="results/psf/search/{filter}_gaussian_search.png",
    params:
        script=script_path("make_kernel.py"),
        params=lambda w: json_param(psf_config()["kernel"]),
    log:
        "logs/gaussian_search/{filter}.log",
    benchmark:
        "benchmarks/gaussian_search/{filter}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --source {input} --search-gaussian --params {params.params:q}"
        " --out {output.table} --qa-png {output.qa}"


rule gaussian_targets:
    input:
        lambda w: [f"results/psf/search/{f}_gaussian_search.ecsv" for f in psf_bands()],
    output:
        "results/psf/gaussian_targets.ecsv",
    params:
        script=script_path("make_kernel.py"),
    log:
        "logs/gaussian_targets/gaussian_targets.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --merge-searches {output} {input}"


rule kernel_to_gauss:
    input:
        "results/psf/{filter}_psf.fits",
    output:
        "results/psf/kernels/{filter}_to_gauss{res}.fits",
    wildcard_constraints:
        res=r"\d+p\d\d",
    params:
        script=script_path("make_kernel.py"),
        fwhm=lambda w: tag_resolution(w.res),
        params=lambda w: json_param(psf_config()["kernel"]),
    log:
        "logs/kernel_to_gauss/{filter}_gauss{res}.log",
    benchmark:
        "benchmarks/kernel_to_gauss/{filter}_gauss{res}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --source {input} --target gauss:{params.fwhm} --params {params.params:q}"
        " --out {output}"


rule kernel_to_band:
    input:
        source="results/psf/{filter}_psf.fits",
        target="results/psf/{ref}_psf.fits",
    output:
        "results/psf/kernels/{filter}_to_{ref}.fits",
    wildcard_constraints:
        ref=r"F\d{3,4}[WMN]2?",
    params:
        script=script_path("make_kernel.py"),
        params=lambda w: json_param(psf_config()["kernel"]),
    log:
        "logs/kernel_to_band/{filter}_to_{ref}.log",
    benchmark:
        "benchmarks/kernel_to_band/{filter}_to_{ref}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=lambda wildcards, attempt: 15 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --source {input.source} --target {input.target}"
        " --params {params.params:q} --out {output}"


rule match_to_gauss:
    input:
        image=lambda w: final_mosaic(w.target, w.filter),
        kernel="results/psf/kernels/{filter}_to_gauss{res}.fits",
    output:
        "results/{target}/matched/{target}_{filter}_gauss{res}.fits",
    wildcard_constraints:
        res=r"\d+p\d\d",
    params:
        script=script_path("convolve_image.py"),
        params=lambda w: json_param(psf_config()["convolve"]),
    log:
        "logs/match_to_gauss/{target}/{filter}_gauss{res}.log",
    benchmark:
        "benchmarks/match_to_gauss/{target}/{filter}_gauss{res}.tsv"
    resources:
        mem_mb=matched_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --kernel {input.kernel} --params {params.params:q}"
        " {input.image} {output}"


rule match_to_band:
    input:
        image=lambda w: final_mosaic(w.target, w.filter),
        kernel="results/psf/kernels/{filter}_to_{ref}.fits",
    output:
        "results/{target}/matched/{target}_{filter}_to_{ref}.fits",
    wildcard_constraints:
        ref=r"F\d{3,4}[WMN]2?",
    params:
        script=script_path("convolve_image.py"),
        params=lambda w: json_param(psf_config()["convolve"]),
    log:
        "logs/match_to_band/{target}/{filter}_to_{ref}.log",
    benchmark:
        "benchmarks/match_to_band/{target}/{filter}_to_{ref}.tsv"
    resources:
        mem_mb=matched_mem_mb,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --kernel {input.kernel} --params {params.params:q}"
        " {input.image} {output}"


# PHANGS-JWST Sec. 4.1 (Fig. 10): sky noise after Gaussian smoothing vs the uncorrelated prediction.
rule noise_curve:
    input:
        image=lambda w: final_mosaic(w.target, w.filter),
        psf="results/psf/{filter}_psf.fits",
    output:
        table="results/{target}/matched/qa/{target}_{filter}_noise_curve.ecsv",
        png="results/{target}/matched/qa/{target}_{filter}_noise_curve.png",
    params:
        script=script_path("noise_curve.py"),
        params=lambda w: json_param(psf_config()["noise_curve"].get("params", {})),
    log:
        "logs/noise_curve/{target}/{filter}.log",
    benchmark:
        "benchmarks/noise_curve/{target}/{filter}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2500 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --psf {input.psf} --params {params.params:q}"
        " --table {output.table} --png {output.png} {input.image}"
