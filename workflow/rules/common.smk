# Configuration validation and the helpers the rules share.
import json
import re
import shlex
from pathlib import Path

from snakemake.utils import validate

from pipeline.vocabulary import DECODER_METHODS, FIGURE7_CURVES, FIGURE_LAYERS, MV_TABLE1_ROWS, PERTURBATIONS, TABLE2_ROWS


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
    a = config["alexnet"]
    if a["layers"] and a["weights"] not in ("random", "torchvision"):
        from pipeline.features.alexnet_weights import check_weights

        try:
            check_weights(a["arch"], a["weights"], download=False)
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


def feature_paths(rep, split):
    return expand("data/features/{rep}/{split}/{shard}.h5", rep=rep, split=split, shard=shard_ids(split))


def uses_gpu(device):
    """1 when a job's device setting may use a GPU (for the `gpu` resource), else 0."""
    return int(str(device).startswith("cuda") or device == "auto")


def as_json(obj):
    """A config value as one shell-quoted JSON word (for params)."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


wildcard_constraints:
    split="train|val",
    shard=r"\d{5}",
    size=r"\d+",
    rep="|".join(sorted(REPS)) or "NONE",


# ------------------------------------------------------------ train rules
#: {method} wildcard of the reconstruct rule: the decoders, and a decoder on perturbed features
RECONSTRUCT_METHODS = "|".join(
    re.escape(m) for m in DECODER_METHODS + tuple(f"ours-{k}" for k in PERTURBATIONS)
)


def train_inputs(w):
    rep = w.rep
    inputs = {"images": shard_paths(rep_size(rep), "train")}
    if config["features"]["store"] == "precomputed":
        inputs["features"] = feature_paths(rep, "train")
    return inputs


def decoder_settings(rep):
    """decoders.* with decoders.overrides[rep] applied (steps given there win over epochs)."""
    d = dict(config["decoders"])
    over = d.pop("overrides").get(rep, {})
    if "epochs" in over and "steps" not in over:
        d["steps"] = None
    d.update(over)
    return d


def decoder_params(rep):
    d = decoder_settings(rep)
    length = f"--steps {d['steps']}" if d["steps"] else f"--epochs {d['epochs']}"
    size = f" --image-size {d['image_size']}" if d["image_size"] else ""
    return (
        f"--width {d['width']} {length} --batch-size {d['batch_size']} --lr {d['lr']}{size}"
        f" --lr-milestones {' '.join(str(m) for m in d['lr_milestones'])} --lr-gamma {d['lr_gamma']}"
        f" --checkpoint-every {d['checkpoint_every']} --device {d['device']} --amp {d['amp']}"
        f" --workers {d['workers']} --seed {config['seed']}"
    )


def features_arg(rep, split, key="features"):
    """--features STORES for precomputed stores, or --on-the-fly with the representation."""
    if config["features"]["store"] == "precomputed":
        return "--features " + " ".join(feature_paths(rep, split))
    r = REPS[rep]
    return f"--on-the-fly --feature {r['feature']} --params {as_json(r['params'])}"


def reconstruct_features(w):
    if w.method.startswith("ours-"):  # perturbed features, decoder trained on clean ones
        return [f"data/features_perturbed/{w.method[5:]}/{w.rep}/val/{w.shard}.h5"]
    if w.method == "ours" and config["features"]["store"] == "precomputed":
        return [f"data/features/{w.rep}/val/{w.shard}.h5"]
    return []  # on the fly (the autoencoder always: its encoder was fine-tuned)


def model_dir(w):
    if w.method == "autoencoder":
        return f"results/models/autoencoder/{w.rep}"
    return f"results/models/{w.rep}"


# ------------------------------------------------------------ baselines rules
def mv_params():
    m = config["mv"]
    its = f"--iterations {m['iterations']}" if m["iterations"] else ""
    maxi = f"--max-images {m['max_images']}" if m["max_images"] else ""
    return (
        f"{its} {maxi} --restarts {m['restarts']} --batch-size {m['batch_size']}"
        f" --optimizer {m['optimizer']} --device {m['device']} --seed {config['seed']}"
    )


# ------------------------------------------------------------ evaluate rules
def recon(method, rep):
    return expand("results/reconstructions/{method}/{rep}/{shard}.h5", method=method, rep=rep, shard=shard_ids("val"))


def row_arg(name, paths):
    return f"--row {name}={','.join(paths)}"


def caption_args(stats=True):
    """Dataset and weights for captions; with ``stats`` the interval method, seed, image subset."""
    a = config["alexnet"]
    weights = a["weights"] if a["layers"] else "none"
    args = f"--dataset {shlex.quote(config['dataset']['name'])} --weights {shlex.quote(weights)}"
    if stats:
        maxi = config["evaluation"]["max_images"]
        args += f" --ci {config['evaluation']['ci']} --seed {config['seed']}"
        args += f" --max-images {maxi}" if maxi else ""
    return args


def _row_configured(method, rep):
    """Whether the config produces ``method``'s reconstructions of ``rep``."""
    if rep not in REPS:
        return False
    if method == "hoggles":
        return rep == "hog"
    if method == "mv":
        return rep in config["mv"]["representations"]
    return rep in config["decoders"]["train"]


