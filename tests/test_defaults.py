"""One source of defaults: the config schema.

The workflow's rules hand each job its settings as one ``--settings JSON``
argument; by hand, the options a config key feeds default to the schema's
default of that key.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

TRAIN = ("width", "image_size", "epochs", "steps", "batch_size", "lr", "lr_milestones", "lr_gamma",
         "checkpoint_every", "device", "amp", "workers")
STATS = {"ci": "evaluation.ci", "max_images": "evaluation.max_images", "seed": "seed"}

#: command words -> {option (its dest, the --settings key): config key} for every
#: config value a rule hands its job
MAPPED: dict[tuple[str, ...], dict[str, str]] = {
    ("list-images",): {"seed": "seed"},
    ("make-shard",): {"format": "dataset.format"},
    ("extract",): {k: f"features.{k}" for k in ("dtype", "compression", "batch_size", "device")},
    ("train",): {**{k: f"decoders.{k}" for k in TRAIN}, "seed": "seed"},
    ("reconstruct",): {"device": "decoders.device"},
    ("invert-mv",): {**{k: f"mv.{k}" for k in ("iterations", "max_images", "restarts", "batch_size", "optimizer",
                                                "tv_source", "device")}, "seed": "seed"},
    ("invert-hoggles", "train"): {**{k: f"hoggles.{k}" for k in ("atoms", "window", "windows", "epochs")},
                                  "lam": "hoggles.lambda", "seed": "seed"},
    ("invert-hoggles", "invert"): {"solver": "hoggles.solver", "max_images": "mv.max_images"},
    ("preimage",): {**{k: f"preimage.{k}" for k in ("iterations", "preset", "objective_weight")}, "seed": "seed"},
    ("evaluate", "perturb"): {"seed": "seed"},
    ("evaluate", "table2"): STATS,
    ("evaluate", "mv-table1"): {**STATS, "max_images": "mv.max_images"},
    ("evaluate", "figure7"): {**STATS, "layers": "network.layers"},
    ("evaluate", "grid"): {**STATS, "count": "evaluation.grid_count"},
    **{("evaluate", fig): {"seed": "seed"} for fig in ("fig8", "fig10", "fig11")},
    ("evaluate", "training-curves"): {},
    ("evaluate", "mv-energy"): {},
}
#: settings that label a figure or table rather than set how it is computed: by hand
#: they default to "not named" (the schema's dataset.name 'sample' and network.label
#: 'random' describe the workflow's default data, not whatever images are given)
LABELS = {cmd: {"dataset", "network"} for cmd in MAPPED if cmd[0] == "evaluate" and cmd[1] != "perturb"}


def schema_default(key: str):
    node = SCHEMA
    for part in key.split("."):
        node = node["properties"][part]
    return node["default"]


def command_parser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser of a command (or of its subcommand)."""
    parser = build_parser(words[0])
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


@pytest.mark.parametrize("words,dest,key", [(w, d, k) for w, m in MAPPED.items() for d, k in m.items()],
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_hand_defaults_are_the_schema_defaults(words, dest, key):
    parser = command_parser(words)
    actions = {a.dest: a for a in parser._actions}
    assert dest in actions, f"{' '.join(words)} has no option for {key}"
    assert actions[dest].default == schema_default(key), (
        f"python -m pipeline {' '.join(words)} --{dest.replace('_', '-')} defaults to {actions[dest].default!r}, "
        f"the schema's {key} to {schema_default(key)!r}")


def test_the_rules_hand_every_job_exactly_the_mapped_settings(tmp_path):
    """What the table above maps is what the rules pass (dry run of the test config)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "-n", "-p", "--cores", "1", "--configfile", str(REPO / "config" / "test.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seen = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("Shell command: ") or "python -m pipeline" not in line:
            continue
        words = shlex.split(line.partition("Shell command: ")[2])
        rest = words[words.index("pipeline") + 1:]
        command = tuple(w for w in rest[:next(i for i, w in enumerate(rest) if w.startswith("-"))])
        seen[command] = set(json.loads(rest[rest.index("--settings") + 1])) if "--settings" in rest else set()
    assert set(seen) >= set(MAPPED)
    for command, keys in seen.items():
        assert keys == set(MAPPED.get(command, {})) | LABELS.get(command, set()), command


# ------------------------------------------------------------------ --settings
def parse(*argv):
    return build_parser(argv[0]).parse_args(list(argv))


TRAIN_ARGS = ("--representation", "hog", "--images", "a.tar")


def test_settings_fill_the_options_they_name():
    s = json.dumps({"width": 0.25, "steps": 7, "epochs": None, "lr_milestones": [0.5, 0.75], "amp": "off",
                    "restart_if_changed": True, "deterministic": False, "device": "-odd"})
    a = parse("train", "--settings", s, *TRAIN_ARGS)
    assert (a.width, a.steps, a.epochs, a.lr_milestones, a.amp) == (0.25, 7, 15, [0.5, 0.75], "off")
    assert a.restart_if_changed and not a.deterministic and a.device == "-odd"
    flags = parse("train", "--width", "0.25", "--steps", "7", "--lr-milestones", "0.5", "0.75", "--amp", "off",
                  "--restart-if-changed", "--device=-odd", *TRAIN_ARGS)
    assert vars(a) == vars(flags)
    # subcommands, and the --settings=JSON form
    b = parse("invert-hoggles", "train", "--settings=" + json.dumps({"lam": 0.5, "seed": 3}), "--shards", "x",
              "--out", "y")
    assert (b.lam, b.seed) == (0.5, 3)


def test_options_after_settings_win():
    a = parse("train", "--settings", '{"width": 0.25, "batch_size": 8}', "--width", "0.5", *TRAIN_ARGS)
    assert (a.width, a.batch_size) == (0.5, 8)


@pytest.mark.parametrize("bad", ['{"widht": 1}', '[1]', '{not json', '{"amp": "fp8"}', '{"restart": 1}',
                                 '{"width": [1, 2]}', '{"steps": 5, "epochs": 2}'])
def test_bad_settings_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        parse("train", "--settings", bad, *TRAIN_ARGS)
    assert e.value.code == 2
