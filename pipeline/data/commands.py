"""A split's index, image shards and manifest: the ``list-images``,
``make-shard`` and ``manifest`` commands (each one Snakemake job).

``list-images`` writes a split's index (JSON: one entry per image, in shard
order) from the source named by ``dataset.source`` in the config
(``sample``: :mod:`pipeline.data.sample`, the shipped or the scikit-image
photographs and dead leaves; ``imagefolder``:
:mod:`pipeline.data.imagefolder`), ``make-shard`` turns one slice of the
index into one WebDataset tar (:mod:`pipeline.data.shards`) plus a per-shard
manifest, and ``manifest`` merges the per-shard manifests.  What the listing
skipped (unreadable directories, FIFOs, directories reached twice) and the
val label file's problems are kept in the index and reported in the
manifest of shard 0, so that the merged manifest holds every skip.  A shard
whose slice is empty (more shards than images) is an empty tar, which every
later stage passes through.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.imagefolder import Listing, SkipImage, imagefolder_listing, load_image_file
from pipeline.data.sample import render_sample_entry, sample_index
from pipeline.data.shards import Sample, index_shard, load_shard_arrays, write_shard
from pipeline.io import sha256_file, write_json
from pipeline.options import nonnegative_int, positive_int

SPLITS = ("train", "val")


def build_index(dataset_cfg: dict, split: str, seed: int) -> list[dict]:
    return build_listing(dataset_cfg, split, seed).entries


def build_listing(dataset_cfg: dict, split: str, seed: int) -> Listing:
    """The index entries of ``split``, what the listing skipped and the label file's problems."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = dataset_cfg["source"]
    if source == "sample":
        return Listing(sample_index(split, dataset_cfg["sample"], seed))
    if source == "imagefolder":
        return imagefolder_listing(split, dataset_cfg["imagefolder"], seed)
    raise ValueError(f"dataset.source must be 'sample' or 'imagefolder', got {source!r}")


def shard_slice(n: int, shard: int, n_shards: int) -> slice:
    """Contiguous, balanced slice of ``n`` items for ``shard`` of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range 0..{n_shards - 1}")
    return slice(shard * n // n_shards, (shard + 1) * n // n_shards)


@dataclass
class ShardResult:
    count: int
    skipped: list[dict]
    converted: dict[str, str]


def make_shard(index: dict, shard: int, n_shards: int, size: int, out_tar, out_manifest, fmt: str = "png") -> ShardResult:
    """Render/decode this shard's slice of the index and write tar + manifest."""
    entries = index["entries"][shard_slice(len(index["entries"]), shard, n_shards)]
    dataset_cfg, seed = index["dataset"], index["seed"]
    skipped: list[dict] = []
    if shard == 0:  # what the listing skipped (never opened)
        skipped += [{"key": None, "path": x["path"], "reason": x["reason"]} for x in index.get("skipped", [])]
    converted: dict[str, str] = {}
    sources: dict[str, str] = {}

    def samples():
        for e in entries:
            if e["kind"] == "file":
                try:
                    img, note = load_image_file(e["path"], size, dataset_cfg["imagefolder"].get("min_side", 1))
                except SkipImage as err:
                    skipped.append({"key": e["key"], "path": e["path"], "reason": str(err)})
                    continue
                if note:
                    converted[e["key"]] = note
                source = e["path"]
            else:
                img = render_sample_entry(e, size, dataset_cfg["sample"], seed)
                # a scikit-image photograph's name, a shipped photograph's ImageId, or the dead leaves' index
                source = e["photo"] if e["kind"] in ("photo", "shipped") else f"deadleaves:{e['index']}"
            sources[e["key"]] = source
            yield Sample(e["key"], img, e.get("label"), {"source": source})

    count = write_shard(out_tar, samples(), fmt=fmt)
    manifest = {
        "shard": shard,
        "n_shards": n_shards,
        "image_size": size,
        "count": count,
        "keys": list(sources),
        "sources": sources,
        "skipped": skipped,
        "converted": converted,
        "sha256": sha256_file(out_tar),
    }
    if shard == 0 and index.get("labels"):
        manifest["labels"] = index["labels"]
    write_json(out_manifest, manifest)
    return ShardResult(count, skipped, converted)


def merge_manifests(paths: list[str], out) -> dict:
    shards = [json.loads(Path(p).read_text()) for p in paths]
    merged = {
        "images": sum(s["count"] for s in shards),
        "skipped_count": sum(len(s["skipped"]) for s in shards),
        "converted_count": sum(len(s["converted"]) for s in shards),
        "shards": [
            {"shard": s["shard"], "file": str(Path(p).with_suffix(".tar")), "count": s["count"], "sha256": s["sha256"]}
            for p, s in zip(paths, shards)
        ],
        "sources": {k: v for s in shards for k, v in s["sources"].items()},
        "skipped": [x for s in shards for x in s["skipped"]],
        "converted": {k: v for s in shards for k, v in s["converted"].items()},
    }
    labels = next((s["labels"] for s in shards if s.get("labels")), None)
    if labels:
        merged["labels"] = labels
    write_json(out, merged)
    return merged


