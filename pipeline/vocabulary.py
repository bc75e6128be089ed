"""The papers' vocabulary, written once.

Table and figure rows, curve ids and their labels, perturbation kinds and
AlexNet's layer names, as Dosovitskiy & Brox 2016 ("Inverting visual
representations with convolutional networks", CVPR) and Mahendran & Vedaldi
2015 ("Understanding deep image representations by inverting them", CVPR)
name them.  The evaluation, the workflow rules (``workflow/rules/*_helpers.smk``)
and the config schema's enums (checked by a test) read them from here.

A *method* is what made a reconstruction store
(``results/reconstructions/{method}/{rep}/``): ``ours`` (our decoder),
``autoencoder`` (decoder trained with the encoder fine-tuned), ``mv``
(Mahendran & Vedaldi's optimisation), ``hoggles`` (Vondrick et al. 2013),
and ``ours-{kind}`` / ``autoencoder-{kind}`` for features perturbed by
``kind`` before decoding.  Figure 7's curves are named by the same methods.
"""
from __future__ import annotations

#: The papers, by the short names that tables, captions and the report's
#: categories use -> their titles.
PAPERS: dict[str, str] = {
    "Dosovitskiy & Brox 2016": "Inverting visual representations with convolutional networks (CVPR 2016)",
    "Mahendran & Vedaldi 2015": "Understanding deep image representations by inverting them (CVPR 2015)",
    "Mahendran & Vedaldi 2016": "Visualizing deep convolutional neural networks using natural pre-images (IJCV 2016)",
}

#: AlexNet's layers in network order (the paper's names; Figure 7's x axis).
ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

#: Feature perturbations of Figure 7 (Dosovitskiy & Brox 2016, Section 5.2):
#: kind -> what it does.  ``drop50-smallest`` alone is kept for comparison.
PERTURBATIONS: dict[str, str] = {
    "binarize": "binarised (positive -> 1, the rest 0; norm kept)",
    "drop50": "50% of the features dropped at random",
    "drop50-smallest": "the 50% smallest non-zero features dropped",
    "drop50+binarize": "50% dropped at random, then binarised",
    "drop50-smallest+binarize": "the 50% smallest non-zero dropped, then binarised",
}
#: Every feature transform the ``evaluate perturb`` command and the figures know:
#: the perturbations above, the identity, and Figure 8's fc8 top-5 studies.
FEATURE_TRANSFORMS = ("none", *PERTURBATIONS, "top5", "notop5")

#: Reconstruction methods (the first level of ``results/reconstructions/``).
METHODS = ("ours", "autoencoder", "mv", "hoggles")
#: Methods whose features can be perturbed before decoding (learned decoders).
DECODER_METHODS = ("ours", "autoencoder")

#: Table 2 of Dosovitskiy & Brox 2016: row id -> (display name, method,
#: representation, the paper's error).
TABLE2_ROWS: dict[str, tuple[str, str, str, float]] = {
    "hoggles": ("HOGgles [Vondrick et al.]", "hoggles", "hog", 0.61),
    "mv-hog": ("HOG⁻¹ [Mahendran & Vedaldi]", "mv", "hog", 0.63),
    "ours-hog": ("HOG ours", "ours", "hog", 0.24),
    "ours-sift": ("SIFT ours", "ours", "sift", 0.28),
    "ours-lbp": ("LBP ours", "ours", "lbp", 0.38),
}
#: Table 2's reference row: the mean training image as every reconstruction.
FLOOR_ROW = "mean-image"

#: Table 1 of Mahendran & Vedaldi 2015: row id -> (name, method,
#: representation inverted, the paper's error %, its std %).  The rows invert
#: the authors' CNN versions of HOG, HOGb and DSIFT (``pipeline.features.cnn_shallow``);
#: HOGgles inverts VLFeat's UoCTTI HOG.
MV_TABLE1_ROWS: dict[str, tuple[str, str, str, float, float]] = {
    "hoggles": ("HOGgles [Vondrick et al.] (HOG)", "hoggles", "hog", 66.20, 13.7),
    "hog": ("HOG (Mahendran & Vedaldi)", "mv", "cnn_hog", 28.10, 7.9),
    "hogb": ("HOGb (Mahendran & Vedaldi)", "mv", "cnn_hogb", 10.67, 5.2),
    "dsift": ("DSIFT (Mahendran & Vedaldi)", "mv", "cnn_dsift", 10.89, 7.5),
}
#: The feature (registry name) each Table 1 row is measured on in the authors'
#: metric (their ``experiment_shallow_quantitative.m``): the CNN networks'
#: outputs, and for HOGgles the 27 non-texture UoCTTI dimensions.
MV_TABLE1_METRIC_FEATURES: dict[str, str] = {
    "hoggles": "hog27", "hog": "cnn_hog", "hogb": "cnn_hogb", "dsift": "cnn_dsift",
}

#: Figure 7's curves (method ids) -> legend labels, as in the paper.
FIGURE7_CURVES: dict[str, str] = {
    "ours": "Our",
    "mv": "Mahendran & Vedaldi",
    "autoencoder": "Autoencoder",
    "ours-binarize": "Our, binarised",
    "ours-drop50": "Our, 50% dropout",
    "ours-drop50-smallest": "Our, 50% smallest dropped",
    "ours-drop50+binarize": "Our, 50% dropout, binarised",
    "ours-drop50-smallest+binarize": "Our, 50% smallest dropped, binarised",
    "autoencoder-binarize": "Autoencoder, binarised",
    "autoencoder-drop50": "Autoencoder, 50% dropout",
    "autoencoder-drop50-smallest": "Autoencoder, 50% smallest dropped",
    "autoencoder-drop50+binarize": "Autoencoder, 50% dropout, binarised",
    "autoencoder-drop50-smallest+binarize": "Autoencoder, 50% smallest dropped, binarised",
}

#: The AlexNet layers each figure of Dosovitskiy & Brox 2016 shows
#: (Figure 8: fc8 all / top-5 / without top-5; Figure 10: interpolation;
#: Figure 11: random feature vectors).
FIGURE_LAYERS: dict[str, tuple[str, ...]] = {
    "fig8": ("fc8",),
    "fig10": ("conv5", "fc6", "fc7", "fc8"),
    "fig11": ("conv5", "fc6", "fc7", "fc8"),
}


def perturbed_method(method: str, kind: str) -> str:
    """The method id of ``method``'s reconstructions from features perturbed by ``kind``."""
    if method not in DECODER_METHODS or kind not in PERTURBATIONS:
        raise ValueError(f"no perturbed curve for method {method!r}, kind {kind!r}")
    return f"{method}-{kind}"
