# Optimisation baselines: Mahendran & Vedaldi (2015) and HOGgles (Vondrick et al. 2013).
import shlex


rule invert_mv:
    input:
        images=lambda w: f"data/shards/{rep_size(w.rep)}px/val/{w.shard}.tar",
        preceding=lambda w: preceding_manifests(rep_size(w.rep), w.shard),
    output:
        store="results/reconstructions/mv/{rep}/{shard}.h5",
        log="results/reconstructions/mv/{rep}/{shard}.csv",
    params:
        feature=lambda w: shlex.quote(REPS[w.rep]["feature"]),
        fparams=lambda w: as_json(REPS[w.rep]["params"]),
        preceding=lambda w, input: preceding_arg(input),
        # null iterations: the paper's schedule
        settings=as_json(
            dict(
                pick(
                    config["mv"], "iterations", "max_images", "restarts", "batch_size", "optimizer", "tv_source",
                    "device",
                ),
                seed=config["seed"],
            )
        ),
    log:
        "logs/invert_mv/{rep}/{shard}.log",
    benchmark:
        "benchmarks/invert_mv/{rep}/{shard}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        gpu=uses_gpu(config["mv"]["device"]),
        runtime=1440,
        mem_mb=16000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline invert-mv --settings {params.settings} --shard {input.images}"
        " --out {output.store} --log {output.log} --feature {params.feature} --params {params.fparams}"
        " --representation {wildcards.rep} {params.preceding} > {log} 2>&1"


rule train_hoggles:
    input:
        lambda w: shard_paths(rep_size("hog"), "train"),
    output:
        "results/models/hoggles/dictionary.npz",
    params:
        fparams=as_json(REPS["hog"]["params"]) if "hog" in REPS else "{}",
        settings=as_json(
            dict(pick(config["hoggles"], "atoms", "window", "windows", "epochs", lam="lambda"), seed=config["seed"])
        ),
    log:
        "logs/train_hoggles.log",
    benchmark:
        "benchmarks/train_hoggles.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    # a one-core chain (dictionary, then inversion) that only Table 2 waits for:
    # started early it runs beside the decoders instead of after them (without it,
    # a timed run ended with 3 min of it alone on one core; README)
    priority: 1
    resources:
        runtime=720,
        mem_mb=16000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline invert-hoggles train --settings {params.settings}"
        " --shards {input} --out {output} --feature hog --params {params.fparams} --threads {threads} > {log} 2>&1"


rule invert_hoggles:
    input:
        dictionary="results/models/hoggles/dictionary.npz",
        images=lambda w: f"data/shards/{rep_size('hog')}px/val/{w.shard}.tar",
        preceding=lambda w: preceding_manifests(rep_size("hog"), w.shard),
    output:
        "results/reconstructions/hoggles/hog/{shard}.h5",
    params:
        preceding=lambda w, input: preceding_arg(input),
        settings=as_json(dict(pick(config["hoggles"], "solver"), **pick(config["mv"], "max_images"))),
    log:
        "logs/invert_hoggles/{shard}.log",
    benchmark:
        "benchmarks/invert_hoggles/{shard}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    priority: 1
    resources:
        runtime=240,
        mem_mb=8000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline invert-hoggles invert --settings {params.settings}"
        " --dict {input.dictionary} --shard {input.images} --out {output} {params.preceding} > {log} 2>&1"
