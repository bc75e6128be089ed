"""Command line: ``python -m pipeline <command> [options]``.

Each command lives in the module that holds its logic; that module defines
``configure_parser(parser)`` and ``run(args) -> int``.  Modules are imported
only when their command runs, so ``--help`` stays fast.

Every command (but ``bench``) also takes ``--settings JSON``: one JSON object
whose entries stand for options (``{"batch_size": 32}`` is ``--batch-size 32``),
expanded where it stands, so options after it win.  The workflow's rules hand
each job its config section this way, as one shell-quoted word.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from pipeline import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list-images": ("pipeline.data.commands", "list a split's images (the index shard jobs read)"),
    "make-shard": ("pipeline.data.commands", "write one WebDataset image shard of a split"),
    "manifest": ("pipeline.data.commands", "merge per-shard manifests of a split"),
    "extract": ("pipeline.features.extract", "compute one feature store for one image shard"),
    "store": ("pipeline.features.extract", "inspect feature stores (store info PATH)"),
    "train": ("pipeline.decoders.training", "train an up-convolutional decoder (Dosovitskiy & Brox 2016)"),
    "reconstruct": ("pipeline.decoders.reconstruct", "reconstruct validation images with a trained decoder"),
    "invert-mv": ("pipeline.baselines.mv", "optimisation inversion (Mahendran & Vedaldi 2015)"),
    "invert-hoggles": ("pipeline.baselines.hoggles_cli", "HOGgles paired-dictionary inversion (Vondrick et al. 2013)"),
    "preimage": ("pipeline.preimage.commands",
                 "natural pre-images (Mahendran & Vedaldi 2016): invert, maximise, caricature"),
    "evaluate": ("pipeline.evaluation.commands", "the papers' tables and figures, training curves, M&V energy"),
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


SETTINGS_HELP = (
    "options as one JSON object, expanded where it stands (options after it win): keys are option names "
    "with '_' for '-', lists give several values, true/false switch a flag, null leaves the option out; "
    "e.g. '{\"batch_size\": 32, \"lr_milestones\": [0.5, 0.8]}'"
)


class SettingsParser(argparse.ArgumentParser):
    """An argument parser that expands ``--settings JSON`` into the options it
    stands for before parsing (in the command's own parser, which knows them)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if "--settings" in self._option_string_actions:
            args = self._expand_settings(args)
        return super().parse_known_args(args, namespace)

    def _expand_settings(self, args: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                return out + args[i:]
            if arg == "--settings" and i + 1 < len(args):
                out += self._settings_words(args[i + 1])
                i += 2
            elif arg.startswith("--settings="):
                out += self._settings_words(arg.partition("=")[2])
                i += 1
            else:
                out.append(arg)
                i += 1
        return out

    def _settings_words(self, text: str) -> list[str]:
        """The option words a ``--settings`` object stands for."""
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as e:
            self.error(f"--settings is not valid JSON ({e}): {text!r}")
        if not isinstance(settings, dict):
            self.error(f"--settings must be a JSON object, got {text!r}")
        words = []
        for key, value in settings.items():
            option = "--" + key.replace("_", "-")
            action = self._option_string_actions.get(option)
            if action is None or option in ("--settings", "--help"):
                self.error(f"--settings: {key!r} is not an option of this command")
            if value is None:
                continue
            if action.nargs == 0:  # a flag
                if not isinstance(value, bool):
                    self.error(f"--settings: {key!r} is a flag: true or false, got {value!r}")
                words += [option] if value else []
                continue
            values = value if isinstance(value, list) else [value]
            texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
            if action.nargs is None or action.nargs == "?":
                if isinstance(value, list):
                    self.error(f"--settings: {key!r} takes one value, got {value!r}")
                words.append(f"{option}={texts[0]}")  # one word, even for a value that starts with '-'
            else:
                words += [option, *texts]
        return words


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers that parse a command's options (those of subcommands, where it has some)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for sub in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(sub)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = SettingsParser(
        prog="python -m pipeline",
        description="Invert image representations: data, features, decoders, baselines, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"repinvert {__version__} (python -m pipeline)",
                        help="print the distribution name and version, then exit")
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
            if name != "bench":  # the benchmarks parse their own options
                for leaf in _leaf_parsers(p):
                    leaf.add_argument("--settings", metavar="JSON", default=argparse.SUPPRESS, help=SETTINGS_HELP)
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
