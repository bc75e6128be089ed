"""Autoencoder mode (Dosovitskiy & Brox 2016, section 4.2) with the real AlexNet representation,
whose weights the registry freezes: fine-tuning must train them anyway."""
from __future__ import annotations

import json

import numpy as np
import torch

from pipeline import cli
from pipeline.data.sample import load_sample_photo
from pipeline.features import get_feature
from pipeline.data.shards import Sample, write_shard
from pipeline.decoders.modelfile import load_model


def test_finetune_encoder_trains_alexnet_weights(tmp_path, one_thread):
    photo = load_sample_photo("coffee")
    samples = [Sample(f"k{i:03d}", np.ascontiguousarray(photo[i * 9 : i * 9 + 64, i * 13 : i * 13 + 64])) for i in range(8)]
    shard = tmp_path / "train.tar"
    write_shard(shard, samples)
    params = {"layer": "conv1", "arch": "torchvision", "weights": "random", "seed": 0}
    rc = cli.main([
        "train", "--representation", "alexnet_conv1", "--images", str(shard), "--on-the-fly",
        "--feature", "alexnet", "--params", json.dumps(params), "--finetune-encoder",
        "--width", "0.125", "--steps", "3", "--batch-size", "4", "--lr", "0.01",
        "--threads", "1", "--out", str(tmp_path / "ae"),
    ])
    assert rc == 0
    _, encoder, _ = load_model(tmp_path / "ae")
    assert encoder is not None
    before = get_feature("alexnet", **params).state_dict()
    after = encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("net.features.0") or "conv1" in k or "features.0" in k for k in changed), changed
