"""Optimisation baselines: Mahendran & Vedaldi (CVPR 2015) inversion and HOGgles (Vondrick et al. 2013).

* :mod:`.terms`: the energy of Mahendran & Vedaldi 2015 (constants, sigma and
  lambda scaling, the data term and regularisers), shared with the natural
  pre-images of :mod:`pipeline.preimage`;
* :mod:`.descent`: learning-rate schedules, the momentum/Adam descent, the
  noise initialisation and the per-iteration log;
* :mod:`.mv`: Mahendran & Vedaldi inversion and ``python -m pipeline invert-mv``;
* :mod:`.hoggles`: HOGgles paired dictionaries (learning, sparse coding,
  inversion); :mod:`.hoggles_cli`: ``python -m pipeline invert-hoggles``;
* :mod:`.bench`: ``python -m pipeline bench invert``.
"""
