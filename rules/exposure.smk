# Per-exposure corrections between Stage 2 and the mosaic (one job per exposure).


rule lyot_split:
    input:
        step_input("lyot_split"),
    output:
        imager="results/{target}/lyot_split/{name}_cal.fits",
        lyot="results/{target}/lyot_split/{name}_lyot_cal.fits",
    wildcard_constraints:
        name=r"jw\d{11}_\d{5}_\d{5}_mirimage",
    params:
        script=script_path("miri_lyot_split.py"),
        params=step_params("lyot_split"),
    log:
        "logs/lyot_split/{target}/{name}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/jwst.yaml"
    shell:
        "python {params.script} --log {log} --params {params.params:q}"
        " --imager-out {output.imager} --lyot-out {output.lyot} {input}"
