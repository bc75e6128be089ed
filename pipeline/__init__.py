"""Measure what image representations retain, by inverting them.

All logic of the workflow lives in this package; ``python -m pipeline --help``
lists the commands the Snakemake rules call.
"""

__version__ = "0.1.0"
