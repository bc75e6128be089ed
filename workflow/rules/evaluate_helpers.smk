# Helpers of the evaluation rules (evaluate.smk): the papers' tables and figures as
# reconstruction stores of the configured methods.
import shlex

from pipeline.vocabulary import FIGURE_LAYERS, MV_TABLE1_ROWS, TABLE2_ROWS


def recon(method, rep):
    return expand("results/reconstructions/{method}/{rep}/{shard}.h5", method=method, rep=rep, shard=eval_shard_ids())


def labelled_args(option, items):
    """``--option LABEL=STORE,...`` for every (label, stores), each value one shell word
    (labels such as 'HOG⁻¹ [Mahendran & Vedaldi]' hold spaces and '&')."""
    return " ".join(f"{option} {shlex.quote(label + '=' + ','.join(paths))}" for label, paths in items)


def caption_settings(stats=True, max_images=None):
    """Dataset and weights for captions; with ``stats`` the interval method, seed, image subset
    (``max_images``, default evaluation.max_images: the decoders' evaluation set)."""
    a = config["alexnet"]
    settings = {"dataset": config["dataset"]["name"], "weights": a["weights"] if a["layers"] else "none"}
    if stats:
        settings.update(pick(config["evaluation"], "ci", "max_images"), seed=config["seed"])
        if max_images is not None:
            settings["max_images"] = max_images
    return settings


def baseline_images():
    """The baselines' first N validation images (mv.max_images), within the evaluation's (evaluation.max_images)."""
    n = [v for v in (config["mv"]["max_images"], config["evaluation"]["max_images"]) if v is not None]
    return min(n) if n else None


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
