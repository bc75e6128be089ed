"""The Snakemake workflow: config validation, dry runs, and a real data stage."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "config" / "test.yaml"


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def shell_words(line: str) -> list[str]:
    """The words of a printed shell command (``Shell command: ...`` of ``snakemake -n -p``)."""
    return shlex.split(line.partition("Shell command: ")[2] or line)


def option(line: str, name: str) -> str:
    """The value of option ``name`` in a printed shell command."""
    words = shell_words(line)
    return words[words.index(name) + 1]


def settings(line: str) -> dict:
    """The ``--settings`` object of a printed shell command."""
    return json.loads(option(line, "--settings"))


def report_files(report_html: str) -> dict[str, bytes]:
    """File name -> contents of the results a self-contained Snakemake report embeds
    (as base64 data URIs)."""
    found = re.findall(r"data:[^;\"]+;charset=[^;\"]+;filename=([^;\"]+);base64,([A-Za-z0-9+/=]+)", report_html)
    return {name: base64.b64decode(data) for name, data in found}


def job_counts(stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0].startswith("-"):
                if counts:
                    break
                continue
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts


def dry_run_jobs(stdout: str) -> list[dict]:
    """The jobs a dry run lists: for each ``rule NAME:`` block, ``rule``, ``wildcards``
    and ``resources`` (dicts of the ``k=v, ...`` lines, values as printed)."""
    jobs, job = [], None
    for line in stdout.splitlines():
        m = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if m and not line.startswith(" "):
            job = {"rule": m.group(1), "wildcards": {}, "resources": {}}
            jobs.append(job)
        elif job is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("wildcards", "resources"):
                job[key] = dict(kv.split("=", 1) for kv in value.split(", ") if "=" in kv)
            elif key in ("priority", "threads"):  # printed when not the default (0, 1)
                job[key] = int(value)
        elif line.strip():
            job = None
    return jobs


def test_dry_run_of_all_targets_default_config(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1")
    counts = job_counts(proc.stdout)
    # config/config.yaml: 4 train + 1 val shards at one image size (128 px: shallow and EfficientNet-Lite0)
    assert counts["list_images"] == 2
    assert counts["make_shard"] == 4 + 1
    # stores for the decoders' representations: hog, sift, lbp + 6 network layers, every shard
    assert counts["extract_features"] == (3 + 6) * 5
    assert counts["train_decoder"] == 3 + 6
    assert counts["train_autoencoder"] == 1  # stage4
    # hog, cnn_hog, cnn_hogb, cnn_dsift + stage4, logits on the 1 val shard
    assert counts["invert_mv"] == 4 + 2
    assert counts["perturb_features"] == 6 * 4  # every decoded network layer x 4 perturbations (Figure 7's)
    # ours (hog, sift, lbp), ours network, ours perturbed; autoencoders, autoencoders perturbed
    assert counts["reconstruct"] == 3 + 6 + 6 * 4 + 1 + 1 * 4
    for rule in ("table2", "mv_table1", "figure7", "train_hoggles", "invert_hoggles", "mean_image"):
        assert counts[rule] == 1, rule
    # scheduling on 2 cores: SIFT and HOG (decoders.overrides.*.priority) and their training
    # features first, HOGgles' chain early; decoders on one thread each, holding no GPU (decoders.device: cpu)
    jobs = dry_run_jobs(proc.stdout)
    for job in jobs:
        rep, split = job["wildcards"].get("rep"), job["wildcards"].get("split")
        if job["rule"] == "train_decoder" or (job["rule"] == "extract_features" and split == "train"):
            assert job.get("priority", 0) == (1 if rep in ("sift", "hog") else 0), job
        if job["rule"] == "make_shard":  # the training shards before anything else
            assert job.get("priority", 0) == (2 if split == "train" else 0), job
        if job["rule"] == "extract_features" and split == "val":
            assert job.get("priority", 0) == 0, job
        if job["rule"] in ("train_hoggles", "invert_hoggles"):
            assert job.get("priority", 0) == 1, job
        if job["rule"] in ("train_decoder", "train_autoencoder"):
            assert job.get("threads", 1) == 1 and job["resources"]["gpu"] == "0", job


def test_unknown_config_key_is_rejected_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  sorce: sample\n")
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "sorce" in proc.stderr + proc.stdout


def test_bad_enum_value_names_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  source: imagenett\n")
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "imagenett" in out and "imagefolder" in out


@pytest.mark.parametrize("sample,names", [
    ("photos: shiped", ["shiped", "shipped", "skimage", "'sample']['properties']['photos']"]),
    ("photos: shipped\n    val_split: train", ["'train'", "'val', 'dev'", "['val_split']"]),
    ("skimage_crops: 5", ["dataset.sample.skimage_crops", "'shipped' only"]),
])
def test_bad_sample_keys_fail_at_once_naming_the_key(tmp_path, sample, names):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"dataset:\n  sample:\n    {sample}\n")
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    for name in names:
        assert name in out, (name, out)


def test_missing_imagefolder_root_fails_at_once_naming_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"dataset:\n  source: imagefolder\n  imagefolder:\n    root: {tmp_path}/no_imagenet_here\n")
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "dataset.imagefolder.root" in out and "no_imagenet_here" in out


def test_decoder_overrides_reach_only_their_representation(tmp_path):
    import yaml

    full = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    full["decoders"].update(epochs=2, image_size=32, overrides={"sift": {"steps": 7, "width": 0.5, "priority": 3}})
    cfg = tmp_path / "over.yaml"
    cfg.write_text(yaml.safe_dump(full))
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/models/sift/decoder.pt",
                     "results/models/hog/decoder.pt", "--configfile", str(cfg))
    cmds = {option(line, "--representation"): settings(line)
            for line in proc.stdout.splitlines() if "pipeline train --settings" in line}
    assert cmds["sift"]["steps"] == 7 and cmds["sift"]["width"] == 0.5 and cmds["sift"]["epochs"] is None
    assert "priority" not in cmds["sift"]  # scheduling, not a training setting: changing it reruns nothing
    prio = {j["wildcards"]["rep"]: j.get("priority", 0) for j in dry_run_jobs(proc.stdout) if j["rule"] == "train_decoder"}
    assert prio == {"sift": 3, "hog": 0}
    assert cmds["hog"]["epochs"] == 2 and cmds["hog"]["width"] == 0.25 and cmds["hog"]["steps"] is None
    assert all(c["image_size"] == 32 for c in cmds.values())


def test_decoder_override_of_unknown_representation_is_named(tmp_path):
    import yaml

    full = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    full["decoders"]["overrides"] = {"sfit": {"steps": 7}}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(full))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(cfg), check=False)
    assert proc.returncode != 0
    assert "decoders.overrides.sfit" in proc.stderr + proc.stdout


def test_configfile_replaces_the_default_config_instead_of_merging(tmp_path):
    # a config without decoders.overrides must not inherit the sample config's
    cfg = tmp_path / "plain.yaml"
    cfg.write_text("representations:\n  hog: {feature: hog, image_size: 64}\ndecoders:\n  train: [hog]\n"
                   "  network_layers: []\n  autoencoder_layers: []\nnetwork:\n  layers: []\n"
                   "mv:\n  representations: [hog]\n  network_layers: []\n")
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/models/hog/decoder.pt",
                     "--configfile", str(cfg))
    line = next(li for li in proc.stdout.splitlines() if "pipeline train" in li and "--representation hog" in li)
    s = settings(line)
    assert s["epochs"] == 15 and s["steps"] is None and s["width"] == 1.0  # schema defaults


def test_config_values_reach_the_shell_quoted_and_literal(tmp_path):
    """A config value with shell syntax in it is one word of its job's command: the job's
    command line gets it literally (and rejects it), the shell never runs it."""
    import os

    import yaml

    evil = "cpu; touch HACKED #"
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    for section in ("decoders", "mv", "features"):
        cfg[section]["device"] = evil
    cfg["dataset"]["name"] = "it's $(touch HACKED) & more"
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(path))
    lines = [li for li in proc.stdout.splitlines() if li.startswith("Shell command: ")]
    seen = set()
    for line in lines:
        words = shell_words(line)
        assert "touch" not in words and "$(touch" not in words, line  # split off: the shell would run it
        if "--settings" in words:
            s = settings(line)
            for key, value in (("device", evil), ("dataset", cfg["dataset"]["name"])):
                if key in s:
                    assert s[key] == value, line
                    seen.add(words[words.index("pipeline") + 1])
    assert {"train", "reconstruct", "invert-mv", "extract", "evaluate"} <= seen
    # run one of those commands: its CLI gets the value as given and refuses it
    line = next(li for li in lines if "pipeline train" in li and "--representation hog" in li)
    (tmp_path / "logs/train_decoder").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(["bash", "-c", line.partition("Shell command: ")[2]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and not (tmp_path / "HACKED").exists()
    assert evil in (tmp_path / "logs/train_decoder/hog.log").read_text()


def _words_after(line: str, name: str) -> list[str]:
    """The values of option ``name`` (up to the next option or redirection) in a printed shell command."""
    words = shell_words(line)
    out = []
    for w in words[words.index(name) + 1:]:
        if w.startswith("-") or w.startswith(">") or w.startswith("2>"):
            break
        out.append(w)
    return out


@pytest.fixture(scope="module")
def imagenet_dry_run(tmp_path_factory):
    """(config, stdout) of ``snakemake -n -p`` of all targets of config/imagenet.yaml (a real
    root, 2 train shards, random AlexNet weights; features.device cuda as it comes)."""
    import yaml

    tmp_path = tmp_path_factory.mktemp("imagenet_dry_run")
    cfg = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    cfg["dataset"]["imagefolder"]["root"] = str(tmp_path)
    cfg["dataset"]["shards"]["train"] = 2
    cfg["network"]["params"]["weights"] = "random"
    path = tmp_path / "imagenet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", str(path)).stdout


def test_cpu_only_feature_extraction_holds_no_gpu(imagenet_dry_run):
    """With features.device cuda (config/imagenet.yaml), the extraction jobs of sparse SIFT
    (registry trait cpu_only: VLFeat on the CPU) ask for gpu=0, so they never hold the one
    GPU the torch representations' jobs wait for; those ask for gpu=1."""
    cfg, stdout = imagenet_dry_run
    assert cfg["features"]["device"] == "cuda"
    gpu = {}
    for job in dry_run_jobs(stdout):
        if job["rule"] == "extract_features":
            gpu.setdefault(job["wildcards"]["rep"], set()).add(job["resources"].get("gpu"))
    assert {"sift", "hog", "lbp", "alexnet_conv1"} <= set(gpu)
    assert gpu == {rep: {"0"} if rep == "sift" else {"1"} for rep in gpu}


