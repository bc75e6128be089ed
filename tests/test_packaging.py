"""The package's identity and its environments: one version, a distribution name of
its own, a conda environment that works for ``snakemake --sdm conda``."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import pipeline

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()


def test_one_version_and_a_distribution_name_of_its_own():
    proj = PYPROJECT["project"]
    assert proj["name"] != "pipeline"  # an unrelated PyPI project has that name
    assert "version" not in proj and proj["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pipeline.__version__"}
    out = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert pipeline.__version__ in out and proj["name"] in out


def test_conda_environment_lists_the_dependencies_and_does_not_install_a_relative_path():
    env = yaml.safe_load((REPO / "envs/pipeline.yaml").read_text())
    conda = {_name(d): d for d in env["dependencies"] if isinstance(d, str)}
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert not any(p.startswith("-e") or p.startswith(".") for p in pip)  # resolved against Snakemake's copy
    have = set(conda) | {_name(p) for p in pip}
    aliases = {"torch": "pytorch"}
    for req in PYPROJECT["project"]["dependencies"]:
        name = _name(req)
        if name.startswith("snakemake"):
            continue  # Snakemake runs the jobs; it is not needed inside them
        assert aliases.get(name, name) in have, req
    # the jobs find the package through the Snakefile's shell prefix instead
    assert "PYTHONPATH" in (REPO / "Snakefile").read_text()


def test_user_errors_are_one_line_with_exit_code_2_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.h5")
    r = subprocess.run([sys.executable, "-m", "pipeline", "store", "info", missing], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and missing in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "pipeline", "--debug", "store", "info", missing], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_webdataset_is_a_test_dependency_only():
    """The package reads its shards with tarfile; webdataset checks in the tests that they stay readable by it."""
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert "webdataset" not in runtime
    assert "webdataset" in {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    env = (REPO / "envs/pipeline.yaml").read_text()
    assert "webdataset" not in env
    for path in (REPO / "pipeline").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+webdataset", path.read_text(), re.M), path


def test_every_command_line_option_has_help():
    """Every ``add_argument`` in the package (commands, subcommands, benchmarks) says what the option does."""
    import ast

    missing = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                    and not any(k.arg == "help" for k in node.keywords)):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, missing
    # --help shows them, with the defaults
    out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert "Adam's beta1" in " ".join(out.split()) and "(default: 0.9)" in out


def test_stores_and_models_record_version_and_commit(tmp_path):
    from pipeline import code_commit
    from pipeline.store import FeatureStore, write_store

    import numpy as np

    commit = code_commit()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's is)
        assert commit.startswith(head.stdout.strip())
    write_store(tmp_path / "s.h5", ["a"], np.zeros((1, 2, 1, 1), np.float32), feature="hog", params={},
                dtype="float32")
    with FeatureStore(tmp_path / "s.h5") as s:
        assert s.attrs["code_version"] == pipeline.__version__ and s.attrs["code_commit"] == commit
    src = (REPO / "pipeline/decoders/training.py").read_text()
    assert '"code_version": __version__, "code_commit": code_commit()' in src


def test_the_data_commands_do_not_import_torch():
    """list-images, make-shard and manifest (thousands of jobs at ImageNet scale) start
    without torch's seconds of import."""
    code = ("import sys; from pipeline import cli; "
            "[cli.importlib.import_module(cli.COMMANDS[c][0]) for c in ('list-images', 'make-shard', 'manifest')]; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "False"
