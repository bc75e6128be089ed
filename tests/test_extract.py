"""Feature stores: extraction from an image shard, alignment, provenance, info."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import cli
from pipeline.data.sample import load_sample_photo
from pipeline.features import available, get_feature, traits
from pipeline.io import sha256_file
from pipeline.data.shards import Sample, write_shard
from pipeline.store import FeatureStore


@pytest.fixture
def shard(tmp_path):
    photo = load_sample_photo("astronaut")
    samples = [
        Sample(f"img{i:03d}", np.ascontiguousarray(photo[i * 40 : i * 40 + 64, i * 30 : i * 30 + 64]))
        for i in range(5)
    ]
    path = tmp_path / "shard.tar"
    write_shard(path, samples)
    return path, samples


def test_alexnet_store_equals_on_the_fly_features(tmp_path, shard, one_thread):
    path, samples = shard
    out = tmp_path / "conv2.h5"
    params = {"layer": "conv2", "arch": "torchvision", "weights": "random", "seed": 3}
    rc = cli.main(
        ["extract", "--feature", "alexnet", "--params", json.dumps(params), "--shard", str(path),
         "--out", str(out), "--dtype", "float32", "--batch-size", "2"]
    )
    assert rc == 0
    module = get_feature("alexnet", **params).eval()
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        direct = module(x).numpy()
    with FeatureStore(out) as store:
        assert store.keys == [s.key for s in samples]
        np.testing.assert_allclose(store.all(), direct, rtol=1e-5, atol=1e-5)
        assert store.attrs["feature"] == "alexnet"
        assert store.params["layer"] == "conv2" and store.params["seed"] == 3
        assert store.attrs["image_shard_sha256"] == sha256_file(path)
        assert not store.attrs["trained"]  # random weights are recorded as untrained


def test_float16_store_is_close_and_smaller(tmp_path, shard):
    path, _ = shard
    params = json.dumps({"layer": "conv1", "arch": "torchvision", "weights": "random"})
    for dtype in ("float16", "float32"):
        cli.main(["extract", "--feature", "alexnet", "--params", params, "--shard", str(path),
                  "--out", str(tmp_path / f"{dtype}.h5"), "--dtype", dtype])
    with FeatureStore(tmp_path / "float16.h5") as a, FeatureStore(tmp_path / "float32.h5") as b:
        assert str(a.dtype) == "float16" and str(b.dtype) == "float32"
        np.testing.assert_allclose(a.all(), b.all(), rtol=2e-3, atol=2e-3)
    assert (tmp_path / "float16.h5").stat().st_size < (tmp_path / "float32.h5").stat().st_size


def test_store_info_prints_shape_dtype_count_bytes(tmp_path, shard, capsys):
    path, samples = shard
    out = tmp_path / "s.h5"
    cli.main(["extract", "--feature", "alexnet", "--params", '{"layer": "fc8", "arch": "torchvision", "weights": "random"}',
              "--shard", str(path), "--out", str(out)])
    capsys.readouterr()
    assert cli.main(["store", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == len(samples)
    assert info["shape"] == [1000, 1, 1]
    assert info["dtype"] == "float16"
    assert info["bytes_on_disk"] == out.stat().st_size


def test_bad_params_and_unreadable_store_fail_clearly(tmp_path, shard):
    path, _ = shard
    with pytest.raises(ValueError, match="--params"):
        cli.main(["extract", "--feature", "alexnet", "--params", "{not json", "--shard", str(path),
                  "--out", str(tmp_path / "x.h5")])
    with pytest.raises(KeyError, match="unknown feature 'nosuch'"):
        cli.main(["extract", "--feature", "nosuch", "--shard", str(path), "--out", str(tmp_path / "x.h5")])
    assert not (tmp_path / "x.h5").exists()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5"):
        FeatureStore(junk)


def test_cpu_only_trait_marks_the_features_that_never_use_the_gpu():
    """Sparse SIFT (VLFeat/OpenCV in numpy) runs on the CPU whatever the device; the
    torch representations follow their input onto the GPU."""
    assert traits("sift").cpu_only
    assert not traits("hog").cpu_only and not traits("alexnet").cpu_only and not traits("dsift").cpu_only
    assert {name for name in available() if traits(name).cpu_only} == {"sift"}


def test_cpu_only_feature_extracts_on_the_cpu_whatever_the_device(tmp_path, shard):
    """``extract --device cuda`` of a CPU-only representation computes on the CPU (its
    workflow jobs hold no GPU, and may run where there is none) and stores the same
    features as ``--device cpu``; a torch representation still needs the device it names."""
    path, _ = shard
    for device in ("cpu", "cuda"):
        rc = cli.main(["extract", "--feature", "sift", "--shard", str(path), "--out", str(tmp_path / f"{device}.h5"),
                       "--device", device, "--dtype", "float32"])
        assert rc == 0
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "cuda.h5") as b:
        assert a.keys == b.keys
        np.testing.assert_array_equal(a.all(), b.all())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cli.main(["extract", "--feature", "hog", "--shard", str(path), "--out", str(tmp_path / "hog.h5"),
                      "--device", "cuda"])


@pytest.mark.parametrize("name", ["hog", "hogb", "lbp", "dsift", "sift", "alexnet"])
def test_recorded_params_rebuild_the_same_representation(name):
    """Stores and models record ``module.params``; later stages rebuild the
    representation with ``get_feature(name, **params)``, which must give the
    same module (same params, same output)."""
    m = get_feature(name)
    again = get_feature(name, **json.loads(json.dumps(m.params)))
    assert again.params == m.params
    x = torch.from_numpy(load_sample_photo("coffee")[:64, :64].copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        assert torch.equal(m.eval()(x), again.eval()(x))
