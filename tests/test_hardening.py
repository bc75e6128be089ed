"""Hostile and unlucky inputs: nothing loaded runs code, nothing non-finite passes
silently, empty shards flow, the listing is exact, pairs are verified, inputs
are checked at start, nothing is left behind, and every error names its file."""
from __future__ import annotations

import json
import os
import pickle
import resource
import shlex
import signal
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.baselines.hoggles import PairedDictionary
from pipeline.cli import entry, main
from pipeline.data.commands import build_listing, make_shard
from pipeline.data.imagefolder import SkipImage, list_files, load_image_file
from pipeline.data.shards import Sample, read_shard, write_shard
from pipeline.decoders.modelfile import DECODER_FORMAT, load_model
from pipeline.evaluation.commands import _load_mean_image
from pipeline.features import check_params, register, verify_weights
from pipeline.io import atomic_path
from pipeline.store import FeatureStore, write_reconstructions, write_store

SIZE = 32

pytestmark = pytest.mark.usefixtures("one_thread_module")


# --------------------------------------------------------------------------- helpers


class Payload:
    """A real pickle payload: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.fixture
def payload(tmp_path):
    """(a Payload, its marker file); the payload is checked to work when unpickled."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # the control: unpickling it does run the command
    marker.unlink()
    return Payload(marker), marker


@register("test_hardening_inf", grey=True, decoder="hog")
class InfFeature(nn.Module):
    """Like an 8x8 average of the grey level, but infinite: a representation gone wrong."""

    name = "test_hardening_inf"

    def __init__(self):
        super().__init__()
        self.params = {}

    def output_shape(self, H, W):
        return (1, H // 8, W // 8)

    def forward(self, x):
        return F.avg_pool2d(x.float().mean(1, keepdim=True), 8) * float("inf")


class TinyNet(nn.Module):
    """A small network for the weights checks of the ``torch`` representation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))


TINY = f"{__name__}:TinyNet"


def crops(photo, n: int, seed: int, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - 4 * size), rng.integers(0, photo.shape[1] - 4 * size)
        c = torch.from_numpy(photo[y:y + 4 * size, x:x + 4 * size].copy()).permute(2, 0, 1)[None].float()
        out.append(F.avg_pool2d(c, 4)[0].permute(1, 2, 0).round().byte().numpy())
    return out


def shard(path, imgs, prefix="k") -> str:
    write_shard(path, [Sample(f"{prefix}{i}", im) for i, im in enumerate(imgs)])
    return str(path)


def extract(shard_path, out, feature="hog", params="{}", *extra) -> str:
    assert main(["extract", "--feature", feature, "--params", params, "--shard", str(shard_path),
                 "--out", str(out), "--threads", "1", *extra]) == 0
    return str(out)


def train_args(shards, stores, out, *extra, steps=2, batch=4):
    return ["train", "--representation", "hog", "--images", *map(str, shards), "--features", *map(str, stores),
            "--out", str(out), "--width", "0.125", "--batch-size", str(batch), "--steps", str(steps),
            "--checkpoint-every", "1", "--log-every", "1", "--threads", "1", "--seed", "1", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shards of real photo crops (train 8, val 3, and an imposter with the val keys),
    their HOG stores (written by ``extract``) and a decoder trained on them."""
    d = tmp_path_factory.mktemp("hardening")
    train = shard(d / "train.tar", crops(skimage.data.astronaut(), 8, 0))
    val = shard(d / "val.tar", crops(skimage.data.chelsea(), 3, 1), "v")
    other = shard(d / "other.tar", crops(skimage.data.coffee(), 3, 2), "v")  # same keys, other images
    stores = {"train": extract(train, d / "train-hog.h5"), "val": extract(val, d / "val-hog.h5"),
              "other": extract(other, d / "other-hog.h5"),
              "val_lbp": extract(val, d / "val-lbp.h5", "lbp", json.dumps({"cell_size": 8}))}
    model = d / "model"
    assert main(train_args([train], [stores["train"]], model)) == 0
    return {"dir": d, "train": train, "val": val, "other": other, "stores": stores, "model": model}


# --------------------------------------------------------------------------- nothing loaded runs code


def test_files_the_project_writes_load_with_weights_only(data):
    for name in ("decoder.pt", "checkpoint.pt"):
        obj = torch.load(data["model"] / name, weights_only=True)
        assert isinstance(obj, dict)
    ck = torch.load(data["model"] / "checkpoint.pt", weights_only=True)
    assert isinstance(ck["config"]["torch"], str) and type(ck["config"]["torch"]) is str
    assert isinstance(ck["rng"]["numpy"][1], torch.Tensor)


def test_a_crafted_decoder_file_is_refused_without_running_code(payload, tmp_path, capsys):
    evil, marker = payload
    path = tmp_path / "decoder.pt"
    torch.save({"format": DECODER_FORMAT, "build_args": evil, "state_dict": {}, "feature": None}, path)
    with pytest.raises(ValueError, match=r"decoder\.pt: refused to load this decoder file") as e:
        load_model(path)
    assert "posix.system" in str(e.value) or "system" in str(e.value)
    assert not marker.exists()
    assert entry(["reconstruct", "--model", str(path), "--images", "x.tar", "--on-the-fly", "--out", "y.h5",
                  "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: refused")
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_then_replaced_on_request(payload, data, tmp_path):
    evil, marker = payload
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"step": 1, "config": evil, "decoder": {}, "encoder": None, "optimizer": {}, "scaler": {},
                "rng": {}, "metrics": [], "acc": {}, "data_files": []}, out / "checkpoint.pt")
    args = train_args([data["train"]], [data["stores"]["train"]], out)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: refused to load this checkpoint.*--restart-if-changed"):
        main(args)
    assert not marker.exists()
    assert main(args + ["--restart-if-changed"]) == 0
    assert not marker.exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2


