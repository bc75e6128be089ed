# Learned inversion (Dosovitskiy & Brox 2016): train one decoder per
# representation, then reconstruct the validation shards with it.


rule train_decoder:
    input:
        unpack(train_inputs),
    output:
        model="results/models/{rep}/decoder.pt",
        config="results/models/{rep}/config.json",
        metrics="results/models/{rep}/metrics.csv",
    params:
        settings=lambda w: as_json(train_settings(w.rep)),
        features=lambda w: features_arg(w.rep, "train"),
    log:
        "logs/train_decoder/{rep}.log",
    benchmark:
        "benchmarks/train_decoder/{rep}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: train_threads()
    priority: lambda w: train_priority(w.rep)
    resources:
        gpu=uses_gpu(config["decoders"]["device"]),
        runtime=2880,
        mem_mb=32000,
    shell:
        "python -m pipeline train --settings {params.settings} --representation {wildcards.rep}"
        " --images {input.images} {params.features} --threads {threads} --restart-if-changed"
        " --out results/models/{wildcards.rep}"
        " > {log} 2>&1"


rule train_autoencoder:
    input:
        images=lambda w: shard_paths(rep_size(w.rep), "train"),
    output:
        model="results/models/autoencoder/{rep}/decoder.pt",
        config="results/models/autoencoder/{rep}/config.json",
        metrics="results/models/autoencoder/{rep}/metrics.csv",
    params:
        settings=lambda w: as_json(train_settings(w.rep)),
        feature=lambda w: shlex.quote(REPS[w.rep]["feature"]),
        fparams=lambda w: as_json(REPS[w.rep]["params"]),
    log:
        "logs/train_autoencoder/{rep}.log",
    benchmark:
        "benchmarks/train_autoencoder/{rep}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: train_threads()
    resources:
        gpu=uses_gpu(config["decoders"]["device"]),
        runtime=2880,
        mem_mb=32000,
    shell:
        "python -m pipeline train --settings {params.settings} --representation {wildcards.rep}"
        " --images {input.images} --on-the-fly --feature {params.feature} --params {params.fparams} --finetune-encoder"
        " --threads {threads} --restart-if-changed"
        " --out results/models/autoencoder/{wildcards.rep}"
        " > {log} 2>&1"


rule reconstruct:
    input:
        model=lambda w: f"{model_dir(w)}/decoder.pt",
        images=lambda w: f"data/shards/{rep_size(w.rep)}px/val/{w.shard}.tar",
        features=reconstruct_features,
    output:
        "results/reconstructions/{method}/{rep}/{shard}.h5",
    wildcard_constraints:
        method=RECONSTRUCT_METHODS,
    params:
        features=lambda w, input: f"--features {input.features}" if input.features else "--on-the-fly",
        perturb=lambda w: perturb_arg(w.method),
        settings=as_json(pick(config["decoders"], "device")),
    log:
        "logs/reconstruct/{method}/{rep}/{shard}.log",
    benchmark:
        "benchmarks/reconstruct/{method}/{rep}/{shard}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        gpu=uses_gpu(config["decoders"]["device"]),
        runtime=60,
        mem_mb=8000,
    shell:
        "python -m pipeline reconstruct --settings {params.settings} --model {input.model} --images {input.images}"
        " {params.features} {params.perturb} --out {output} --threads {threads} > {log} 2>&1"


rule perturb_features:
    input:
        "data/features/{rep}/val/{shard}.h5",
    output:
        "data/features_perturbed/{kind}/{rep}/val/{shard}.h5",
    wildcard_constraints:
        kind="|".join(re.escape(k) for k in PERTURBATIONS),
    params:
        settings=as_json(pick(config, "seed")),
    log:
        "logs/perturb_features/{kind}/{rep}/{shard}.log",
    benchmark:
        "benchmarks/perturb_features/{kind}/{rep}/{shard}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate perturb --settings {params.settings} --features {input}"
        " --kind {wildcards.kind} --out {output} > {log} 2>&1"