class FirstImages:
    """The first ``max_images`` images of a split, met shard after shard.

    With ``preceding`` (the per-shard manifests of the split's shards before
    the first one given; [] for shard 0) ``max_images`` counts the images of
    the whole split in shard order (Mahendran & Vedaldi 2015 invert the
    first 100 ImageNet validation images); with None, the images
    of each shard.  ``limit()``: how many images of the next shard to use;
    ``passed(count)``: that shard held ``count`` images.
    """

    def __init__(self, max_images: int | None, preceding: list | None = None):
        self.max_images, self.per_shard = max_images, preceding is None
        before = sum(json.loads(Path(p).read_text())["count"] for p in preceding or [])
        self.left = None if max_images is None else max_images - before

    def limit(self) -> int | None:
        if self.max_images is None:
            return None
        return self.max_images if self.per_shard else max(0, self.left)

    def passed(self, count: int) -> None:
        if self.left is not None:
            self.left -= count

    def images(self, shard) -> tuple[list[str], np.ndarray]:
        """Keys and images (N, H, W, 3) of the next shard among the first images (none decoded when none is)."""
        if self.limit() == 0:
            self.passed(len(index_shard(shard)[0]))
            return [], np.zeros((0, 0, 0, 3), np.uint8)
        keys, images, _ = load_shard_arrays(shard)
        n = self.limit()
        self.passed(len(keys))
        return (keys, images) if n is None else (keys[:n], images[:n])


def configure_list_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="the config's 'dataset' section as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the split's order and subsets")
    p.add_argument("--split", required=True, choices=SPLITS, help="which split to list")
    p.add_argument("--out", required=True, help="index JSON to write")


def _label_report(labels: dict) -> list[str]:
    lines = []
    for what, items in (("labels of missing images", labels["missing"]), ("unlabelled images", labels["unlabelled"]),
                        ("unknown labels", [f"line {u['line']}: {u['name']} {u['label']!r}" for u in labels["unknown"]])):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > 5 else ""
            lines.append(f"  {labels['file']}: {len(items)} {what}: {', '.join(map(str, items[:5]))}{more}")
    return lines


def run_list(args) -> int:
    try:
        dataset = json.loads(args.dataset)
    except json.JSONDecodeError as e:
        raise ValueError(f"--dataset: not valid JSON ({e})")
    listing = build_listing(dataset, args.split, args.seed)
    index = {"split": args.split, "seed": args.seed, "dataset": dataset, "entries": listing.entries}
    if listing.skipped:
        index["skipped"] = listing.skipped
    if listing.labels:
        index["labels"] = listing.labels
    write_json(args.out, index)
    print(f"{args.split}: {len(listing.entries)} entries, {len(listing.skipped)} skipped -> {args.out}",
          file=sys.stderr)
    for x in listing.skipped:
        print(f"  skipped {x['path']}: {x['reason']}", file=sys.stderr)
    for line in _label_report(listing.labels) if listing.labels else []:
        print(line, file=sys.stderr)
    return 0


def configure_shard_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index JSON written by list-images")
    p.add_argument("--shard", type=nonnegative_int, required=True, help="index of the shard to write (0-based)")
    p.add_argument("--n-shards", type=positive_int, required=True, help="number of shards the split is cut into")
    p.add_argument("--size", type=positive_int, required=True, help="side of the square output images")
    p.add_argument("--format", default="png", choices=["png", "jpg"], help="encoding of the images in the shard")
    p.add_argument("--out", required=True, help="tar shard to write")
    p.add_argument("--manifest", required=True, help="per-shard manifest JSON to write")


def run_shard(args) -> int:
    index = json.loads(Path(args.index).read_text())
    t = time.perf_counter()
    res = make_shard(index, args.shard, args.n_shards, args.size, args.out, args.manifest, args.format)
    print(
        f"shard {args.shard}/{args.n_shards}: wrote {res.count} images, skipped {len(res.skipped)}, "
        f"converted {len(res.converted)} in {time.perf_counter() - t:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    for s in res.skipped:
        print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
    return 0


def configure_manifest_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="merged manifest JSON to write")
    p.add_argument("manifests", nargs="+", help="per-shard manifests, in shard order")


def run_manifest(args) -> int:
    m = merge_manifests(args.manifests, args.out)
    print(f"{m['images']} images, {m['skipped_count']} skipped -> {args.out}", file=sys.stderr)
    return 0
