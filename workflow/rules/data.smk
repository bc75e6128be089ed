# Image shards: index -> one job per shard -> merged manifest.


rule list_images:
    output:
        "data/index/{split}.json",
    params:
        dataset=as_json(config["dataset"]),
        settings=as_json(pick(config, "seed")),
    conda:
        "../../envs/pipeline.yaml"
    log:
        "logs/list_images/{split}.log",
    benchmark:
        "benchmarks/list_images/{split}.tsv"
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "python -m pipeline list-images --settings {params.settings} --split {wildcards.split}"
        " --dataset {params.dataset} --out {output} 2> {log}"


rule make_shard:
    input:
        "data/index/{split}.json",
    output:
        tar="data/shards/{size}px/{split}/{shard}.tar",
        manifest="data/shards/{size}px/{split}/{shard}.json",
    params:
        n_shards=lambda w: n_shards(w.split),
        shard=lambda w: int(w.shard),
        settings=as_json(pick(config["dataset"], "format")),
    conda:
        "../../envs/pipeline.yaml"
    log:
        "logs/make_shard/{size}px/{split}/{shard}.log",
    benchmark:
        "benchmarks/make_shard/{size}px/{split}/{shard}.tsv"
    priority: lambda w: shard_priority(w.split)
    resources:
        runtime=60,
        mem_mb=2000,
    shell:
        "python -m pipeline make-shard --settings {params.settings} --index {input} --shard {params.shard}"
        " --n-shards {params.n_shards} --size {wildcards.size} --out {output.tar} --manifest {output.manifest}"
        " 2> {log}"


rule shard_manifest:
    input:
        lambda w: expand(
            "data/shards/{size}px/{split}/{shard}.json", size=w.size, split=w.split, shard=shard_ids(w.split)
        ),
    output:
        "data/shards/{size}px/{split}/manifest.json",
    conda:
        "../../envs/pipeline.yaml"
    log:
        "logs/shard_manifest/{size}px/{split}.log",
    benchmark:
        "benchmarks/shard_manifest/{size}px/{split}.tsv"
    shell:
        "python -m pipeline manifest --out {output} {input} 2> {log}"
