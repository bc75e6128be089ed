# Feature stores: one job per (representation, image shard).


rule extract_features:
    input:
        shard=lambda w: f"data/shards/{rep_size(w.rep)}px/{w.split}/{w.shard}.tar",
    output:
        "data/features/{rep}/{split}/{shard}.h5",
    params:
        feature=lambda w: REPS[w.rep]["feature"],
        fparams=lambda w: as_json(REPS[w.rep]["params"]),
        dtype=config["features"]["dtype"],
        compression=config["features"]["compression"] or "none",
        batch_size=config["features"]["batch_size"],
        device=config["features"]["device"],
    conda:
        "../../envs/pipeline.yaml"
    log:
        "logs/extract_features/{rep}/{split}/{shard}.log",
    benchmark:
        "benchmarks/extract_features/{rep}/{split}/{shard}.tsv"
    threads: 1
    resources:
        gpu=uses_gpu(config["features"]["device"]),
        runtime=120,
        mem_mb=4000,
    shell:
        "python -m pipeline extract --feature {params.feature} --params {params.fparams}"
        " --shard {input.shard} --out {output} --dtype {params.dtype} --compression {params.compression}"
        " --batch-size {params.batch_size} --device {params.device} --threads {threads} 2> {log}"
