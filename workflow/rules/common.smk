# Configuration validation and the helpers the rules of several files share;
# each stage's own helpers sit in its rule file.
import json
import shlex
from pathlib import Path

from snakemake.utils import validate

from pipeline.vocabulary import FIGURE_LAYERS


validate(config, "../schemas/config.schema.yaml", set_default=True)

SPLITS = ["train", "val"]


def _check_config():
    """Checks the schema cannot express; each error names the key."""
    ds = config["dataset"]
    if ds["source"] == "imagefolder":
        root = ds["imagefolder"]["root"]
        if not root:
            raise ValueError(
                "dataset.imagefolder.root: must be set when dataset.source is 'imagefolder'"
            )
        if not Path(root).expanduser().is_dir():
            raise ValueError(f"dataset.imagefolder.root: no such directory: {root}")
    if ds["source"] == "sample":
        from pipeline.data.sample import SAMPLE_PHOTOS

        bad = sorted(set(ds["sample"]["val_photos"]) - set(SAMPLE_PHOTOS))
        if bad:
            raise ValueError(
                f"dataset.sample.val_photos: unknown photograph(s) {bad}; allowed: {sorted(SAMPLE_PHOTOS)}"
            )
    # The representations and their weights files: checked by the main process only.
    # The registry imports torch and every feature module (seconds), which each
    # cluster job's own Snakemake would otherwise repeat for a config already checked.
    if workflow.is_main_process:
        from pipeline.features import check_params, verify_weights

        for name, r in config["representations"].items():
            try:
                check_params(r["feature"], r["params"])
                verify_weights(r["feature"], r["params"])
            except (KeyError, ValueError, FileNotFoundError) as e:
                raise ValueError(f"representations.{name}: {e.args[0] if isinstance(e, KeyError) else e}") from None
    a = config["alexnet"]
    if a["layers"] and a["weights"] not in ("random", "torchvision") and workflow.is_main_process:
        from pipeline.features import verify_weights

        try:
            verify_weights("alexnet", {"arch": a["arch"], "weights": a["weights"], "seed": config["seed"]})
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"alexnet.weights: {e}") from None
    for key in ("decoders", "mv"):
        section = config[key]
        for rep in section.get("train", section.get("representations", [])):
            if rep not in config["representations"]:
                raise ValueError(
                    f"{key}: {rep!r} is not a key of 'representations' ({sorted(config['representations'])})"
                )
    for layer in config["decoders"]["alexnet_layers"] + config["decoders"]["autoencoder_layers"] + config["mv"]["alexnet_layers"]:
        if layer not in config["alexnet"]["layers"]:
            raise ValueError(f"decoders/mv: AlexNet layer {layer!r} is not in alexnet.layers {config['alexnet']['layers']}")
    if (config["evaluation"]["val_shards"] or 0) > ds["shards"]["val"]:
        raise ValueError(
            f"evaluation.val_shards: {config['evaluation']['val_shards']} of only {ds['shards']['val']} "
            "validation shards (dataset.shards.val)"
        )
    known = set(config["representations"]) | {f"alexnet_{l}" for l in config["alexnet"]["layers"]}
    for rep in config["decoders"]["overrides"]:
        if rep not in known:
            raise ValueError(f"decoders.overrides.{rep}: not a representation ({sorted(known)})")
    for name in config["representations"]:
        if not name.replace("_", "").isalnum() or name.startswith("alexnet"):
            raise ValueError(
                f"representations.{name}: names are letters, digits and '_' and may not start with 'alexnet'"
            )


_check_config()


# ---------------------------------------------------------------- representations
def representations():
    """name -> {'feature', 'params', 'image_size'} for every representation in use."""
    reps = {
        name: {"feature": r["feature"], "params": r["params"], "image_size": r["image_size"]}
        for name, r in config["representations"].items()
    }
    a = config["alexnet"]
    for layer in a["layers"]:
        reps[f"alexnet_{layer}"] = {
            "feature": "alexnet",
            "params": {"layer": layer, "arch": a["arch"], "weights": a["weights"], "seed": config["seed"]},
            "image_size": a["image_size"],
        }
    return reps


REPS = representations()


def rep_size(rep):
    return REPS[rep]["image_size"]


def image_sizes():
    return sorted({r["image_size"] for r in REPS.values()})


# ------------------------------------------------------------------------ shards
def n_shards(split):
    return config["dataset"]["shards"][split]


def shard_ids(split):
    return [f"{i:05d}" for i in range(n_shards(split))]


def shard_paths(size, split):
    return expand("data/shards/{size}px/{split}/{shard}.tar", size=size, split=split, shard=shard_ids(split))


def eval_shard_ids():
    """The validation shards evaluated (evaluation.val_shards: the first K)."""
    return shard_ids("val")[: config["evaluation"]["val_shards"]]


def eval_shard_paths(size):
    return expand("data/shards/{size}px/val/{shard}.tar", size=size, shard=eval_shard_ids())


def feature_paths(rep, split):
    return expand("data/features/{rep}/{split}/{shard}.h5", rep=rep, split=split, shard=shard_ids(split))


def uses_gpu(device):
    """1 when a job's device setting may use a GPU (for the `gpu` resource), else 0."""
    return int(str(device).startswith("cuda") or device == "auto")


def extraction_gpu(wildcards):
    """The `gpu` resource of a feature extraction job: 0 for a representation that
    runs on the CPU whatever the device (registry trait cpu_only: sparse SIFT), so
    that its jobs never hold the GPU the others wait for; else as features.device says."""
    from pipeline.features import traits  # imports torch: only where this is asked

    if traits(REPS[wildcards.rep]["feature"]).cpu_only:
        return 0
    return uses_gpu(config["features"]["device"])


def as_json(obj):
    """A config value as one shell-quoted JSON word (for params): ``--params``, or a
    job's ``--settings`` (an object of its options, which the CLI expands)."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def pick(section, *keys, **renamed):
    """A job's settings: ``keys`` of a config section, and option=key pairs for
    options named otherwise (``lam="lambda"``)."""
    return {**{k: section[k] for k in keys}, **{opt: section[k] for opt, k in renamed.items()}}


wildcard_constraints:
    split="train|val",
    shard=r"\d{5}",
    size=r"\d+",
    rep="|".join(sorted(REPS)) or "NONE",


# --------------------------------------------------------------------- targets
def all_targets():
    """The paper's outputs (rule all); functions from the other rule files."""
    d = config["decoders"]
    t = ["results/table2.csv", "results/table2.md", "results/table2.html", "results/figures/grid_shallow.png"]
    t += expand("results/models/{rep}/decoder.pt", rep=d["train"])
    if mv_table1_rows():
        t += ["results/mv_table1.csv", "results/mv_table1.md", "results/mv_table1.html"]
    for which in ("shallow", "alexnet"):  # how the runs went
        t += [f"results/figures/training_curves_{which}.png"] if training_runs(which) else []
        t += [f"results/figures/mv_energy_{which}.png"] if mv_runs(which) else []
    if config["alexnet"]["layers"]:
        if figure7_points():
            t += ["results/figure7.csv", "results/figure7.png"]
        if d["alexnet_layers"]:
            t += ["results/figures/grid_alexnet.png"]
            t += expand("results/models/alexnet_{layer}/decoder.pt", layer=d["alexnet_layers"])
        t += [f"results/figures/{fig}.png" for fig in FIGURE_LAYERS if figure_layers(fig)]
        if PREIMAGE_LAYERS:
            t += expand("results/figures/preimage_{mode}.png", mode=PREIMAGE_MODES)
    return t
