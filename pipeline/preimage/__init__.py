"""Natural pre-images (Mahendran & Vedaldi 2016, IJCV, "Visualizing deep
convolutional neural networks using natural pre-images"): inversion,
activation maximisation and caricatures as one regularised energy
minimisation over an image, built on the inversion of Mahendran & Vedaldi
2015 (CVPR) in :mod:`pipeline.baselines`.

* :mod:`~pipeline.preimage.objectives`: the energy terms the pre-images add
  (bounded range, inner-product data term), unit directions and the
  activation scale of maximisation.
* :mod:`~pipeline.preimage.masks`: masks on a layer (Mahendran & Vedaldi
  2015, Figures 9 and 10) and masked feature stores.
* :mod:`~pipeline.preimage.optimise`: :func:`~pipeline.preimage.optimise.preimage`,
  the optimisation.
* :mod:`~pipeline.preimage.commands`: ``python -m pipeline preimage``.
"""
