"""``python -m pipeline bench <what>``: benchmarks that print figures and
ratios against a reference measured in the same run (never timed asserts).

Each benchmark lives beside the code it measures:
data -> pipeline.data.bench.bench_data, features -> pipeline.features.bench.bench_features,
train -> pipeline.decoders.bench.bench_train, feed -> pipeline.decoders.bench.bench_feed,
invert -> pipeline.baselines.bench.bench_invert, evaluate -> pipeline.evaluation.bench.bench_evaluate.
"""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "data": ("pipeline.data.bench", "bench_data"),
    "features": ("pipeline.features.bench", "bench_features"),
    "train": ("pipeline.decoders.bench", "bench_train"),
    "feed": ("pipeline.decoders.bench", "bench_feed"),
    "invert": ("pipeline.baselines.bench", "bench_invert"),
    "evaluate": ("pipeline.evaluation.bench", "bench_evaluate"),
}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (--help)")


def run(args) -> int:
    module, func = BENCHMARKS[args.what]
    return int(getattr(importlib.import_module(module), func)(args.rest) or 0)
