"""Evaluation of the inversions: the last room of the flow data -> features
-> decoders / baselines -> evaluation.

* :mod:`~pipeline.evaluation.metrics`: normalised errors in image and
  feature space, PSNR, SSIM, summaries with intervals, the mean-image floor;
* :mod:`~pipeline.evaluation.report`: captions, CSV, Markdown and HTML output;
* :mod:`~pipeline.evaluation.testset`: the test images and their
  reconstructions, matched by key;
* :mod:`~pipeline.evaluation.tables`: Table 2 of Dosovitskiy & Brox 2016 and
  Table 1 of Mahendran & Vedaldi 2015 (CVPR);
* :mod:`~pipeline.evaluation.figures`: Figure 7's data and every figure as PNG;
* :mod:`~pipeline.evaluation.curves`: how the runs went: the decoders' training
  curves and the energy of Mahendran & Vedaldi's inversions;
* :mod:`~pipeline.evaluation.commands`: ``python -m pipeline evaluate``;
* :mod:`~pipeline.evaluation.bench`: ``python -m pipeline bench evaluate``.
"""
