# Feature stores: one job per (representation, image shard).
import shlex


rule extract_features:
    input:
        shard=lambda w: f"data/shards/{rep_size(w.rep)}px/{w.split}/{w.shard}.tar",
    output:
        "data/features/{rep}/{split}/{shard}.h5",
    params:
        feature=lambda w: shlex.quote(REPS[w.rep]["feature"]),
        fparams=lambda w: as_json(REPS[w.rep]["params"]),
        # null compression: none
        settings=as_json(
            dict(
                pick(config["features"], "dtype", "batch_size", "device"),
                compression=config["features"]["compression"] or "none",
            )
        ),
    conda:
        "../../envs/pipeline.yaml"
    log:
        "logs/extract_features/{rep}/{split}/{shard}.log",
    benchmark:
        "benchmarks/extract_features/{rep}/{split}/{shard}.tsv"
    threads: 1
    priority: lambda w: train_priority(w.rep) if w.split == "train" else 0
    resources:
        gpu=extraction_gpu,
        runtime=120,
        mem_mb=4000,
    shell:
        "python -m pipeline extract --settings {params.settings} --feature {params.feature} --params {params.fparams}"
        " --shard {input.shard} --out {output} --threads {threads} 2> {log}"
