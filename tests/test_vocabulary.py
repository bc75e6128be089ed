"""The papers' vocabulary is written once (pipeline.vocabulary): the config
schema's enums, the workflow's row and curve ids and the evaluation agree with it."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pipeline import vocabulary as voc
from pipeline.features.perturbations import perturb

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())


def _enums(node, path=""):
    """(dotted path, enum) for every enum in the schema."""
    if isinstance(node, dict):
        if "enum" in node:
            yield path, node["enum"]
        for k, v in node.items():
            yield from _enums(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for v in node:
            yield from _enums(v, path)


def test_schema_enums_are_the_vocabulary():
    enums = dict(_enums(SCHEMA))
    # layers are the configured network's (free strings); their defaults are AlexNet's, the papers' network
    props = SCHEMA["properties"]
    for section, key in (("network", "layers"), ("decoders", "network_layers"), ("decoders", "autoencoder_layers"),
                         ("mv", "network_layers")):
        assert tuple(props[section]["properties"][key]["default"]) == voc.ALEXNET_LAYERS, (section, key)
    figs = props["network"]["properties"]["figure_layers"]["properties"]
    assert {f: tuple(v["default"]) for f, v in figs.items()} == voc.FIGURE_LAYERS
    assert props["network"]["properties"]["feature"]["default"] == "alexnet"
    assert tuple(enums["properties.decoders.properties.perturbations.items"]) == tuple(voc.PERTURBATIONS)


def test_every_perturbation_and_transform_is_implemented():
    x = torch.tensor([[3.0, -1.0, 0.5, 2.0, 0.0, 1.0, 4.0, 0.25]])
    for kind in voc.FEATURE_TRANSFORMS:
        y = perturb(x, kind, seed=0)
        assert y.shape == x.shape and torch.isfinite(y).all(), kind
    # dropped, then binarised: zeros and one magnitude (signs kept)
    mags = set(perturb(x, "drop50+binarize").abs().unique().tolist())
    assert len(mags) == 2 and 0.0 in mags


def test_figure7_has_a_label_for_every_curve_the_workflow_can_ask_for():
    curves = {"ours", "mv", "autoencoder"} | {voc.perturbed_method(m, k) for m in voc.DECODER_METHODS
                                              for k in voc.PERTURBATIONS}
    assert curves <= set(voc.FIGURE7_CURVES)
    for fig, layers in voc.FIGURE_LAYERS.items():
        assert set(layers) <= set(voc.ALEXNET_LAYERS), fig


def test_table1_rows_invert_and_measure_registered_representations():
    from pipeline.features import available, traits

    assert set(voc.MV_TABLE1_METRIC_FEATURES) == set(voc.MV_TABLE1_ROWS)
    for row, (_, method, rep, *_) in voc.MV_TABLE1_ROWS.items():
        assert rep in available() and traits(rep).grey, row
        assert voc.MV_TABLE1_METRIC_FEATURES[row] in available(), row
    # the authors' CNN versions are inverted and measured; HOGgles inverts UoCTTI HOG, measured on its 27 dims
    assert [voc.MV_TABLE1_ROWS[r][2] for r in ("hog", "hogb", "dsift")] == ["cnn_hog", "cnn_hogb", "cnn_dsift"]
    assert voc.MV_TABLE1_METRIC_FEATURES["hoggles"] == "hog27"


def test_figure11_shows_the_papers_four_top_layers():
    assert voc.FIGURE_LAYERS["fig11"] == ("conv5", "fc6", "fc7", "fc8")
