# Optimisation baselines: Mahendran & Vedaldi (2015) and HOGgles (Vondrick et al. 2013).


rule invert_mv:
    input:
        images=lambda w: f"data/shards/{rep_size(w.rep)}px/val/{w.shard}.tar",
    output:
        store="results/reconstructions/mv/{rep}/{shard}.h5",
        log="results/reconstructions/mv/{rep}/{shard}.csv",
    params:
        feature=lambda w: REPS[w.rep]["feature"],
        fparams=lambda w: as_json(REPS[w.rep]["params"]),
        hyper=mv_params(),
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
        "OMP_NUM_THREADS={threads} python -m pipeline invert-mv --shard {input.images} --out {output.store} --log {output.log}"
        " --feature {params.feature} --params {params.fparams} --representation {wildcards.rep}"
        " {params.hyper} > {log} 2>&1"


rule train_hoggles:
    input:
        lambda w: shard_paths(rep_size("hog"), "train"),
    output:
        "results/models/hoggles/dictionary.npz",
    params:
        fparams=as_json(REPS["hog"]["params"]) if "hog" in REPS else "{}",
        atoms=config["hoggles"]["atoms"],
        window=config["hoggles"]["window"],
        lam=config["hoggles"]["lambda"],
        windows=config["hoggles"]["windows"],
        epochs=config["hoggles"]["epochs"],
        seed=config["seed"],
    log:
        "logs/train_hoggles.log",
    benchmark:
        "benchmarks/train_hoggles.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        runtime=720,
        mem_mb=16000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline invert-hoggles train --shards {input} --out {output}"
        " --feature hog --params {params.fparams} --atoms {params.atoms} --window {params.window}"
        " --lam {params.lam} --windows {params.windows} --epochs {params.epochs} --seed {params.seed}"
        " --threads {threads} > {log} 2>&1"


rule invert_hoggles:
    input:
        dictionary="results/models/hoggles/dictionary.npz",
        images=lambda w: f"data/shards/{rep_size('hog')}px/val/{w.shard}.tar",
    output:
        "results/reconstructions/hoggles/hog/{shard}.h5",
    params:
        solver=config["hoggles"]["solver"],
        max_images=f"--max-images {config['mv']['max_images']}" if config["mv"]["max_images"] else "",
    log:
        "logs/invert_hoggles/{shard}.log",
    benchmark:
        "benchmarks/invert_hoggles/{shard}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        runtime=240,
        mem_mb=8000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline invert-hoggles invert --dict {input.dictionary}"
        " --shard {input.images} --out {output} --solver {params.solver} {params.max_images} > {log} 2>&1"
