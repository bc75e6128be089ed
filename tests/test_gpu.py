"""The CUDA code paths, each checked against the CPU on the same inputs.

Marked ``gpu`` and skipped where no CUDA device is present (CI has none): run
``python -m pytest -m gpu`` on a GPU machine.  Covered: every feature on CUDA
(equal to the CPU), feature extraction and reconstruction from the command line
with ``--device cuda``, decoder training with bf16 / fp16 autocast and
channels_last, single-process NCCL DDP, and batched Mahendran & Vedaldi
inversion on the GPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import cli
from pipeline.data.sample import load_sample_photo
from pipeline.features import get_feature
from pipeline.data.shards import Sample, write_shard
from pipeline.store import FeatureStore

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SIZE = 64


def _crops(n: int, size: int = SIZE) -> np.ndarray:
    """n uint8 (size, size, 3) crops of three photographs."""
    out = []
    for i in range(n):
        photo = load_sample_photo(("astronaut", "coffee", "chelsea")[i % 3])
        y, x = 17 * i % (photo.shape[0] - size), 29 * i % (photo.shape[1] - size)
        out.append(np.ascontiguousarray(photo[y:y + size, x:x + size]))
    return np.stack(out)


@pytest.fixture(autouse=True)
def full_float32():
    """CPU-comparable CUDA arithmetic: no TF32 in convolutions and matrix products (PyTorch
    enables it for cuDNN convolutions by default: ~1e-3 relative error per layer, which
    twenty M&V iterations through AlexNet amplify to grey levels).  Also undoes the global
    flag that ``train --deterministic`` run in this process switches on."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    imgs = _crops(48)
    paths = []
    for s in range(3):
        part = imgs[s * 16:(s + 1) * 16]
        p = d / f"{s}.tar"
        write_shard(p, [Sample(f"s{s}i{i:02d}", im) for i, im in enumerate(part)])
        paths.append(p)
    return {"dir": d, "tars": paths, "images": imgs}


FEATURES = [
    ("hog", {}), ("hogb", {}), ("lbp", {}), ("lbp", {"cell_size": 8}), ("dsift", {}), ("sift", {}),
    ("alexnet", {"layer": "conv1", "weights": "random"}), ("alexnet", {"layer": "conv5", "weights": "random"}),
    ("alexnet", {"layer": "fc8", "weights": "random"}),
]


@pytest.mark.parametrize("name,params", FEATURES, ids=[f"{n}-{json.dumps(p)}" for n, p in FEATURES])
def test_features_on_cuda_equal_the_cpu(name, params):
    x = torch.from_numpy(_crops(6, 128 if name != "alexnet" else 227)).permute(0, 3, 1, 2).float()
    feat = get_feature(name, **params).eval()
    with torch.no_grad():
        cpu = feat(x)
        gpu = feat.to("cuda")(x.cuda())
    assert gpu.device.type == "cuda" and torch.isfinite(gpu).all()
    # AlexNet's convolutions run in TF32 on the GPU (PyTorch's default): a relative error ~1e-3
    tol = 1e-2 * float(cpu.abs().max()) if name == "alexnet" else 2e-3
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=tol)


@pytest.mark.parametrize("name", ["hog", "dsift", "alexnet"])
def test_gradients_on_cuda_equal_the_cpu(name):
    params = {"layer": "conv3", "weights": "random"} if name == "alexnet" else {}
    x = torch.from_numpy(_crops(2, 96)).permute(0, 3, 1, 2).float()
    feat = get_feature(name, **params).eval()
    grads = []
    for dev in ("cpu", "cuda"):
        xi = x.detach().clone().to(dev).requires_grad_(True)
        feat.to(dev)(xi).pow(2).sum().backward()
        grads.append(xi.grad.cpu())
    g_cpu, g_gpu = grads[0].flatten().double(), grads[1].flatten().double()
    assert torch.isfinite(g_gpu).all()
    # summation order differs (atomic scatter-adds on the GPU); compare as vectors
    assert float((g_gpu - g_cpu).norm() / g_cpu.norm()) < 1e-2
    assert float(torch.nn.functional.cosine_similarity(g_gpu, g_cpu, dim=0)) > 0.999


@pytest.mark.parametrize("name,params", [("hog", {}), ("lbp", {"cell_size": 8}),
                                         ("alexnet", {"layer": "conv2", "weights": "random"})])
def test_extract_on_cuda_writes_the_cpu_store(shards, tmp_path, name, params):
    stores = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / f"{dev}.h5"
        assert cli.main(["extract", "--feature", name, "--params", json.dumps(params), "--shard",
                         str(shards["tars"][0]), "--out", str(out), "--dtype", "float32",
                         "--batch-size", "5", "--device", dev]) == 0
        with FeatureStore(out) as fs:
            stores[dev] = (fs.keys, fs.all())
    assert stores["cpu"][0] == stores["cuda"][0]
    tol = 1e-2 * float(np.abs(stores["cpu"][1]).max()) if name == "alexnet" else 2e-3  # TF32
    np.testing.assert_allclose(stores["cuda"][1], stores["cpu"][1], rtol=1e-3, atol=tol)


