"""Command line: ``python -m pipeline <command> [options]``.

Each command lives in the module that holds its logic; that module defines
``configure_parser(parser)`` and ``run(args) -> int``.  Modules are imported
only when their command runs, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list-images": ("pipeline.data.commands", "list a split's images (the index shard jobs read)"),
    "make-shard": ("pipeline.data.commands", "write one WebDataset image shard of a split"),
    "manifest": ("pipeline.data.commands", "merge per-shard manifests of a split"),
    "extract": ("pipeline.features.extract", "compute one feature store for one image shard"),
    "store": ("pipeline.features.extract", "inspect feature stores (store info PATH)"),
    "train": ("pipeline.decoders.training", "train an up-convolutional decoder"),
    "reconstruct": ("pipeline.decoders.reconstruct", "reconstruct validation images with a trained decoder"),
    "invert-mv": ("pipeline.baselines.mv", "Mahendran & Vedaldi optimisation inversion"),
    "invert-hoggles": ("pipeline.baselines.hoggles_cli", "HOGgles paired-dictionary inversion"),
    "preimage": ("pipeline.preimage.commands", "natural pre-images: invert, maximise, caricature"),
    "evaluate": ("pipeline.evaluation.commands", "metrics, tables and figures"),
    "bench": ("pipeline.bench", "benchmarks: data, features, train, invert"),
}

_HANDLERS = {
    "list-images": ("configure_list_parser", "run_list"),
    "make-shard": ("configure_shard_parser", "run_shard"),
    "manifest": ("configure_manifest_parser", "run_manifest"),
    "extract": ("configure_parser", "run"),
    "store": ("configure_store_parser", "run_store"),
    "reconstruct": ("configure_reconstruct_parser", "run_reconstruct"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Invert image representations: data, features, decoders, baselines, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"repinvert {__version__} (python -m pipeline)")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (default: one line on stderr, exit code 2)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            mod = importlib.import_module(module)
            configure, run = _HANDLERS.get(name, ("configure_parser", "run"))
            getattr(mod, configure)(p)
            p.set_defaults(_run=getattr(mod, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


#: Errors that say what the user gave wrong (a file, a value): one line, exit code 2.
USER_ERRORS = (ValueError, KeyError, OSError)


def entry(argv: list[str] | None = None) -> int:
    """The command line's entry point (``python -m pipeline``, the ``repinvert`` script):
    :func:`main`, with user errors as one line on stderr and exit code 2 (``--debug``:
    the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return main([a for a in argv if a != "--debug"])
    except USER_ERRORS as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(entry())
