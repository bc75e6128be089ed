"""The data room: image sources, preprocessing and image shards.

Two sources (``dataset.source`` in the config):

``sample``
    Built into the package, nothing downloaded: the 1000 shipped labelled
    photographs (``dataset.sample.photos: shipped``) or the photographs
    bundled with scikit-image (``skimage``), plus procedural dead-leaves
    images (:mod:`pipeline.data.sample`).

``imagefolder``
    The ImageNet layout (``train/<wnid>/*.JPEG``; ``val/`` per class or flat
    with a label file) or any folder tree of images
    (:mod:`pipeline.data.imagefolder`).

The shipped photographs: 1000 labelled real photographs (CC BY 2.0, 160 px
JPEG) with a fixed split by photograph (:mod:`pipeline.data.photoset`).

The work is split in three commands, each one Snakemake job
(:mod:`pipeline.data.commands`): ``list-images`` writes a split's index
(JSON: one entry per image, in shard order), ``make-shard`` turns one slice
of the index into one WebDataset tar (the format: :mod:`pipeline.data.shards`)
plus a per-shard manifest, and ``manifest`` merges the per-shard manifests.
Images are preprocessed as in the papers: shorter side resized to the target
size, centre crop, RGB uint8.  ``python -m pipeline bench data`` is
:mod:`pipeline.data.bench`.
"""