def test_imagenet_config_plans_the_papers_protocols(imagenet_dry_run):
    """config/imagenet.yaml (a real root, fewer train shards): M&V and HOGgles invert the first 100
    validation images, the decoders are evaluated on the first 5 of 50 validation shards, and train
    15 epochs (shallow) or 60 (AlexNet decoders, autoencoders)."""
    cfg, stdout = imagenet_dry_run
    counts = job_counts(stdout)
    assert cfg["dataset"]["shards"]["val"] == 50 and cfg["evaluation"]["val_shards"] == 5
    assert counts["invert_mv"] == (4 + 8) * 5 and counts["invert_hoggles"] == 5
    # ours (hog, sift, lbp), ours AlexNet and perturbed (4 kinds), autoencoders and perturbed
    assert counts["reconstruct"] == (3 + 8 + 8 * 4 + 8 + 8 * 4) * 5 and counts["make_shard"] == 2 * (2 + 5)
    lines = [li for li in stdout.splitlines() if li.startswith("Shell command: ")]
    for line in (li for li in lines if "invert-mv" in li or "invert-hoggles invert" in li):
        shard = int(option(line, "--shard").rsplit("/", 1)[1][:5])
        preceding = _words_after(line, "--preceding")
        assert [int(p.rsplit("/", 1)[1][:5]) for p in preceding] == list(range(shard)), line
        assert settings(line)["max_images"] == 100
    table2 = next(li for li in lines if "evaluate table2" in li)
    assert [w.rsplit("/", 1)[1] for w in _words_after(table2, "--images")] == [f"{i:05d}.tar" for i in range(5)]
    assert settings(table2)["max_images"] is None
    assert settings(next(li for li in lines if "evaluate mv-table1" in li))["max_images"] == 100
    epochs = {option(li, "--representation"): settings(li)["epochs"] for li in lines if "pipeline train " in li}
    assert {epochs[r] for r in ("hog", "sift", "lbp")} == {15}
    assert {e for r, e in epochs.items() if r.startswith("alexnet_")} == {60}  # decoders and autoencoders


