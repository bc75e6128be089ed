"""Image sources, preprocessing, shards and manifests on data the tests make."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.commands import build_index, build_listing, make_shard, merge_manifests
from pipeline.data.imagefolder import load_image_file
from pipeline.data.photoset import load_photo, photo_split, photo_table
from pipeline.data.sample import LEGACY_DEFAULTS, SAMPLE_PHOTOS, load_sample_photo, sample_index, sample_settings
from pipeline.data.shards import read_shard

REPO = Path(__file__).resolve().parents[1]

SAMPLE_CFG = {
    "val_photos": ["astronaut", "chelsea", "coffee"],
    "train_photo_crops": 10,
    "val_crops": 4,
    "procedural": 6,
    "crop_scales": [1.0, 0.5],
}


def dataset_cfg(**over):
    cfg = {
        "name": "test",
        "source": "sample",
        "format": "png",
        "shards": {"train": 2, "val": 1},
        "sample": dict(SAMPLE_CFG),
        "imagefolder": {
            "root": None,
            "train_dir": "train",
            "val_dir": "val",
            "val_labels": None,
            "max_images": {"train": None, "val": None},
            "min_side": 16,
        },
    }
    cfg.update(over)
    return cfg


def build(tmp: Path, cfg: dict, split: str, size: int = 32, n_shards: int = 2, seed: int = 0):
    index = {"split": split, "seed": seed, "dataset": cfg, "entries": build_index(cfg, split, seed)}
    out = []
    for k in range(n_shards):
        tar, man = tmp / f"{split}-{k}.tar", tmp / f"{split}-{k}.json"
        make_shard(index, k, n_shards, size, tar, man, cfg["format"])
        out.append((tar, man))
    return index, out


# ------------------------------------------------------------------ sample data


def test_sample_counts_and_split_by_photograph(tmp_path):
    cfg = dataset_cfg()
    tr_index, tr = build(tmp_path, cfg, "train")
    va_index, va = build(tmp_path, cfg, "val", n_shards=1)
    train_samples = [s for tar, _ in tr for s in read_shard(tar)]
    val_samples = [s for tar, _ in va for s in read_shard(tar)]
    assert len(train_samples) == SAMPLE_CFG["train_photo_crops"] + SAMPLE_CFG["procedural"]
    assert len(val_samples) == SAMPLE_CFG["val_crops"]
    train_photos = {s.meta["source"] for s in train_samples if not s.meta["source"].startswith("deadleaves")}
    val_photos = {s.meta["source"] for s in val_samples}
    assert val_photos == set(SAMPLE_CFG["val_photos"])
    assert train_photos and not (train_photos & val_photos)
    assert sum(s.meta["source"].startswith("deadleaves") for s in train_samples) == SAMPLE_CFG["procedural"]
    assert not any(s.meta["source"].startswith("deadleaves") for s in val_samples)
    for s in train_samples + val_samples:
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert "." not in s.key
    # the images are not blank
    assert np.std(np.stack([s.image for s in val_samples])) > 10


def test_sample_shards_are_byte_identical_across_builds(tmp_path):
    cfg = dataset_cfg()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = build(tmp_path / "a", cfg, "train")
    _, b = build(tmp_path / "b", cfg, "train")
    for (ta, ma), (tb, mb) in zip(a, b):
        assert ta.read_bytes() == tb.read_bytes()
        assert json.loads(ma.read_text())["sha256"] == json.loads(mb.read_text())["sha256"]
    # and a different seed gives different images
    (tmp_path / "c").mkdir()
    _, c = build(tmp_path / "c", cfg, "train", seed=1)
    assert c[0][0].read_bytes() != a[0][0].read_bytes()


def test_unknown_val_photo_names_the_key():
    cfg = dataset_cfg(sample=dict(SAMPLE_CFG, val_photos=["astronaut", "nosuchphoto"]))
    with pytest.raises(ValueError, match=r"dataset\.sample\.val_photos.*nosuchphoto"):
        build_index(cfg, "val", 0)


# ------------------------------------------- sample source, shipped photographs

SHIPPED_CFG = dict(SAMPLE_CFG, photos="shipped", train_split="train", val_split="val", skimage_crops=3)


def shipped(**over):
    return dataset_cfg(sample=dict(SHIPPED_CFG, **over))


def _ids(split):
    return {pid for pid, _ in photo_split(split)}


def test_shipped_split_by_photograph_with_labels():
    labels = {r["ImageId"]: r["label"] for r in photo_table()}
    for train_split, val_split in (("train", "val"), ("fit", "dev"), ("fit", "val")):
        cfg = shipped(train_split=train_split, val_split=val_split, train_photo_crops=len(_ids(train_split)))
        train = build_index(cfg, "train", 0)
        val = build_index(cfg, "val", 0)
        crops = [e for e in train if e["kind"] == "shipped"]
        # crop i of photograph i mod P: as many crops as photographs covers each once
        assert sorted(e["photo"] for e in crops) == sorted(_ids(train_split))
        # validation: each photograph of the split once, in ImageId order, whole, unflipped
        assert [e["photo"] for e in val] == sorted(_ids(val_split))
        assert all(e["box"] == [0, 0, 160] and not e["flip"] and e["kind"] == "shipped" for e in val)
        assert not {e["photo"] for e in crops} & {e["photo"] for e in val}
        for e in crops + val:
            assert e["label"] == labels[e["photo"]] and isinstance(e["label"], int)
        assert all(e["label"] is None for e in train if e["kind"] != "shipped")
        assert len({e["key"] for e in train + val}) == len(train) + len(val)
    assert len(build_index(shipped(), "val", 0)) == 200
    assert len(build_index(shipped(val_split="dev"), "val", 0)) == 100
    # the default split's validation photographs are the 200 held out; dev is inside train, fit outside dev
    assert _ids("dev") <= _ids("train") and not _ids("fit") & _ids("dev") and not _ids("train") & _ids("val")


def test_shipped_counts_shards_labels_and_determinism(tmp_path):
    cfg = shipped(train_split="fit", val_split="dev", crop_scales=[1.0, 0.8])
    for d in "abc":
        (tmp_path / d).mkdir()
    index, a = build(tmp_path / "a", cfg, "train", size=24)
    _, b = build(tmp_path / "b", cfg, "train", size=24)
    for (ta, _), (tb, _) in zip(a, b):
        assert ta.read_bytes() == tb.read_bytes()
    _, c = build(tmp_path / "c", cfg, "train", size=24, seed=1)
    assert c[0][0].read_bytes() != a[0][0].read_bytes()
    samples = [s for tar, _ in a for s in read_shard(tar)]
    kinds = {"shipped": 0, "photo": 0, "deadleaves": 0}
    for e in index["entries"]:
        kinds[e["kind"]] += 1
    assert kinds == {"shipped": SAMPLE_CFG["train_photo_crops"], "photo": 3, "deadleaves": SAMPLE_CFG["procedural"]}
    assert len(samples) == len(index["entries"])
    labels = {r["ImageId"]: r["label"] for r in photo_table()}
    fit = _ids("fit")
    for s in samples:
        assert s.image.shape == (24, 24, 3) and s.image.std() > 0
        src = s.meta["source"]
        if src in labels:  # a shipped photograph: its label in the shard (.cls)
            assert src in fit and s.label == labels[src]
        else:
            assert s.label is None and (src in SAMPLE_PHOTOS or src.startswith("deadleaves:"))
    assert {s.meta["source"] for s in samples} & set(SAMPLE_PHOTOS)
    # validation: the whole photograph resized, labelled; the same whatever the seed
    va_index, va = build(tmp_path / "a", cfg, "val", size=24, n_shards=1)
    vb_index, _ = build(tmp_path / "b", cfg, "val", size=24, n_shards=1, seed=5)
    assert va_index["entries"] == vb_index["entries"]
    val = list(read_shard(va[0][0]))
    assert [s.meta["source"] for s in val] == sorted(_ids("dev"))
    assert [s.label for s in val] == [labels[s.meta["source"]] for s in val]
    want = np.asarray(Image.fromarray(load_photo(val[0].meta["source"])).resize((24, 24), Image.BICUBIC,
                                                                               reducing_gap=None))
    np.testing.assert_array_equal(val[0].image, want)


def test_shipped_dead_leaves_draw_on_the_training_split_only():
    from pipeline.data.sample import _shipped_palette

    assert len(_shipped_palette("fit")) == len(_ids("fit")) == 700
    # the dead leaves of train_split fit and train differ (their palettes do), and none reads val
    from pipeline.data.sample import render_sample_entry

    e = {"key": "train_deadleaves_0000000", "kind": "deadleaves", "index": 0, "label": None}
    fit = render_sample_entry(e, 24, dict(SHIPPED_CFG, train_split="fit"), 0)
    np.testing.assert_array_equal(fit, render_sample_entry(e, 24, dict(SHIPPED_CFG, train_split="fit"), 0))
    skimage = render_sample_entry(e, 24, dict(SAMPLE_CFG), 0)
    assert not np.array_equal(fit, skimage)


@pytest.mark.parametrize("over,match", [
    ({"photos": "shiped"}, r"dataset\.sample\.photos.*shiped.*shipped, skimage"),
    ({"train_split": "val"}, r"dataset\.sample\.train_split.*'val'.*train, fit"),
    ({"val_split": "train"}, r"dataset\.sample\.val_split.*'train'.*val, dev"),
])
def test_bad_shipped_keys_name_the_key(over, match):
    with pytest.raises(ValueError, match=match):
        build_index(shipped(**over), "train", 0)


@pytest.mark.parametrize("key,value", [("train_split", "fit"), ("val_split", "dev"), ("skimage_crops", 5)])
def test_shipped_keys_are_refused_with_the_skimage_photos(key, value):
    with pytest.raises(ValueError, match=rf"dataset\.sample\.{key}.*'shipped' only"):
        sample_settings(dict(SAMPLE_CFG, **{key: value}))


def test_legacy_defaults_are_the_schema_defaults():
    """A dataset config (or an index) without the keys of the shipped photographs means the skimage sample."""
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["dataset"]["properties"]["sample"]["properties"]
    assert LEGACY_DEFAULTS == {k: props[k]["default"] for k in LEGACY_DEFAULTS}
    assert sample_index("val", dict(SAMPLE_CFG), 0) == sample_index("val", dict(SAMPLE_CFG, **LEGACY_DEFAULTS), 0)


def test_default_config_trains_and_validates_on_the_shipped_split():
    import yaml

    ds = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["dataset"]
    assert ds["source"] == "sample" and ds["sample"]["photos"] == "shipped"
    assert ds["sample"].get("train_split", "train") == "train" and ds["sample"].get("val_split", "val") == "val"
    assert "800" in ds["name"] and "200" in ds["name"]
    sample_settings(ds["sample"])


# ------------------------------------------------------- image folders, bad files


def _jpeg(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(im: Image.Image):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def imagenet_like(tmp_path):
    """An ImageNet-shaped tree with every kind of awkward file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    photo = load_sample_photo("astronaut")
    good = {}

    def put(rel, payload):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)
        return p

    # good images, two classes
    for c, wnid in enumerate(["n0001", "n0002"]):
        for i in range(3):
            arr = photo[rng.integers(0, 200) :][:300, :400].copy()
            put(f"train/{wnid}/{wnid}_{i}.JPEG", _jpeg(arr))
            good[f"{wnid}__{wnid}_{i}"] = ("plain", c)
    # convertible ones
    cmyk = Image.fromarray(photo[:200, :260]).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")
    put("train/n0001/cmyk.JPEG", buf.getvalue())
    good["n0001__cmyk"] = ("CMYK", 0)
    put("train/n0001/grey.JPEG", _jpeg(photo[:200, :250, 0]))
    good["n0001__grey"] = ("L", 0)
    arr16 = (photo[:120, :150, 0].astype(np.uint16) * 257)
    put("train/n0002/sixteen.png", _png(Image.fromarray(arr16)))
    good["n0002__sixteen"] = ("I;16", 1)
    put("train/n0002/palette.png", _png(Image.fromarray(photo[:100, :100]).convert("P")))
    good["n0002__palette"] = ("P", 1)
    rgba = np.dstack([photo[:100, :120], np.full((100, 120), 128, np.uint8)])
    put("train/n0002/alpha.png", _png(Image.fromarray(rgba, "RGBA")))
    good["n0002__alpha"] = ("RGBA", 1)
    put("train/n0002/small.png", _png(Image.fromarray(photo[:20, :24])))  # smaller than the crop
    good["n0002__small"] = ("upscaled", 1)
    put("train/n0002/mislabelled_png.JPEG", _png(Image.fromarray(photo[:90, :90])))
    good["n0002__mislabelled_png"] = ("png named JPEG", 1)
    # bad ones
    bad = {}
    whole = _jpeg(photo[:300, :300])
    put("train/n0001/truncated.JPEG", whole[: len(whole) // 2])
    bad["truncated.JPEG"] = "truncated"
    put("train/n0001/corrupt.JPEG", whole[:200] + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    bad["corrupt.JPEG"] = "unreadable|truncated|corrupt"
    put("train/n0001/notes.txt", b"not an image at all\n")
    bad["notes.txt"] = "not an image"
    put("train/n0002/tiny.png", _png(Image.fromarray(photo[:5, :5])))
    bad["tiny.png"] = "too small"
    put("train/n0002/empty.JPEG", b"")
    bad["empty.JPEG"] = "not an image"
    os.symlink(root / "does-not-exist.JPEG", root / "train/n0002/dangling.JPEG")
    bad["dangling.JPEG"] = "unreadable"
    # flat validation folder with a label file
    for i in range(4):
        put(f"val/ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(photo[i * 50 : i * 50 + 200, :260]))
    labels = tmp_path / "val_labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {['n0001', 'n0002'][i % 2]}\n" for i in range(4)))
    return root, labels, good, bad


def test_imagefolder_keeps_every_good_image_and_names_every_bad_one(tmp_path, imagenet_like):
    root, labels, good, bad = imagenet_like
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"].update(root=str(root), val_labels=str(labels))
    _, shards = build(tmp_path, cfg, "train", size=32, n_shards=3)
    samples = [s for tar, _ in shards for s in read_shard(tar)]
    assert sorted(s.key for s in samples) == sorted(good)
    for s in samples:
        assert s.image.shape == (32, 32, 3)
        assert s.label == good[s.key][1]
    manifests = [json.loads(m.read_text()) for _, m in shards]
    skipped = {Path(x["path"]).name: x["reason"] for m in manifests for x in m["skipped"]}
    assert set(skipped) == set(bad)
    for name, pattern in bad.items():
        assert any(p in skipped[name] for p in pattern.split("|")), (name, skipped[name])
    converted = {k: v for m in manifests for k, v in m["converted"].items()}
    for key in ("n0001__cmyk", "n0002__sixteen", "n0002__alpha", "n0002__palette", "n0002__small"):
        assert key in converted
    # a 16-bit image keeps its contrast (scaled, not clipped to white)
    sixteen = next(s for s in samples if s.key == "n0002__sixteen")
    assert 20 < sixteen.image.mean() < 235 and sixteen.image.std() > 10
    # merged manifest counts
    merged = merge_manifests([str(m) for _, m in shards], tmp_path / "manifest.json")
    assert merged["images"] == len(good) and merged["skipped_count"] == len(bad)


def test_imagefolder_flat_val_with_label_file(tmp_path, imagenet_like):
    root, labels, _, _ = imagenet_like
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"].update(root=str(root), val_labels=str(labels))
    _, shards = build(tmp_path, cfg, "val", size=32, n_shards=1)
    samples = list(read_shard(shards[0][0]))
    assert [s.key for s in samples] == [f"ILSVRC2012_val_{i + 1:08d}" for i in range(4)]
    assert [s.label for s in samples] == [0, 1, 0, 1]


def test_imagefolder_val_labels_of_loc_val_solution_csv(tmp_path, imagenet_like):
    """ImageNet's LOC_val_solution.csv: the label is the wnid after the name, not the last box coordinate."""
    root, _, _, _ = imagenet_like
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 10 20 30 1 {w} 5 6 7 1\n" for i, w in enumerate(["n0002", "n0001"] * 2)))
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"].update(root=str(root), val_labels=str(labels))
    listing = build_listing(cfg, "val", 0)
    assert [e["label"] for e in listing.entries] == [1, 0, 1, 0]
    assert listing.labels["unknown"] == []  # the header line is not a label


def test_imagefolder_max_images_is_deterministic(tmp_path, imagenet_like):
    root, *_ = imagenet_like
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"].update(root=str(root), max_images={"train": 5, "val": None})
    a = build_index(cfg, "train", 0)
    b = build_index(cfg, "train", 0)
    assert len(a) == 5 and a == b


def test_missing_or_empty_root_fails_naming_the_path(tmp_path):
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_index(cfg, "train", 0)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    cfg["imagefolder"]["root"] = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no files under .*empty/train"):
        build_index(cfg, "train", 0)


def test_draft_decoding_matches_full_decoding(tmp_path):
    photo = load_sample_photo("astronaut")
    p = tmp_path / "a.JPEG"
    Image.fromarray(photo).save(p, quality=95)
    full, _ = load_image_file(p, 64, draft=False)
    fast, _ = load_image_file(p, 64, draft=True)
    assert full.shape == fast.shape == (64, 64, 3)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 4


# ----------------------------------------------------------------- shard format


def test_shards_read_by_webdataset_and_tarfile(tmp_path, imagenet_like):
    import webdataset as wds

    root, labels, good, _ = imagenet_like
    cfg = dataset_cfg(source="imagefolder")
    cfg["imagefolder"].update(root=str(root))
    _, shards = build(tmp_path, cfg, "train", size=40, n_shards=1)
    tar = shards[0][0]
    with tarfile.open(tar) as t:
        members = t.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
    names = [m.name for m in members]
    assert {n.split(".", 1)[1] for n in names} == {"png", "json", "cls"}
    ds = wds.WebDataset(str(tar), shardshuffle=False).decode("rgb8")
    seen = {}
    for item in ds:
        assert item["png"].shape == (40, 40, 3)
        seen[item["__key__"]] = int(item["cls"])
    assert seen == {k: v[1] for k, v in good.items()}
    plain = {s.key: s.label for s in read_shard(tar)}
    assert plain == seen


def test_bad_shard_key_is_rejected(tmp_path):
    from pipeline.data.shards import Sample, write_shard

    with pytest.raises(ValueError, match="keys may not contain"):
        write_shard(tmp_path / "x.tar", [Sample("a.b", np.zeros((4, 4, 3), np.uint8))])
    assert not (tmp_path / "x.tar").exists()
