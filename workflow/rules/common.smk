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
        from pipeline.data.sample import sample_settings

        sample_settings(ds["sample"])  # photograph names; keys of the shipped photographs with photos: skimage
    # The representations and their weights files: checked by the main process only.
    # The registry imports torch and every feature module (seconds), which each
    # cluster job's own Snakemake would otherwise repeat for a config already checked.
    n = config["network"]
    if workflow.is_main_process:
        from pipeline.features import check_params, verify_weights

        for name, r in config["representations"].items():
            try:
                check_params(r["feature"], r["params"])
                verify_weights(r["feature"], r["params"])
            except (KeyError, ValueError, FileNotFoundError) as e:
                raise ValueError(f"representations.{name}: {e.args[0] if isinstance(e, KeyError) else e}") from None
    if n["layers"] and workflow.is_main_process:
        try:
            check_params(n["feature"], dict(n["params"], layer=n["layers"][0]))
            verify_weights(n["feature"], n["params"])
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"network.params: {e.args[0] if isinstance(e, KeyError) else e}") from None
    for key in ("decoders", "mv"):
        section = config[key]
        for rep in section.get("train", section.get("representations", [])):
            if rep not in config["representations"]:
                raise ValueError(
                    f"{key}: {rep!r} is not a key of 'representations' ({sorted(config['representations'])})"
                )
    used = {"decoders.network_layers": config["decoders"]["network_layers"],
            "decoders.autoencoder_layers": config["decoders"]["autoencoder_layers"],
            "mv.network_layers": config["mv"]["network_layers"]}
    for key, layers in used.items():
        for layer in layers:
            if layer not in n["layers"]:
                raise ValueError(f"{key}: layer {layer!r} is not in network.layers {n['layers']}")
    if (config["evaluation"]["val_shards"] or 0) > ds["shards"]["val"]:
        raise ValueError(
            f"evaluation.val_shards: {config['evaluation']['val_shards']} of only {ds['shards']['val']} "
            "validation shards (dataset.shards.val)"
        )
    known = set(config["representations"]) | {net_rep(l) for l in n["layers"]}
    for rep in config["decoders"]["overrides"]:
        if rep not in known:
            raise ValueError(f"decoders.overrides.{rep}: not a representation ({sorted(known)})")
    for name in config["representations"]:
        if not name.replace("_", "").isalnum() or name.startswith(f"{n['feature']}_"):
            raise ValueError(
                f"representations.{name}: names are letters, digits and '_' and may not start with "
                f"'{n['feature']}_' (the network's layers are named so)"
            )


def network_label():
    """The network as captions name it: network.label, else its feature and weights."""
    n = config["network"]
    if n["label"]:
        return n["label"]
    w = n["params"].get("weights", "default")
    return f"{n['feature']}, weights {w}" + (" (untrained)" if w == "random" else "")


def net_rep(layer):
    """The representation of one layer of the network (``network``): {feature}_{layer}."""
    return f"{config['network']['feature']}_{layer}"


_check_config()
# captions and the report name the network so (derived once, here)
config["network"]["label"] = network_label()


# ---------------------------------------------------------------- representations
def representations():
    """name -> {'feature', 'params', 'image_size'} for every representation in use."""
    reps = {
        name: {"feature": r["feature"], "params": r["params"], "image_size": r["image_size"]}
        for name, r in config["representations"].items()
    }
    n = config["network"]
    for layer in n["layers"]:
        reps[net_rep(layer)] = {"feature": n["feature"], "params": dict(n["params"], layer=layer),
                                "image_size": n["image_size"]}
    return reps


REPS = representations()


def rep_size(rep):
    return REPS[rep]["image_size"]


def net_size():
    return config["network"]["image_size"]


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
    for which in ("shallow", "network"):  # how the runs went
        t += [f"results/figures/training_curves_{which}.png"] if training_runs(which) else []
        t += [f"results/figures/mv_energy_{which}.png"] if mv_runs(which) else []
    if config["network"]["layers"]:
        if figure7_points():
            t += ["results/figure7.csv", "results/figure7.png"]
        if d["network_layers"]:
            t += ["results/figures/grid_network.png"]
            t += [f"results/models/{net_rep(l)}/decoder.pt" for l in d["network_layers"]]
        t += [f"results/figures/{fig}.png" for fig in FIGURE_LAYERS if figure_layers(fig)]
        if PREIMAGE_LAYERS:
            t += expand("results/figures/preimage_{mode}.png", mode=PREIMAGE_MODES)
    return t
