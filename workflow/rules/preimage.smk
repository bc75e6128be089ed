# Natural pre-images (Mahendran & Vedaldi 2016, IJCV): a small gallery of activation
# maximisation, caricatures and masked inversions for a few AlexNet layers.
import shlex


PREIMAGE_MODES = ["maximise", "caricature", "invert"]


#: pre-ReLU taps of the configured paper layers (a ReLU unit at 0 has no gradient)
PREIMAGE_LAYERS = [f"{l}_raw" for l in config["preimage"]["layers"] if l in config["alexnet"]["layers"]]
#: what each gallery shows (captions)
PREIMAGE_SHOWS = {
    "maximise": "activation maximisation of channels 0-3",
    "caricature": "caricatures of four validation images",
    "invert": "inversion from the central 3x3 neurons of four validation images",
}
#: what each gallery optimises; the energy's weights are the preset's (preimage.preset), the
#: data term's multiplier preimage.objective_weight
PREIMAGE_TARGETS = {
    "maximise": "--units 0 1 2 3",
    "caricature": "--max-images 4",
    "invert": "--max-images 4 --window 3",
}


rule preimage_gallery:
    input:
        images=lambda w: shard_paths(config["alexnet"]["image_size"], "val")[0],
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
        fparams=as_json(
            {"arch": config["alexnet"]["arch"], "weights": config["alexnet"]["weights"], "seed": config["seed"]}
        ),
        layers=" ".join(PREIMAGE_LAYERS),
        targets=lambda w: PREIMAGE_TARGETS[w.mode],
        settings=as_json(
            dict(pick(config["preimage"], "iterations", "preset", "objective_weight"), seed=config["seed"])
        ),
        caption=lambda w: shlex.quote(
            f"Natural pre-images (Mahendran & Vedaldi 2016, IJCV): {PREIMAGE_SHOWS[w.mode]}; "
            f"AlexNet {config['alexnet']['arch']}, weights "
            f"{config['alexnet']['weights']}{' (untrained)' if config['alexnet']['weights'] == 'random' else ''}"
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
        " --feature alexnet --params {params.fparams} --layers {params.layers} --shard {input.images}"
        " {params.targets} --threads {threads} --out {output.store} --grid {output.grid}"
        " --caption {params.caption} > {log} 2>&1"
