# Helpers of the evaluation rules (evaluate.smk): the papers' tables and figures as
# reconstruction stores of the configured methods.
import shlex

from pipeline.vocabulary import MV_TABLE1_ROWS, PAPERS, TABLE2_ROWS

#: the report's categories: one per paper
DB2016, MV2015, MV2016 = PAPERS


def recon(method, rep):
    return expand("results/reconstructions/{method}/{rep}/{shard}.h5", method=method, rep=rep, shard=eval_shard_ids())


def labelled_args(option, items):
    """``--option LABEL=STORE,...`` for every (label, stores), each value one shell word
    (labels such as 'HOG⁻¹ [Mahendran & Vedaldi]' hold spaces and '&')."""
    words = (shlex.quote(f"{label}={','.join(paths)}") for label, paths in items)
    return " ".join(f"{option} {w}" for w in words)


def caption_settings(stats=True, network=True, max_images=None):
    """Dataset and network for captions (without ``network``, for what uses no network, the
    network is null: left out); with ``stats`` the interval method, seed, image subset
    (``max_images``, default evaluation.max_images: the decoders' evaluation set)."""
    label = (network_label() if config["network"]["layers"] else "none") if network else None
    settings = {"dataset": config["dataset"]["name"], "network": label}
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
    for layer in config["network"]["layers"]:
        rep = net_rep(layer)
        if layer in d["network_layers"]:
            pts[("ours", layer)] = recon("ours", rep)
            for kind in d["perturbations"]:
                pts[(f"ours-{kind}", layer)] = recon(f"ours-{kind}", rep)
        if layer in d["autoencoder_layers"]:
            pts[("autoencoder", layer)] = recon("autoencoder", rep)
            for kind in d["perturbations"]:
                pts[(f"autoencoder-{kind}", layer)] = recon(f"autoencoder-{kind}", rep)
        if layer in config["mv"]["network_layers"]:
            pts[("mv", layer)] = recon("mv", rep)
    return pts


def grid_columns(which):
    if which == "shallow":
        return {TABLE2_ROWS[k][0]: v for k, v in table2_rows().items()}
    return {layer: recon("ours", net_rep(layer)) for layer in config["decoders"]["network_layers"]}


def figure_layers(fig):
    """The layers Figure ``fig`` shows (network.figure_layers) that have a decoder."""
    return [l for l in config["network"]["figure_layers"][fig] if l in config["decoders"]["network_layers"]]


# ------------------------------------------------------------ how the runs went
def _named(method, rep, rows, default):
    """The tables' name of ``method``'s row for ``rep`` (Table 2, then Table 1), else ``default``."""
    return next((r[0] for r in rows if r[1] == method and r[2] == rep), default)


def training_runs(which):
    """Legend label -> metrics.csv of the decoders: shallow (decoders.train, Table 2's),
    network (the network layers' decoders and autoencoders, Figure 7's)."""
    d = config["decoders"]
    if which == "shallow":
        return {_named("ours", rep, TABLE2_ROWS.values(), f"{rep} ours"): f"results/models/{rep}/metrics.csv"
                for rep in d["train"]}
    runs = {f"{l} ours": f"results/models/{net_rep(l)}/metrics.csv" for l in d["network_layers"]}
    runs.update({f"{l} autoencoder": f"results/models/autoencoder/{net_rep(l)}/metrics.csv"
                 for l in d["autoencoder_layers"]})
    return runs


def mv_runs(which):
    """Label -> per-iteration logs of the Mahendran & Vedaldi inversions: shallow
    (mv.representations, Table 1's), network (mv.network_layers, Figure 7's)."""
    def logs(rep):
        return expand("results/reconstructions/mv/{rep}/{shard}.csv", rep=rep, shard=eval_shard_ids())

    m = config["mv"]
    if which == "shallow":
        return {_named("mv", rep, MV_TABLE1_ROWS.values(), rep): logs(rep) for rep in m["representations"]}
    return {l: logs(net_rep(l)) for l in m["network_layers"] if l in config["network"]["layers"]}


#: the report's labels of the grids and the network's figures
GRID_FIGURES = {
    "shallow": "Figure 3: from HOG, SIFT and LBP",
    "network": f"Figure 5: from the layers of {network_label()}",
}
NETWORK_FIGURES = {
    "fig8": "Figure 8: class scores with all, the top-5 only, or without the top-5 activations",
    "fig10": "Figure 10: interpolation between two images' features",
    "fig11": "Figure 11: images from random feature vectors",
}
#: what each set of curves holds (report labels)
TRAINING_SETS = {"shallow": "shallow features (Table 2)", "network": f"layers of {network_label()} (Figure 7)"}
ENERGY_SETS = {
    "shallow": "shallow features (Table 1)",
    "network": f"layers of {network_label()} (Figure 7 of Dosovitskiy & Brox 2016)",
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
        if training_runs("network"):
            figs.append("results/figures/training_curves_network.png")
        if mv_runs("network"):
            figs.append("results/figures/mv_energy_network.png")
    return [ancient(f) for f in figs]