@pytest.mark.slow
def test_data_stage_runs_on_the_test_config(test_config_run):
    """The data stage of the shared run of config/test.yaml (conftest.test_config_run)."""
    work = test_config_run
    targets = ["data/shards/32px/train/manifest.json", "data/shards/32px/val/manifest.json"]
    train = json.loads((work / targets[0]).read_text())
    val = json.loads((work / targets[1]).read_text())
    assert train["images"] == 40 + 60 and val["images"] == 6
    assert train["skipped_count"] == 0
    assert (work / "logs/make_shard/32px/train/00000.log").read_text().startswith("shard 0/2: wrote")
    assert list((work / "benchmarks/make_shard/32px/train").glob("*.tsv"))
    # nothing left to do afterwards
    proc = snakemake(work, *targets, "-n", "--cores", "1", "--configfile", str(TEST_CONFIG))
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_end_to_end_table2_and_report_on_the_test_config(test_config_run):
    """Table 2 of the shared run of config/test.yaml (conftest.test_config_run), what a
    changed setting reruns, and the report."""
    tmp_path = test_config_run  # the run's working directory
    table = (tmp_path / "results/table2.csv").read_text()
    for row in ("HOGgles", "HOG", "SIFT", "LBP"):
        assert row in table
    assert (tmp_path / "results/table2.md").read_text().strip()
    # Changing one decoder hyperparameter reruns the decoders and Table 2 only.
    import yaml

    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["decoders"]["lr"] = 0.002
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    counts = job_counts(
        snakemake(tmp_path, "results/table2.csv", "-n", "--cores", "1", "--configfile", str(changed)).stdout
    )
    assert counts.get("train_decoder") == 3 and counts.get("table2") == 1
    assert "make_shard" not in counts and "extract_features" not in counts
    assert "invert_mv" not in counts and "train_hoggles" not in counts
    # -f reruns exactly one target
    counts = job_counts(
        snakemake(tmp_path, "results/table2.csv", "-n", "-f", "--cores", "1", "--configfile", str(TEST_CONFIG)).stdout
    )
    assert counts == {"table2": 1, "total": 1}
    # The report, right after the main command, for what it built (the README's command):
    # Table 2 as a table with the paper's values and the checks, its CSV, the training curves.
    snakemake(tmp_path, "--report", "results/report.html", "results/table2.csv", "--configfile", str(TEST_CONFIG))
    report = (tmp_path / "results/report.html").read_text(encoding="utf-8")
    files = report_files(report)
    assert {"table2.html", "table2.csv", "training_curves_shallow.png"} <= set(files)
    assert not {"figure7.png", "grid_shallow.png", "mv_table1.html"} & set(files)  # not built: left out
    page = files["table2.html"].decode()
    for row in csv.DictReader(io.StringIO(table)):
        assert f"<td>{row['name']}</td><td>{float(row['error_mean']):.3f}</td>" in page.replace("&amp;", "&")
        if row["paper_error"]:
            assert f"<td>{float(row['paper_error']):.2f}</td>" in page
    assert "Checks against the paper's claims" in page and files["table2.csv"].decode() == table
    categories = json.loads(re.search(r"var categories = (.*);", report).group(1))
    assert categories == {"Dosovitskiy & Brox 2016": {
        "Table 2": ["results/table2.csv", "results/table2.html"],
        "Training curves": ["results/figures/training_curves_shallow.png"]}}
    # the same as a zip of the report and its files
    snakemake(tmp_path, "--report", "results/report.zip", "results/table2.csv", "--configfile", str(TEST_CONFIG))
    with zipfile.ZipFile(tmp_path / "results/report.zip") as z:
        name = next(n for n in z.namelist() if n.endswith("/table2.html"))
        assert z.read(name) == files["table2.html"]
