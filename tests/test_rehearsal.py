"""A rehearsal of the paper configuration at ImageNet's shape: config/imagenet.yaml itself,
only its counts and sizes made small, on a synthetic ImageNet tree (1000 class folders, JPEGs of mixed
sizes and modes, a flat val/ with a label file, corrupt files), end to end on the CPU to
Table 2 and Mahendran & Vedaldi's Table 1 — so that what a first ImageNet run would hit is
hit here first."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

N_CLASSES, N_VAL = 1000, 16


def _image(rng, w: int, h: int) -> Image.Image:
    """A smooth colour image (a few blobs on a gradient)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)[None, None] + (x[..., None] / w - 0.5) * rng.uniform(-120, 120, 3)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, max(w, h) / 2)
        base += (np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(-150, 150, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _save(im: Image.Image, path: Path, kind: int) -> str:
    """Save ``im`` as ImageNet's files come: mostly RGB JPEGs, some grey, CMYK, palette PNGs named
    .JPEG, 16-bit and RGBA PNGs; returns the mode written."""
    if kind == 0:
        im.convert("L").save(path, "JPEG", quality=90)
        return "L"
    if kind == 1:
        im.convert("CMYK").save(path, "JPEG", quality=90)
        return "CMYK"
    if kind == 2:
        im.convert("P").save(path, "PNG")  # a PNG behind a .JPEG name, as in ImageNet's train set
        return "P"
    if kind == 3:
        grey = np.asarray(im.convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey).save(path.with_suffix(".png"))
        return "I;16"
    if kind == 4:
        im.convert("RGBA").save(path.with_suffix(".png"))
        return "RGBA"
    im.save(path, "JPEG", quality=90)
    return "RGB"


def make_imagenet_tree(root: Path, seed: int = 0) -> dict:
    """train/<wnid>/ (1000 classes, 1-2 images each), a flat val/ labelled by a
    LOC_val_solution.csv-style file, and a few corrupt files; returns what was written."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 37 * i:08d}" for i in range(N_CLASSES)]
    corrupt = []
    for c, wnid in enumerate(wnids):
        d = root / "train" / wnid
        d.mkdir(parents=True)
        for j in range(1 + (c % 7 == 0)):
            w, h = int(rng.integers(20, 140)), int(rng.integers(20, 140))
            _save(_image(rng, w, h), d / f"{wnid}_{j}.JPEG", c % 11 if c % 11 < 5 else 5)
    good = root / "train" / wnids[0] / f"{wnids[0]}_0.JPEG"
    bad = {"truncated.JPEG": good.read_bytes()[: len(good.read_bytes()) // 2], "empty.JPEG": b"",
           "notes.txt": b"not an image\n", "tiny.JPEG": None}
    for name, data in bad.items():
        path = root / "train" / wnids[1] / f"{wnids[1]}_{name}"
        if data is None:
            _image(rng, 8, 8).save(path, "JPEG")  # below dataset.imagefolder.min_side
        else:
            path.write_bytes(data)
        corrupt.append(path.name)
    val = root / "val"
    val.mkdir()
    lines = ["ImageId,PredictionString"]
    labels = {}
    for i in range(1, N_VAL + 1):
        name = f"ILSVRC2012_val_{i:08d}"
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        _save(_image(rng, w, h), val / f"{name}.JPEG", i % 6)
        wnid = wnids[int(rng.integers(N_CLASSES))]
        labels[name] = wnids.index(wnid)
        lines.append(f"{name},{wnid} 12 34 56 78 {wnid} 9 10 111 121")  # the label, then boxes
    (val / "ILSVRC2012_val_00000000.JPEG").write_bytes(b"\xff\xd8\xff\xe0 cut short")  # sorts first: shard 0
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    return {"labels": labels, "corrupt": corrupt}


def rehearsal_config(root: Path) -> dict:
    """config/imagenet.yaml with only the counts and sizes made small (and the CPU, the root,
    random weights)."""
    cfg = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    ds = cfg["dataset"]
    ds["imagefolder"].update(root=str(root), val_labels=str(root / "LOC_val_solution.csv"))
    # one train shard: the jobs (each seconds of start-up), not the images, cost the time here;
    # several train shards run in the test config's end-to-end run (tests/test_workflow.py)
    ds["shards"] = {"train": 1, "val": 4}
    for rep in cfg["representations"].values():
        rep["image_size"] = 32
    cfg["network"]["params"]["weights"] = "random"  # no AlexNet file here
    cfg["network"]["image_size"] = 64
    cfg["features"]["device"] = "cpu"
    # narrower decoders (the same code): at full width each writes a 1 GB checkpoint and
    # a 333 MB model, the most of their jobs' time here
    cfg["decoders"].update(steps=2, batch_size=8, checkpoint_every=2, workers=0, width=0.25)
    cfg["mv"].update(max_images=6, iterations=3, batch_size=8)  # the first 6 lie in val shards 0 and 1
    cfg["hoggles"] = {"atoms": 16, "window": 2, "windows": 200, "epochs": 1}
    cfg["evaluation"]["val_shards"] = 2
    return cfg


def test_imagenet_config_runs_end_to_end_on_an_imagenet_shaped_tree(tmp_path):
    tree = make_imagenet_tree(tmp_path / "imagenet")
    config = tmp_path / "rehearsal.yaml"
    config.write_text(yaml.safe_dump(rehearsal_config(tmp_path / "imagenet")))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "2", "results/table2.csv", "results/mv_table1.csv", "--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    train = json.loads((work / "data/index/train.json").read_text())
    labels = {e["label"] for e in train["entries"]}
    assert len(labels) == N_CLASSES  # every class folder listed
    manifest = [json.loads(p.read_text()) for p in sorted((work / "data/shards/32px/train").glob("0*.json"))]
    skipped = {Path(s["path"]).name: s["reason"] for m in manifest for s in m["skipped"]}
    assert set(tree["corrupt"]) <= set(skipped), skipped
    assert "too small" in skipped[next(n for n in skipped if n.endswith("tiny.JPEG"))]
    notes = " | ".join(n for m in manifest for n in m["converted"].values())
    for note in ("L converted", "CMYK converted", "P converted", "I;16 (16/32-bit)", "RGBA with alpha"):
        assert note in notes, note
    # the flat val/ with its LOC_val_solution.csv: the label is the wnid after the name
    val = json.loads((work / "data/index/val.json").read_text())
    got = {Path(e["path"]).stem: e["label"] for e in val["entries"]}
    assert {k: got[k] for k in tree["labels"]} == tree["labels"]
    val0 = json.loads((work / "data/shards/32px/val/00000.json").read_text())
    assert any("ILSVRC2012_val_00000000" in s["path"] for s in val0["skipped"])

    with open(work / "results/table2.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    n_eval = sum(json.loads((work / f"data/shards/32px/val/{s:05d}.json").read_text())["count"] for s in (0, 1))
    assert {"ours-hog", "ours-sift", "ours-lbp", "hoggles", "mv-hog"} <= set(rows)
    for r in rows.values():
        assert np.isfinite(float(r["error_mean"])) and float(r["error_mean"]) > 0
        expected = 6 if r["method"] in ("hoggles", "mahendran-vedaldi", "mv") else n_eval
        assert int(r["n_images"]) == expected, r
    with open(work / "results/mv_table1.csv") as f:
        table1 = list(csv.DictReader(f))
    assert table1 and all(int(r["n_images"]) == 6 for r in table1)
    assert all(np.isfinite(float(r["error_pct_mean"])) for r in table1)