def test_crafted_weights_files_are_refused(payload, tmp_path):
    evil, marker = payload
    path = tmp_path / "weights.pth"
    torch.save({"features.0.weight": evil}, path)
    for call in (lambda: verify_weights("alexnet", {"arch": "torchvision", "weights": str(path)}),
                 lambda: verify_weights("torch", {"model": TINY, "weights": str(path)}),
                 lambda: main(["extract", "--feature", "alexnet", "--params",
                               json.dumps({"arch": "torchvision", "weights": str(path)}), "--shard", "x.tar",
                               "--out", str(tmp_path / "x.h5")])):
        with pytest.raises(ValueError, match=r"weights\.pth: refused to load") as e:
            call()
        assert "weights_only=False" not in str(e.value)
    assert not marker.exists()


def test_a_crafted_hoggles_dictionary_or_mean_image_is_refused(payload, tmp_path):
    evil, marker = payload
    d = tmp_path / "pd.npz"
    np.savez(d, gray=np.array([evil], dtype=object), hog=np.zeros((2, 2), np.float32),
             config=np.array(json.dumps({"ny": 1, "nx": 1, "cell": 8, "lam": 0.1, "feature": "hog",
                                         "feature_params": {}})))
    with pytest.raises(ValueError, match=r"pd\.npz: not a HOGgles paired dictionary"):
        PairedDictionary.load(d)
    m = tmp_path / "mean.npy"
    np.save(m, np.array([evil], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"mean\.npy: not a mean image"):
        _load_mean_image(m)
    assert not marker.exists()


# --------------------------------------------------------------------------- nothing non-finite passes


def test_non_finite_values_are_refused_at_write(tmp_path):
    keys = ["a", "b", "c"]
    x = np.ones((3, 2, 2, 2), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"bad\.h5: 1 of 3 items of feature 'hog' hold NaN or Inf \(the first: 'b'\)"):
        write_store(tmp_path / "bad.h5", keys, x, feature="hog", params={})
    big = np.ones((3, 2, 2, 2), np.float32)
    big[2, 1, 1, 1] = 1e6
    with pytest.raises(ValueError, match=r"big\.h5: 1 values of feature 'alexnet' exceed float16's range.*float32"):
        write_store(tmp_path / "big.h5", keys, big, feature="alexnet", params={})
    write_store(tmp_path / "big32.h5", keys, big, feature="alexnet", params={}, dtype="float32")
    imgs = np.full((3, 3, 4, 4), 128.0, np.float32)
    imgs[0] = np.inf
    with pytest.raises(ValueError, match=r"rec\.h5: 1 of 3 items of reconstructions of 'hog' by 'mv'"):
        write_reconstructions(tmp_path / "rec.h5", keys, imgs, method="mv", representation="hog", feature="hog",
                              feature_params={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big32.h5"]


def test_non_finite_values_are_refused_at_read(data, tmp_path):
    """A store written by other means (h5py) with a NaN: reading it, and training on it, stop."""
    bad = tmp_path / "nan.h5"
    with FeatureStore(data["stores"]["train"]) as s:
        keys, feats, attrs = s.keys, s.all(), dict(s.attrs)
    feats[5, 0, 0, 0] = np.nan
    with h5py.File(bad, "w") as f:
        f.create_dataset("keys", data=np.array(keys, dtype=h5py.string_dtype()))
        f.create_dataset("features", data=feats.astype(np.float16))
        f.attrs.update(attrs)
    with FeatureStore(bad) as s:
        s[0]
        with pytest.raises(ValueError, match=rf"nan\.h5: 1 of 1 items of feature 'hog' hold NaN or Inf \(the first: '{keys[5]}'\)"):
            s[5]
        with pytest.raises(ValueError, match=r"nan\.h5: 1 of 8 items"):
            s.all()
    with pytest.raises(ValueError, match=r"nan\.h5"):
        main(train_args([data["train"]], [bad], tmp_path / "m"))
    assert not (tmp_path / "m" / "decoder.pt").exists()


def test_a_diverging_training_stops_naming_the_step(data, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ValueError, match=r"training loss is not finite \(NaN or Inf\) at step 2 of 4"):
        main(train_args([data["train"]], [data["stores"]["train"]], out, "--lr", "1e30", "--clip-grad", "0",
                        steps=4))
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 1 and not (out / "decoder.pt").exists()  # nothing from step 2 on was saved
    assert all(np.isfinite(float(r["loss"])) for r in ck["metrics"])


def test_non_finite_reconstructions_and_inversions_stop_naming_the_store(data, tmp_path):
    # a decoder whose weights went NaN
    payload = torch.load(data["model"] / "decoder.pt", weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    torch.save(payload, tmp_path / "decoder.pt")
    out = tmp_path / "rec.h5"
    with pytest.raises(ValueError, match=r"rec\.h5: 3 of 3 items of reconstructions of 'hog' by 'ours'"):
        main(["reconstruct", "--model", str(tmp_path / "decoder.pt"), "--images", data["val"],
              "--features", data["stores"]["val"], "--out", str(out), "--device", "cpu"])
    # Mahendran & Vedaldi inversion and natural pre-images of a representation gone infinite
    # (the inversion's own check fires first, naming the shard and targets; the store's would name the store)
    with pytest.raises((ValueError, RuntimeError), match=r"val\.tar: inversion not finite|mv\.h5: 2 of 2 items"):
        main(["invert-mv", "--shard", data["val"], "--out", str(tmp_path / "mv.h5"), "--feature",
              "test_hardening_inf", "--iterations", "2", "--max-images", "2"])
    with pytest.raises((ValueError, RuntimeError), match=r"val\.tar \(.*invert\)|pre\.png: .*pre-images \(invert\)"):
        main(["preimage", "--mode", "invert", "--feature", "test_hardening_inf", "--shard", data["val"],
              "--max-images", "1", "--iterations", "2", "--grid", str(tmp_path / "pre.png")])
    # HOGgles with a dictionary gone NaN
    pd = PairedDictionary(gray=np.full((4, 36), np.nan, np.float32), hog=np.ones((4, 31), np.float32), ny=1, nx=1,
                          cell=2, lam=0.1)
    pd.save(tmp_path / "pd.npz")
    with pytest.raises(ValueError, match=r"pd\.npz: the HOGgles dictionary holds NaN or Inf"):
        main(["invert-hoggles", "invert", "--dict", str(tmp_path / "pd.npz"), "--shard", data["val"],
              "--out", str(tmp_path / "hg.h5")])
    assert not any(p.suffix in (".h5", ".png") for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- empty shards flow


def _jpeg(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=95, **kw)


def test_empty_shards_flow_through_every_stage(tmp_path):
    """2 images in 3 shards: shard 0 is empty, and every stage passes it through."""
    root = tmp_path / "imagenet"
    photo = skimage.data.astronaut()
    for split, off in (("train", 0), ("val", 200)):
        for i in range(2):
            _jpeg(root / split / "n0001" / f"{split}{i}.JPEG", photo[off + 40 * i:off + 40 * i + 160, :160])
    dataset = {"name": "t", "source": "imagefolder", "format": "png", "shards": {"train": 3, "val": 3},
               "sample": {}, "imagefolder": {"root": str(root), "train_dir": "train", "val_dir": "val",
                                             "val_labels": None, "max_images": {"train": None, "val": None},
                                             "min_side": 16}}
    shards = {}
    for split in ("train", "val"):
        idx = tmp_path / f"{split}.json"
        assert main(["list-images", "--dataset", json.dumps(dataset), "--split", split, "--out", str(idx)]) == 0
        shards[split] = []
        for k in range(3):
            tar = tmp_path / f"{split}-{k}.tar"
            assert main(["make-shard", "--index", str(idx), "--shard", str(k), "--n-shards", "3", "--size", "64",
                         "--out", str(tar), "--manifest", str(tar.with_suffix(".json"))]) == 0
            shards[split].append(str(tar))
        assert main(["manifest", "--out", str(tmp_path / f"{split}-manifest.json"),
                     *[str(Path(t).with_suffix(".json")) for t in shards[split]]]) == 0
        assert json.loads((tmp_path / f"{split}-manifest.json").read_text())["images"] == 2
    assert list(read_shard(shards["train"][0])) == []
    stores = {s: [extract(t, Path(t).with_suffix(".h5")) for t in shards[s]] for s in shards}
    with FeatureStore(stores["train"][0]) as s:
        assert len(s) == 0
    model = tmp_path / "model"
    assert main(train_args(shards["train"], stores["train"], model, batch=2)) == 0
    recs = {"ours": [], "mv": [], "hoggles": []}
    for k, (t, st) in enumerate(zip(shards["val"], stores["val"])):
        recs["ours"].append(str(tmp_path / f"ours-{k}.h5"))
        assert main(["reconstruct", "--model", str(model), "--images", t, "--features", st, "--out",
                     recs["ours"][-1], "--device", "cpu"]) == 0
        recs["mv"].append(str(tmp_path / f"mv-{k}.h5"))
        assert main(["invert-mv", "--shard", t, "--out", recs["mv"][-1], "--feature", "hog",
                     "--iterations", "2"]) == 0
    assert main(["invert-hoggles", "train", "--shards", *shards["train"], "--out", str(tmp_path / "pd.npz"),
                 "--atoms", "8", "--window", "2", "--windows", "40", "--epochs", "1", "--batch-size", "20"]) == 0
    for k, t in enumerate(shards["val"]):
        recs["hoggles"].append(str(tmp_path / f"hg-{k}.h5"))
        assert main(["invert-hoggles", "invert", "--dict", str(tmp_path / "pd.npz"), "--shard", t,
                     "--out", recs["hoggles"][-1]]) == 0
    pert = str(tmp_path / "binarized-0.h5")
    assert main(["evaluate", "perturb", "--features", stores["val"][0], "--kind", "binarize", "--out", pert]) == 0
    assert main(["reconstruct", "--model", str(model), "--images", shards["val"][0], "--features", pert, "--out",
                 str(tmp_path / "ours-binarized-0.h5"), "--device", "cpu"]) == 0
    for path in [*(recs[m][0] for m in recs), tmp_path / "ours-binarized-0.h5"]:
        with FeatureStore(path) as s:
            assert len(s) == 0, path
    assert main(["preimage", "--mode", "invert", "--feature", "hog", "--shard", shards["val"][0],
                 "--out", str(tmp_path / "pre.h5"), "--grid", str(tmp_path / "pre.png")]) == 0
    assert (tmp_path / "pre.png").exists()
    out = tmp_path / "table2.csv"
    assert main(["evaluate", "table2", "--images", *shards["val"], "--row", f"ours-hog={','.join(recs['ours'])}",
                 "--row", f"mv-hog={','.join(recs['mv'])}", "--row", f"hoggles={','.join(recs['hoggles'])}",
                 "--floor-from-val", "--out", str(out)]) == 0
    assert "nan" not in out.read_text().lower()


# --------------------------------------------------------------------------- the listing is exact


def test_listing_follows_links_once_and_skips_what_it_cannot_list(tmp_path, monkeypatch):
    photo = skimage.data.astronaut()
    top = tmp_path / "train"
    _jpeg(top / "n1" / "a.JPEG", photo[:100, :100])
    _jpeg(tmp_path / "elsewhere" / "b.JPEG", photo[100:200, :100])
    os.symlink(top, top / "n1" / "loop")  # back to an ancestor
    os.symlink(top / "n1", top / "n2")  # a second link to a listed directory
    os.symlink(tmp_path / "elsewhere", top / "n3")  # a linked directory listed nowhere else: followed
    os.symlink("self.JPEG", top / "n1" / "self.JPEG")  # a symlink loop
    os.mkfifo(top / "n1" / "fifo.JPEG")  # opening it would block forever
    (top / "locked").mkdir()
    os.chmod(top / "locked", 0)
    if os.geteuid() == 0:  # root reads any directory: make this one fail as it would for a user
        real_scandir = os.scandir

        def scandir(path):
            if Path(path) == top / "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    signal.alarm(30)  # a hang fails the test
    try:
        files, skipped = list_files(top)
    finally:
        signal.alarm(0)
        os.chmod(top / "locked", 0o755)
    assert files == ["n1/a.JPEG", "n3/b.JPEG"]
    reasons = {Path(x["path"]).name: x["reason"] for x in skipped}
    assert "already listed" in reasons["loop"] and "already listed" in reasons["n2"]
    assert reasons["self.JPEG"] == "a symlink loop"
    assert reasons["fifo.JPEG"] == "not a regular file (a FIFO)"
    assert reasons["locked"].startswith("unreadable directory: Permission denied")
    # make-shard never opens a FIFO either (a listing made before it appeared)
    with pytest.raises(SkipImage, match="not a regular file"):
        load_image_file(top / "n1" / "fifo.JPEG", 32)


def test_listing_skips_reach_the_manifest(tmp_path):
    photo = skimage.data.astronaut()
    root = tmp_path / "root"
    _jpeg(root / "train" / "n1" / "a.JPEG", photo[:100, :100])
    os.mkfifo(root / "train" / "n1" / "fifo.JPEG")
    dataset = {"source": "imagefolder", "imagefolder": {"root": str(root), "train_dir": "train", "val_dir": "val",
                                                        "val_labels": None, "max_images": {}, "min_side": 1}}
    idx = tmp_path / "index.json"
    assert main(["list-images", "--dataset", json.dumps(dataset), "--split", "train", "--out", str(idx)]) == 0
    index = json.loads(idx.read_text())
    assert [e["key"] for e in index["entries"]] == ["n1__a"]
    make_shard(index, 0, 1, 32, tmp_path / "s.tar", tmp_path / "s.json")
    skipped = json.loads((tmp_path / "s.json").read_text())["skipped"]
    assert [(Path(x["path"]).name, x["reason"]) for x in skipped] == [("fifo.JPEG", "not a regular file (a FIFO)")]


def test_exif_orientation_is_applied(tmp_path):
    photo = skimage.data.astronaut()[:120, :200]  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    _jpeg(tmp_path / "turned.JPEG", photo, exif=exif)
    _jpeg(tmp_path / "plain.JPEG", np.ascontiguousarray(np.rot90(photo, -1)))
    turned, note = load_image_file(tmp_path / "turned.JPEG", 48, draft=False)
    plain, _ = load_image_file(tmp_path / "plain.JPEG", 48, draft=False)
    assert note.startswith("EXIF orientation 6 applied")
    assert np.abs(turned.astype(int) - plain.astype(int)).mean() < 3


def test_val_label_file_problems_are_reported(tmp_path, capsys):
    photo = skimage.data.astronaut()
    root = tmp_path / "root"
    for c in ("n1", "n2"):
        _jpeg(root / "train" / c / "t.JPEG", photo[:80, :80])
    for i in range(3):
        _jpeg(root / "val" / f"v{i}.JPEG", photo[i * 50:i * 50 + 80, :80])
    labels = tmp_path / "labels.txt"
    labels.write_text("v0.JPEG n1\nv1.JPEG n9\ngone.JPEG n2\n")  # v1: unknown class, v2: unlabelled
    cfg = {"source": "imagefolder", "imagefolder": {"root": str(root), "train_dir": "train", "val_dir": "val",
                                                    "val_labels": str(labels), "max_images": {}, "min_side": 1}}
    listing = build_listing(cfg, "val", 0)
    assert [e["label"] for e in listing.entries] == [0, None, None]
    assert listing.labels["missing"] == ["gone"]
    assert listing.labels["unlabelled"] == ["v2.JPEG"]
    assert listing.labels["unknown"] == [{"line": 2, "name": "v1.JPEG", "label": "n9"}]
    assert main(["list-images", "--dataset", json.dumps(cfg), "--split", "val", "--out",
                 str(tmp_path / "i.json")]) == 0
    err = capsys.readouterr().err
    assert "1 labels of missing images: gone" in err and "1 unlabelled images: v2.JPEG" in err
    assert "1 unknown labels: line 2: v1.JPEG 'n9'" in err


# --------------------------------------------------------------------------- pairs are verified


def test_stores_from_another_shard_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match=r"val-hog\.h5: computed from the image shard .*val\.tar .*not from .*other\.tar"):
        main(train_args([data["other"]], [data["stores"]["val"]], tmp_path / "m"))
    with pytest.raises(ValueError, match=r"val-hog\.h5: computed from the image shard"):
        main(["reconstruct", "--model", str(data["model"]), "--images", data["other"], "--features",
              data["stores"]["val"], "--out", str(tmp_path / "r.h5"), "--device", "cpu"])
    rec = tmp_path / "rec.h5"
    assert main(["reconstruct", "--model", str(data["model"]), "--images", data["val"], "--features",
                 data["stores"]["val"], "--out", str(rec), "--device", "cpu"]) == 0
    assert main(["evaluate", "table2", "--images", data["other"], "--row", f"ours-hog={rec}", "--floor-from-val",
                 "--out", str(tmp_path / "t.csv")]) == 2
    assert not (tmp_path / "t.csv").exists()


def test_stores_of_another_representation_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match=r"feature store .*val-lbp\.h5 holds 'lbp', not 'hog' \(expected: --feature hog"):
        main(train_args([data["val"]], [data["stores"]["val_lbp"]], tmp_path / "m", "--feature", "hog"))
    with pytest.raises(ValueError, match=r"val-lbp\.h5: the store holds 'lbp', not 'hog'"):
        main(["reconstruct", "--model", str(data["model"]), "--images", data["val"], "--features",
              data["stores"]["val_lbp"], "--out", str(tmp_path / "r.h5"), "--device", "cpu"])
    with pytest.raises(ValueError, match="all stores must hold the same representation"):
        main(train_args([data["val"], data["val"]], [data["stores"]["val"], data["stores"]["val_lbp"]],
                        tmp_path / "m"))


# --------------------------------------------------------------------------- inputs checked at start


def test_feature_parameters_are_checked_against_the_signature(data, tmp_path):
    with pytest.raises(ValueError, match=r"feature 'hog': unknown parameter 'cel'; its parameters are cell_size"):
        check_params("hog", {"cel": 8})
    with pytest.raises(ValueError, match="feature 'torch': missing parameter 'model'"):
        check_params("torch", {})
    check_params("sift", {"first_octave": 0, "cell": 4})  # **kwargs followed into SparseSIFT
    with pytest.raises(ValueError, match="unknown parameter 'cel'"):
        extract(data["val"], tmp_path / "x.h5", "hog", json.dumps({"cel": 8}))
    with pytest.raises(KeyError, match="unknown feature 'hogg'"):
        check_params("hogg", {})


def test_weights_files_are_loaded_and_checked_against_the_architecture(tmp_path):
    good = tmp_path / "tiny.pth"
    torch.save(TinyNet().state_dict(), good)
    verify_weights("torch", {"model": TINY, "weights": str(good)})
    verify_weights("hog", {})  # no weights
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 5, 5)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*do not match"):
        verify_weights("torch", {"model": TINY, "weights": str(bad)})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is no weights file" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pth: (refused to load|cannot read) this AlexNet weights file"):
        verify_weights("alexnet", {"arch": "torchvision", "weights": str(garbage)})
    with pytest.raises(ValueError, match=r"(?s)bad\.pth.*do not match arch='caffenet'.*conv1\.weight"):
        verify_weights("alexnet", {"arch": "caffenet", "weights": str(bad)})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        verify_weights("alexnet", {"arch": "caffenet", "weights": str(tmp_path / "nope.pth")})


@pytest.mark.parametrize("command,option,value", [
    ("train", "--steps", "0"), ("train", "--epochs", "-1"), ("train", "--checkpoint-every", "0"),
    ("train", "--batch-size", "0"), ("extract", "--batch-size", "0"), ("reconstruct", "--batch-size", "0"),
    ("invert-mv", "--restarts", "0"), ("make-shard", "--n-shards", "0"),
])
def test_numbers_that_must_be_positive_are(command, option, value, capsys):
    required = {"train": ["--representation", "hog", "--images", "x.tar", "--features", "x.h5"],
                "extract": ["--feature", "hog", "--shard", "x.tar", "--out", "x.h5"],
                "reconstruct": ["--model", "m", "--images", "x.tar", "--out", "x.h5"],
                "invert-mv": ["--shard", "x.tar", "--out", "x.h5", "--feature", "hog"],
                "make-shard": ["--index", "i.json", "--shard", "0", "--size", "32", "--out", "x.tar",
                               "--manifest", "x.json"]}[command]
    with pytest.raises(SystemExit) as e:
        main([command, *required, option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "positive" in err and value in err


# --------------------------------------------------------------------------- no litter


def test_a_killed_writes_temporaries_are_removed_by_the_next_run(data, tmp_path):
    target = tmp_path / "x.h5"
    stale = [tmp_path / ".x.h5.k1ll3d_0.tmp", tmp_path / ".x.h5.abcdefgh.tmp"]
    keep = [tmp_path / ".x.h5.json.abcdefgh.tmp", tmp_path / ".y.h5.abcdefgh.tmp", tmp_path / "x.h5.notes"]
    for p in stale + keep:
        p.write_bytes(b"half-written")
    extract(data["val"], target)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)
    # training: a killed checkpoint write, removed when the run starts again
    out = tmp_path / "m"
    out.mkdir()
    (out / ".checkpoint.pt.zzzzzzzz.tmp").write_bytes(b"x" * 1000)
    (out / ".decoder.pt.zzzzzzzz.tmp").write_bytes(b"x" * 1000)
    assert main(train_args([data["train"]], [data["stores"]["train"]], out)) == 0
    assert not list(out.glob(".*.tmp"))


def test_atomic_path_keeps_other_files_temporaries(tmp_path):
    (tmp_path / ".a.abcdefgh.tmp").write_text("stale")
    (tmp_path / ".a.b.abcdefgh.tmp").write_text("another file's")
    with atomic_path(tmp_path / "a") as tmp:
        assert tmp.exists()
        tmp.write_text("new")
    assert (tmp_path / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.b.abcdefgh.tmp", "a"]


# --------------------------------------------------------------------------- every error names its file


def test_a_damaged_checkpoint_names_itself_and_the_fix(data, tmp_path):
    out = tmp_path / "m"
    args = train_args([data["train"]], [data["stores"]["train"]], out)
    assert main(args) == 0
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"checkpoint\.pt: cannot read this checkpoint, the file is damaged or "
                                         r"truncated .*--restart-if-changed .* or delete it"):
        main(args)
    assert main(args + ["--restart-if-changed"]) == 0
    assert torch.load(ck, weights_only=True)["step"] == 2


def test_a_truncated_shard_or_undecodable_member_names_the_shard(data, tmp_path):
    whole = Path(data["val"]).read_bytes()
    with tarfile.open(data["val"]) as t:
        members = {m.name: m for m in t.getmembers()}
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: members["v2.png"].offset])  # ends on a member boundary: tarfile sees no error
    with pytest.raises(ValueError, match=r"cut\.tar: truncated tar shard"):
        extract(cut, tmp_path / "x.h5")
    # garble the bytes of one PNG member, keeping the tar intact
    m = members["v1.png"]
    raw = bytearray(whole)
    raw[m.offset_data:m.offset_data + m.size] = bytes(m.size)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.tar: member 'v1\.png' cannot be decoded"):
        extract(bad, tmp_path / "x.h5")
    with pytest.raises(ValueError, match=r"bad\.tar: member 'v1' cannot be decoded"):
        main(["reconstruct", "--model", str(data["model"]), "--images", str(bad), "--on-the-fly",
              "--out", str(tmp_path / "r.h5"), "--device", "cpu"])
    assert not (tmp_path / "x.h5").exists()


def test_a_damaged_hdf5_chunk_names_the_store(data, tmp_path):
    path = tmp_path / "store.h5"
    path.write_bytes(Path(data["stores"]["train"]).read_bytes())
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info_by_coord((3, 0, 0, 0))
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset:info.byte_offset + info.size] = b"\xff" * info.size
    path.write_bytes(bytes(raw))
    with FeatureStore(path) as s:
        s[2]
        with pytest.raises(ValueError, match=r"store\.h5: damaged store, items 3 cannot be read .*delete it and rerun"):
            s[3]


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(data, tmp_path, capsys):
    """A file-size limit makes every write past 48 KiB fail (EFBIG), as a full disk does (ENOSPC)."""
    assert (data["model"] / "checkpoint.pt").stat().st_size > 64 << 10
    out = tmp_path / "m"
    args = train_args([data["train"]], [data["stores"]["train"]], out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, hard))
    try:
        rc = entry(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out / 'checkpoint.pt'}: could not be written") and "disk full" in err, err
    assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.pt").exists()
