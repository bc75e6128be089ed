# Helpers of the evaluation rules (evaluate.smk): the papers' tables and figures as
# reconstruction stores of the configured methods.
import shlex

from pipeline.vocabulary import FIGURE_LAYERS, MV_TABLE1_ROWS, PAPERS, TABLE2_ROWS

#: the report's categories: one per paper
DB2016, MV2015, MV2016 = PAPERS


def recon(method, rep):
    return expand("results/reconstructions/{method}/{rep}/{shard}.h5", method=method, rep=rep, shard=eval_shard_ids())


def labelled_args(option, items):
    """``--option LABEL=STORE,...`` for every (label, stores), each value one shell word
    (labels such as 'HOG⁻¹ [Mahendran & Vedaldi]' hold spaces and '&')."""
    words = (shlex.quote(f"{label}={','.join(paths)}") for label, paths in items)
    return " ".join(f"{option} {w}" for w in words)


def caption_settings(stats=True, alexnet=True, max_images=None):
    """Dataset and weights for captions (without ``alexnet``, for what uses no AlexNet, the
    weights are null: left out); with ``stats`` the interval method, seed, image subset
    (``max_images``, default evaluation.max_images: the decoders' evaluation set)."""
    a = config["alexnet"]
    weights = (a["weights"] if a["layers"] else "none") if alexnet else None
    settings = {"dataset": config["dataset"]["name"], "weights": weights}
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
            for kind in d["perturbations"]:
                pts[(f"autoencoder-{kind}", layer)] = recon(f"autoencoder-{kind}", rep)
        if layer in config["mv"]["alexnet_layers"]:
            pts[("mv", layer)] = recon("mv", rep)
    return pts


def grid_columns(which):
    if which == "shallow":
        return {TABLE2_ROWS[k][0]: v for k, v in table2_rows().items()}
    return {layer: recon("ours", f"alexnet_{layer}") for layer in config["decoders"]["alexnet_layers"]}


def figure_layers(fig):
    return [l for l in FIGURE_LAYERS[fig] if l in config["decoders"]["alexnet_layers"]]


# ------------------------------------------------------------ how the runs went
def _named(method, rep, rows, default):
    """The tables' name of ``method``'s row for ``rep`` (Table 2, then Table 1), else ``default``."""
    return next((r[0] for r in rows if r[1] == method and r[2] == rep), default)


def training_runs(which):
    """Legend label -> metrics.csv of the decoders: shallow (decoders.train, Table 2's),
    alexnet (the AlexNet layers' decoders and autoencoders, Figure 7's)."""
    d = config["decoders"]
    if which == "shallow":
        return {_named("ours", rep, TABLE2_ROWS.values(), f"{rep} ours"): f"results/models/{rep}/metrics.csv"
                for rep in d["train"]}
    runs = {f"{l} ours": f"results/models/alexnet_{l}/metrics.csv" for l in d["alexnet_layers"]}
    runs.update({f"{l} autoencoder": f"results/models/autoencoder/alexnet_{l}/metrics.csv"
                 for l in d["autoencoder_layers"]})
    return runs


def mv_runs(which):
    """Label -> per-iteration logs of the Mahendran & Vedaldi inversions: shallow
    (mv.representations, Table 1's), alexnet (mv.alexnet_layers, Figure 7's)."""
    def logs(rep):
        return expand("results/reconstructions/mv/{rep}/{shard}.csv", rep=rep, shard=eval_shard_ids())

    m = config["mv"]
    if which == "shallow":
        return {_named("mv", rep, MV_TABLE1_ROWS.values(), rep): logs(rep) for rep in m["representations"]}
    return {f"AlexNet {l}": logs(f"alexnet_{l}") for l in m["alexnet_layers"] if l in config["alexnet"]["layers"]}


#: the report's labels of the grids and the AlexNet figures
GRID_FIGURES = {
    "shallow": "Figure 3: from HOG, SIFT and LBP",
    "alexnet": "Figure 5: from AlexNet layers",
}
ALEXNET_FIGURES = {
    "fig8": "Figure 8: fc8 with all, the top-5 only, or without the top-5 activations",
    "fig10": "Figure 10: interpolation between two images' features",
    "fig11": "Figure 11: images from random feature vectors",
}
#: what each set of curves holds (report labels)
TRAINING_SETS = {"shallow": "shallow features (Table 2)", "alexnet": "AlexNet layers (Figure 7)"}
ENERGY_SETS = {
    "shallow": "shallow features (Table 1)",
    "alexnet": "AlexNet layers (Figure 7 of Dosovitskiy & Brox 2016)",
}


def run_figures(which):
    """The figures of how the runs went behind a table or figure (``table2``, ``mv_table1``,
    ``figure7``): inputs of its rule marked ancient, so that the main command builds them
    for the report while a new figure never reruns the table."""
    d, figs = config["decoders"], []
    if which == "table2" and d["train"]:
        figs.append("results/figures/training_curves_shallow.png")
    if which == "mv_table1" and mv_runs("shallow"):
        figs.append("results/figures/mv_energy_shallow.png")
    if which == "figure7":
        if training_runs("alexnet"):
            figs.append("results/figures/training_curves_alexnet.png")
        if mv_runs("alexnet"):
            figs.append("results/figures/mv_energy_alexnet.png")
    return [ancient(f) for f in figs]
