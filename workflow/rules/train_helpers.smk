# Helpers of the training and reconstruction rules (train.smk).
import re
import shlex

from pipeline.vocabulary import DECODER_METHODS, PERTURBATIONS

#: {method} wildcard of the reconstruct rule: the decoders, and each decoder on perturbed
#: features (ours-KIND, autoencoder-KIND)
RECONSTRUCT_METHODS = "|".join(
    re.escape(m) for m in DECODER_METHODS + tuple(f"{m}-{k}" for m in DECODER_METHODS for k in PERTURBATIONS)
)

#: decoders.* keys that are options of `python -m pipeline train`
TRAIN_KEYS = ("width", "image_size", "epochs", "steps", "batch_size", "lr", "lr_milestones", "lr_gamma",
              "checkpoint_every", "device", "amp", "workers")


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


def train_settings(rep):
    """The training options of ``rep`` (``--settings``): steps, when set, replace epochs."""
    s = dict(pick(decoder_settings(rep), *TRAIN_KEYS), seed=config["seed"])
    if s["steps"]:
        s["epochs"] = None
    return s


def train_priority(rep):
    """decoders.overrides[rep].priority: Snakemake priority of the training of ``rep`` and of
    the extraction of its training features (scheduling only, not a parameter of either)."""
    return decoder_settings(rep).get("priority", 0)


def shard_priority(split):
    """Snakemake priority of making an image shard: training shards above every decoder's
    priority, since each decoder reads them all (left to the scheduler, they were made after
    validation jobs, and the decoders started late); other shards 0."""
    if split != "train":
        return 0
    return 1 + max([train_priority(rep) for rep in config["decoders"]["train"]] + [0])


def train_threads():
    """decoders.threads, 0: every core Snakemake was given."""
    return config["decoders"]["threads"] or workflow.cores


def features_arg(rep, split, key="features"):
    """--features STORES for precomputed stores, or --on-the-fly with the representation."""
    if config["features"]["store"] == "precomputed":
        r = REPS[rep]  # the stores must hold this representation (checked by the command)
        return ("--features " + " ".join(feature_paths(rep, split))
                + f" --feature {shlex.quote(r['feature'])} --params {as_json(r['params'])}")
    r = REPS[rep]
    return f"--on-the-fly --feature {shlex.quote(r['feature'])} --params {as_json(r['params'])}"


def reconstruct_features(w):
    if w.method.startswith("ours-"):  # perturbed features, decoder trained on clean ones
        return [f"data/features_perturbed/{w.method[5:]}/{w.rep}/val/{w.shard}.h5"]
    if w.method == "ours" and config["features"]["store"] == "precomputed":
        return [f"data/features/{w.rep}/val/{w.shard}.h5"]
    # on the fly; the autoencoder (autoencoder-KIND too) always: its encoder was fine-tuned
    return []


def is_autoencoder(method):
    return method == "autoencoder" or method.startswith("autoencoder-")


def model_dir(w):
    if is_autoencoder(w.method):
        return f"results/models/autoencoder/{w.rep}"
    return f"results/models/{w.rep}"


def perturb_arg(method):
    """``--perturb KIND --perturb-seed SEED`` for autoencoder-KIND: the fine-tuned encoder's features
    exist only inside the job, so they are perturbed there (ours-KIND reads the perturbed stores of
    rule perturb_features instead)."""
    if method.startswith("autoencoder-"):
        return f"--perturb {shlex.quote(method[len('autoencoder-'):])} --perturb-seed {int(config['seed'])}"
    return ""
