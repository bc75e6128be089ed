"""Learned decoders of Dosovitskiy & Brox (2016): features in, images out.

The package follows a decoder's life:

* :mod:`~pipeline.decoders.architectures`: the up-convolutional networks
  (supplementary Tables 4-8, generalised by size) and the decoder kind of a
  representation.
* :mod:`~pipeline.decoders.data`: training pairs (image shards aligned with
  feature stores) and the seeded batch order of each epoch.
* :mod:`~pipeline.decoders.step`: the network trained (optional encoder and
  decoder), its mixed precision, and one optimisation step.
* :mod:`~pipeline.decoders.training`: ``python -m pipeline train``, the
  training run (set up, resume, epochs, checkpoints).
* :mod:`~pipeline.decoders.modelfile`: the ``decoder.pt`` format and the
  checkpoint helpers that make a resumed run bit-identical.
* :mod:`~pipeline.decoders.reconstruct`: ``python -m pipeline reconstruct``,
  reconstructions of validation shards.
* :mod:`~pipeline.decoders.bench`: ``python -m pipeline bench train``.
"""