def _extract(shards, name, params, dev="cuda"):
    stores = []
    for tar in shards["tars"]:
        out = tar.with_suffix(f".{name}.h5")
        if not out.exists():
            assert cli.main(["extract", "--feature", name, "--params", json.dumps(params), "--shard", str(tar),
                             "--out", str(out), "--dtype", "float16", "--device", dev]) == 0
        stores.append(str(out))
    return stores


def _train_args(shards, stores, out, *extra):
    return ["train", "--representation", "hog", "--images", *map(str, shards["tars"][:2]),
            "--features", *stores[:2], "--out", str(out), "--width", "0.25", "--batch-size", "16",
            "--steps", "60", "--checkpoint-every", "20", "--log-every", "1", "--seed", "1", *extra]


def _losses(model_dir):
    import csv

    with open(Path(model_dir) / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_on_cuda_with_autocast_lowers_the_loss(shards, tmp_path, amp):
    stores = _extract(shards, "hog", {})
    out = tmp_path / amp
    assert cli.main(_train_args(shards, stores, out, "--device", "cuda", "--amp", amp)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["finished"] and cfg["device"].startswith("cuda")
    assert cfg["channels_last"] is True
    loss = _losses(out)
    assert all(np.isfinite(loss)) and np.mean(loss[-10:]) < 0.85 * np.mean(loss[:5])


def test_cuda_training_tracks_cpu_training(shards, tmp_path):
    stores = _extract(shards, "hog", {})
    for dev in ("cpu", "cuda"):
        assert cli.main(_train_args(shards, stores, tmp_path / dev, "--device", dev, "--amp", "off",
                                    "--deterministic")) == 0
    a, b = _losses(tmp_path / "cpu"), _losses(tmp_path / "cuda")
    assert b[0] == pytest.approx(a[0], rel=1e-3)
    assert np.mean(b[-5:]) == pytest.approx(np.mean(a[-5:]), rel=0.1)


def test_torchrun_nccl_single_gpu_matches_a_single_process(shards, tmp_path, torchrun):
    stores = _extract(shards, "hog", {})
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli.main(_train_args(shards, stores, single, "--device", "cuda", "--amp", "off", "--deterministic")) == 0
    r = torchrun(1, _train_args(shards, stores, ddp, "--device", "cuda", "--amp", "off", "--deterministic"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = json.loads((ddp / "config.json").read_text())
    assert cfg["world_size"] == 1 and cfg["finished"]
    assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-4)


def test_reconstruct_on_cuda_equals_cpu(shards, tmp_path):
    stores = _extract(shards, "hog", {})
    model = tmp_path / "model"
    assert cli.main(_train_args(shards, stores, model, "--device", "cuda")) == 0
    recs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / f"rec-{dev}.h5"
        assert cli.main(["reconstruct", "--model", str(model), "--images", str(shards["tars"][2]),
                         "--features", stores[2], "--out", str(out), "--device", dev]) == 0
        with FeatureStore(out) as fs:
            recs[dev] = fs.all().astype(np.float32)
    assert np.isfinite(recs["cuda"]).all()
    np.testing.assert_allclose(recs["cuda"], recs["cpu"], atol=1.0)  # float16 pixels


@pytest.mark.parametrize("name,params", [("hog", {}), ("dsift", {}),
                                         ("alexnet", {"layer": "conv3", "weights": "random"})])
def test_mv_inversion_on_cuda_batched_equals_single(name, params):
    from pipeline.baselines import mv

    x = torch.from_numpy(_crops(4, 64)).permute(0, 3, 1, 2).float()
    feat = get_feature(name, **params)
    kw = dict(iterations=20, seed=3, keys=["a", "b", "c", "d"], device="cuda")
    rec, log = mv.invert(feat, x, **kw)
    assert rec.device.type == "cuda" and torch.isfinite(rec).all()
    energy = log.values["energy"][:, :, 0]
    assert np.isfinite(energy).all() and (energy[-1] < energy[0]).all()
    r1, _ = mv.invert(feat, x[1:2], **dict(kw, keys=["b"]))
    torch.testing.assert_close(r1[0], rec[1], atol=0.5, rtol=0)
    cpu, _ = mv.invert(feat, x[1:2], **dict(kw, keys=["b"], device="cpu"))
    torch.testing.assert_close(cpu[0], r1[0].cpu(), atol=2.0, rtol=0)