def table2_rows():
    """Table 2 row id -> reconstruction stores (rows whose method is configured)."""
    return {row: recon(method, rep) for row, (_, method, rep, _) in TABLE2_ROWS.items() if _row_configured(method, rep)}


def mv_table1_rows():
    return {row: recon(method, rep) for row, (_, method, rep, *_) in MV_TABLE1_ROWS.items() if _row_configured(method, rep)}


def figure7_points():
    d, pts = config["decoders"], {}
    for layer in config["alexnet"]["layers"]:
        rep = f"alexnet_{layer}"
        if layer in d["alexnet_layers"]:
            pts[("ours", layer)] = recon("ours", rep)
            for kind in d["perturbations"]:
                pts[(f"ours-{kind}", layer)] = recon(f"ours-{kind}", rep)
        if layer in d["autoencoder_layers"]:
            pts[("autoencoder", layer)] = recon("autoencoder", rep)
        if layer in config["mv"]["alexnet_layers"]:
            pts[("mv", layer)] = recon("mv", rep)
    return pts


def grid_columns(which):
    if which == "shallow":
        return {TABLE2_ROWS[k][0]: v for k, v in table2_rows().items()}
    return {layer: recon("ours", f"alexnet_{layer}") for layer in config["decoders"]["alexnet_layers"]}


def figure_layers(fig):
    return [l for l in FIGURE_LAYERS[fig] if l in config["decoders"]["alexnet_layers"]]


# ------------------------------------------------------------ preimage rules
PREIMAGE_MODES = ["maximise", "caricature", "invert"]


def _preimage_layers():
    """Pre-ReLU taps of the configured paper layers (a ReLU unit at 0 has no gradient)."""
    want = [l for l in config["preimage"]["layers"] if l in config["alexnet"]["layers"]]
    return [f"{l}_raw" for l in want]


PREIMAGE_LAYERS = _preimage_layers()
PREIMAGE_TARGETS = {
    "maximise": "--units 0 1 2 3 --lambda-tv 0.5",
    "caricature": "--max-images 4 --lambda-tv 0.5",
    "invert": "--max-images 4 --window 3",
}


# --------------------------------------------------------------------- targets
def all_targets():
    """The paper's outputs (rule all); functions from the other rule files."""
    d = config["decoders"]
    t = ["results/table2.csv", "results/table2.md", "results/figures/grid_shallow.png"]
    t += expand("results/models/{rep}/decoder.pt", rep=d["train"])
    if mv_table1_rows():
        t += ["results/mv_table1.csv", "results/mv_table1.md"]
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
