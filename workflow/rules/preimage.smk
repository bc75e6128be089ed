# Natural pre-images (Mahendran & Vedaldi 2016, IJCV): a small gallery of activation
# maximisation, caricatures and masked inversions for a few taps of the network.
import shlex


PREIMAGE_MODES = ["maximise", "caricature", "invert"]


#: taps of the network (preimage.layers; pre-activation ones: a ReLU unit at 0 has no gradient)
PREIMAGE_LAYERS = config["preimage"]["layers"] if config["network"]["layers"] else []
#: what each gallery shows (captions)
PREIMAGE_SHOWS = {
    "maximise": "activation maximisation of channels (classes of the class scores)",
    "caricature": "caricatures of four validation images",
    "invert": "inversion from the central 3x3 neurons of four validation images",
}
#: what each gallery optimises; the energy's weights are the preset's (preimage.preset), the
#: data term's multiplier preimage.objective_weight
PREIMAGE_TARGETS = {
    "maximise": " ".join(
        [f"--units {' '.join(map(str, config['preimage']['units']))}"]
        + [f"--units-for {tap}={','.join(map(str, u))}" for tap, u in config["preimage"]["layer_units"].items()]
    ),
    "caricature": "--max-images 4",
    "invert": "--max-images 4 --window 3",
}


rule preimage_gallery:
    input:
        images=lambda w: shard_paths(net_size(), "val")[0],
    output:
        store="results/preimage/{mode}.h5",
        grid=report(
            "results/figures/preimage_{mode}.png",
            caption="../report/preimage.rst",
            category=MV2016,
            subcategory="Natural pre-images",
            labels=lambda w: {"gallery": PREIMAGE_SHOWS[w.mode]},
        ),
    wildcard_constraints:
        mode="maximise|caricature|invert",
    params:
        feature=shlex.quote(config["network"]["feature"]),
        fparams=as_json(config["network"]["params"]),
        layers=" ".join(PREIMAGE_LAYERS),
        targets=lambda w: PREIMAGE_TARGETS[w.mode],
        settings=as_json(
            dict(pick(config["preimage"], "iterations", "preset", "objective_weight"), seed=config["seed"])
        ),
        caption=lambda w: shlex.quote(
            f"Natural pre-images (Mahendran & Vedaldi 2016, IJCV): {PREIMAGE_SHOWS[w.mode]}; "
            f"network: {network_label()}"
        ),
    log:
        "logs/preimage/{mode}.log",
    benchmark:
        "benchmarks/preimage/{mode}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        runtime=60,
        mem_mb=4000,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline preimage --settings {params.settings} --mode {wildcards.mode}"
        " --feature {params.feature} --params {params.fparams} --layers {params.layers} --shard {input.images}"
        " {params.targets} --threads {threads} --out {output.store} --grid {output.grid}"
        " --caption {params.caption} > {log} 2>&1"
