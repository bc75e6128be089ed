"""Decoder training and reconstruction on small real photographs (CPU)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.cli import main
from pipeline.features import register
from pipeline.data.shards import Sample, load_shard_arrays, write_shard
from pipeline.store import FeatureStore, write_store
from pipeline.decoders.architectures import build_decoder
from pipeline.decoders.data import PairedData, epoch_batches, epoch_order, iter_batches
from pipeline.decoders.modelfile import load_decoder, load_model
from pipeline.decoders.reconstruct import reconstruct_batch
from pipeline.features.perturbations import perturb_features
from pipeline.decoders.step import InversionModel, lr_at, train_step

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@register("test_avgpool8", grey=True, decoder="hog")
class AvgPool8(nn.Module):
    """Grey level averaged over 8x8 cells, / 255: (1, H/8, W/8)."""

    name = "test_avgpool8"

    def __init__(self):
        super().__init__()
        self.params = {}

    def output_shape(self, H, W):
        return (1, H // 8, W // 8)

    def forward(self, x):
        return F.avg_pool2d(x.float().mean(1, keepdim=True), 8) / 255.0


@register("test_tinyconv")
class TinyConv(nn.Module):
    """A trainable encoder: one 8x8 stride-8 convolution to 2 channels, ReLU."""

    name = "test_tinyconv"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.params = {"seed": seed}
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 2, 8, stride=8)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.01)
            self.conv.bias.zero_()

    def output_shape(self, H, W):
        return (2, H // 8, W // 8)

    def forward(self, x):
        return F.relu(self.conv(x / 255.0))


@pytest.fixture(scope="module")
def data(tmp_path_factory, downsampled_crops):
    """Two image shards of 12 photo crops each and aligned float32 avg-pool stores."""
    d = tmp_path_factory.mktemp("train_data")
    photos = [skimage.data.astronaut(), skimage.data.coffee()]
    shards, stores = [], []
    for s, photo in enumerate(photos):
        imgs = downsampled_crops(photo, 12, s, SIZE)
        keys = [f"p{s}_{i:02d}" for i in range(len(imgs))]
        write_shard(d / f"train-{s}.tar", [Sample(k, im) for k, im in zip(keys, imgs)])
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
        write_store(d / f"avg-{s}.h5", keys, AvgPool8()(x).numpy(), feature="test_avgpool8", params={},
                    dtype="float32")
        shards.append(str(d / f"train-{s}.tar"))
        stores.append(str(d / f"avg-{s}.h5"))
    val = downsampled_crops(skimage.data.chelsea(), 5, 7, SIZE)
    vkeys = [f"v{i}" for i in range(len(val))]
    write_shard(d / "val-0.tar", [Sample(k, im) for k, im in zip(vkeys, val)])
    x = torch.from_numpy(np.stack(val)).permute(0, 3, 1, 2).float()
    write_store(d / "val-avg-0.h5", vkeys, AvgPool8()(x).numpy(), feature="test_avgpool8", params={})
    return {"dir": d, "shards": shards, "stores": stores, "val": str(d / "val-0.tar"),
            "val_store": str(d / "val-avg-0.h5")}


def _args(data, out, *extra, steps=6, lr=1e-3):
    return ["train", "--representation", "hog", "--kind", "hog", "--images", *data["shards"], "--out", str(out),
            "--width", "0.125", "--batch-size", "8", "--steps", str(steps), "--checkpoint-every", "4",
            "--log-every", "1", "--threads", "1", "--seed", "3", "--lr", str(lr), *extra]


def _state(path):
    return torch.load(Path(path) / "decoder.pt", weights_only=True)["state_dict"]


def _rows(path):
    with open(Path(path) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "hog"
    assert main(_args(data, out, "--features", *data["stores"])) == 0
    return out


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(data, one_thread):
    ds = PairedData(data["shards"][:1], data["stores"][:1])
    imgs, feats = ds.get_batch(np.arange(8))
    torch.manual_seed(0)
    dec = build_decoder("hog", (1, 4, 4), SIZE, width=0.25)
    dec.in_scale.fill_(1 / float(feats.pow(2).mean().sqrt()))
    model = InversionModel(dec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [float(train_step(model, opt, scaler, imgs, feats, dec.native_size)[0]) for _ in range(40)]
    assert losses[-1] < 0.75 * losses[0]
    # the loss is the mean squared error in units x / 127.5 - 1
    with torch.no_grad():
        pred = dec(feats)
    target = imgs.permute(0, 3, 1, 2).float() / 127.5 - 1
    opt.zero_grad()
    loss, norm = train_step(model, opt, scaler, imgs, feats, dec.native_size)
    assert float(F.mse_loss(pred, target)) == pytest.approx(float(loss), rel=1e-5)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert float(norm) == pytest.approx(float(grads.norm()), rel=1e-4)
    # clipping bounds the gradient actually applied
    _, norm = train_step(model, opt, scaler, imgs, feats, dec.native_size, clip_grad=1e-3)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert float(norm) > 1e-3 and float(grads.norm()) == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_and_channels_last_steps_track_float32(data, one_thread, amp_dtype):
    """The GPU code path (autocast, GradScaler for fp16, channels_last), run on CPU."""
    ds = PairedData(data["shards"][:1], data["stores"][:1])
    imgs, feats = ds.get_batch(np.arange(8))
    runs = {}
    for name, dtype, cl in (("fp32", None, False), ("mixed", amp_dtype, True)):
        torch.manual_seed(0)
        dec = build_decoder("hog", (1, 4, 4), SIZE, width=0.25)
        dec.in_scale.fill_(1 / float(feats.pow(2).mean().sqrt()))
        model = InversionModel(dec)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16, init_scale=2.0**10)
        runs[name] = [float(train_step(model, opt, scaler, imgs, feats, dec.native_size, dtype, cl)[0])
                      for _ in range(40)]
    fp32, mixed = runs["fp32"], runs["mixed"]
    assert mixed != fp32  # autocast did run in reduced precision
    assert mixed[0] == pytest.approx(fp32[0], rel=2e-2)
    assert mixed[-1] < 0.75 * mixed[0]
    assert mixed[-1] == pytest.approx(fp32[-1], rel=0.05)


def test_train_writes_weights_config_and_metrics(trained, data):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["finished"] and cfg["steps_done"] == cfg["total_steps"] == 6
    assert cfg["kind"] == "hog" and cfg["in_shape"] == [1, 4, 4] and cfg["native_size"] == [SIZE, SIZE]
    assert cfg["feature"] == {"name": "test_avgpool8", "params": {}}
    assert cfg["n_train"] == 24 and cfg["steps_per_epoch"] == 3 and cfg["batch_size"] == 8
    assert cfg["betas"] == [0.9, 0.999] and cfg["lr"] == 1e-3
    assert cfg["in_scale"] > 0
    rows = _rows(trained)
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [float(r["lr"]) for r in rows] == [lr_at(s, 6, 1e-3) for s in range(6)]
    assert all(float(r["loss"]) > 0 and float(r["images_per_s"]) > 0 and float(r["grad_norm"]) > 0 for r in rows)
    assert float(rows[-1]["epoch"]) == 2.0
    assert (trained / "checkpoint.pt").exists()
    dec = load_decoder(trained)
    assert dec.build_args == {"kind": "hog", "in_shape": [1, 4, 4], "out_size": [SIZE, SIZE], "width": 0.125}
    assert float(dec.in_scale) == pytest.approx(cfg["in_scale"])
    assert not list(trained.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_weights_of_another_architecture_are_reported_with_the_file(trained, tmp_path):
    payload = torch.load(trained / "decoder.pt", weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.ndim == 4)
    payload["state_dict"][name] = torch.zeros(2, 2, 2, 2)  # as an earlier decoder layout would have it
    torch.save(payload, tmp_path / "decoder.pt")
    with pytest.raises(ValueError, match=r"decoder\.pt: its weights do not fit the TwoStreamDecoder .*retrain"):
        load_decoder(tmp_path / "decoder.pt")


def test_resume_after_kill_gives_identical_weights(data, tmp_path, one_thread):
    straight = tmp_path / "straight"
    assert main(_args(data, straight, "--features", *data["stores"], steps=9)) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline", *_args(data, killed, "--features", *data["stores"], steps=9)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd + ["--kill-at-step", "7"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr  # SIGKILL: no cleanup, last checkpoint at step 4
    assert not (killed / "decoder.pt").exists()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 4
    # resumed (in this process), then preempted by SIGTERM as Slurm does: checkpoint at once, exit 143
    args = _args(data, killed, "--features", *data["stores"], steps=9)
    with pytest.raises(SystemExit) as e:
        main(args + ["--kill-at-step", "6", "--kill-signal", "TERM"])
    assert e.value.code == 143
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 6
    assert not (killed / "decoder.pt").exists()
    assert main(args) == 0
    a, b = _state(straight), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics of the redone steps (5..9) are the same too, across the epoch boundary
    drop = lambda rows: [(r["step"], r["epoch"], r["loss"], r["lr"], r["grad_norm"]) for r in rows]  # noqa: E731
    assert drop(_rows(straight)) == drop(_rows(killed))
    # a different configuration refuses to resume from that checkpoint
    args[args.index("--seed") + 1] = "4"
    with pytest.raises(ValueError, match="seed"):
        main(args)


def test_a_checkpoint_from_other_settings_or_rewritten_data_is_not_resumed(data, tmp_path, one_thread):
    """A config or data change reruns the rule; the checkpoint left by the old run must not be resumed."""
    fresh = tmp_path / "fresh"
    assert main(_args(data, fresh, "--features", *data["stores"], steps=5)) == 0
    out = tmp_path / "run"
    assert main(_args(data, out, "--features", *data["stores"], steps=5, lr=3e-3)) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    with pytest.raises(ValueError, match=r"checkpoint\.pt was written by a different configuration \(lr differ"):
        main(_args(data, out, "--features", *data["stores"], steps=5))
    assert main(_args(data, out, "--features", *data["stores"], "--restart-if-changed", steps=5)) == 0
    for k, v in _state(fresh).items():
        assert torch.equal(v, _state(out)[k]), k
    # same settings, but the checkpoint holds another architecture (one written by
    # an earlier version of the decoder code): refused, not loaded into the wrong shapes
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    ck["step"] = 3
    ck["config"]["parameter_shapes"] = {"head.weight": [3, 8, 4, 4]}
    torch.save(ck, out / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"different configuration \(parameter_shapes differ"):
        main(_args(data, out, "--features", *data["stores"], steps=5))
    # same settings, same names, but a store rewritten since (as a rerun of extract_features does)
    copies = []
    for i, src in enumerate(data["stores"]):
        copies.append(str(tmp_path / f"store{i}.h5"))
        shutil.copy(src, copies[-1])
    again = tmp_path / "again"
    assert main(_args(data, again, "--features", *copies, steps=5)) == 0
    st = os.stat(copies[1])
    os.utime(copies[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"written by other data \(rewritten since: .*store1\.h5"):
        main(_args(data, again, "--features", *copies, steps=5))
    assert main(_args(data, again, "--features", *copies, "--restart-if-changed", steps=5)) == 0


def test_key_mismatch_is_reported_with_the_files(data, tmp_path):
    with FeatureStore(data["stores"][1]) as fs:
        keys, feats = fs.keys, fs.all()
    bad = tmp_path / "reordered.h5"
    write_store(bad, keys[::-1], feats[::-1], feature="test_avgpool8", params={})
    with pytest.raises(ValueError) as e:
        main(_args(data, tmp_path / "m", "--features", data["stores"][0], str(bad)))
    msg = str(e.value)
    assert data["shards"][1] in msg and str(bad) in msg and "p1_00" in msg
    with pytest.raises(ValueError, match="2 image shards but 1 feature stores"):
        main(_args(data, tmp_path / "m", "--features", data["stores"][0]))


def test_data_order_is_a_seeded_permutation_split_by_rank():
    counts = [5, 7, 4]
    a = epoch_order(counts, 0, 1)
    assert sorted(a) == list(range(16)) and np.array_equal(a, epoch_order(counts, 0, 1))
    assert not np.array_equal(a, epoch_order(counts, 1, 1))
    blocks = epoch_order(counts, 0, 1, shuffle_block=1)  # shard by shard
    sizes = [5, 7, 4]
    starts = [0, 5, 12]
    pos = 0
    shard_seq = []
    while pos < 16:
        s = next(i for i in range(3) if starts[i] <= blocks[pos] < starts[i] + sizes[i])
        assert sorted(blocks[pos:pos + sizes[s]]) == list(range(starts[s], starts[s] + sizes[s]))
        shard_seq.append(s)
        pos += sizes[s]
    assert sorted(shard_seq) == [0, 1, 2]
    r0 = np.concatenate(epoch_batches(counts, 0, 1, 3, rank=0, world=2))
    r1 = np.concatenate(epoch_batches(counts, 0, 1, 3, rank=1, world=2))
    assert len(r0) == len(r1) == 6 and not set(r0) & set(r1)


def test_lazy_and_in_memory_loading_agree(data):
    mem = PairedData(data["shards"], data["stores"], in_memory=True)
    lazy = PairedData(data["shards"], data["stores"], in_memory=False)
    assert mem.in_memory and not lazy.in_memory and mem.keys == lazy.keys
    batches = epoch_batches(mem.counts, 0, 0, 5)
    for (ia, fa), (ib, fb) in zip(iter_batches(mem, batches), iter_batches(lazy, batches)):
        assert torch.equal(ia, ib) and torch.equal(fa, fb)
    keys, images, _ = load_shard_arrays(data["shards"][1])
    img, _ = lazy[12 + 3]
    assert np.array_equal(img.numpy(), images[3])
    lazy.close()


def test_lr_decays_towards_the_end():
    lrs = [lr_at(s, 100, 1e-3) for s in range(100)]
    assert lrs[0] == lrs[59] == 1e-3 and lrs[60] == 5e-4 and lrs[80] == 2.5e-4 and lrs[99] == 1.25e-4


def test_on_the_fly_features_train_like_the_store(data, tmp_path, one_thread):
    store = tmp_path / "store"
    fly = tmp_path / "fly"
    assert main(_args(data, store, "--features", *data["stores"], steps=3)) == 0
    assert main(_args(data, fly, "--on-the-fly", "--feature", "test_avgpool8", steps=3)) == 0
    a, b = _state(store), _state(fly)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert json.loads((fly / "config.json").read_text())["on_the_fly"]
    # the store run trains in channels_last on the CPU, the on-the-fly one contiguous: same weights
    assert json.loads((store / "config.json").read_text())["channels_last"]
    assert not json.loads((fly / "config.json").read_text())["channels_last"]


def test_autoencoder_mode_trains_the_encoder(data, tmp_path, one_thread):
    out = tmp_path / "ae"
    assert main(_args(data, out, "--on-the-fly", "--feature", "test_tinyconv", "--params", '{"seed": 1}',
                      "--finetune-encoder", steps=4)) == 0
    dec, enc, payload = load_model(out)
    assert enc is not None and payload["feature"] == {"name": "test_tinyconv", "params": {"seed": 1}}
    before = TinyConv(seed=1).conv.weight
    assert not torch.equal(enc.conv.weight, before)
    # frozen encoder: its weights are not saved and the decoder still trains
    frozen = tmp_path / "frozen"
    assert main(_args(data, frozen, "--on-the-fly", "--feature", "test_tinyconv", "--params", '{"seed": 1}',
                      steps=2)) == 0
    assert load_model(frozen)[1] is None
    with pytest.raises(ValueError, match="on-the-fly"):
        main(_args(data, tmp_path / "x", "--features", *data["stores"], "--finetune-encoder"))
    with pytest.raises(ValueError, match="no trainable parameters"):
        main(_args(data, tmp_path / "y", "--on-the-fly", "--feature", "test_avgpool8", "--finetune-encoder"))
    # reconstruct uses the fine-tuned encoder
    rec = tmp_path / "rec.h5"
    assert main(["reconstruct", "--model", str(out), "--images", data["val"], "--out", str(rec)]) == 0
    with FeatureStore(rec) as fs:
        x = torch.from_numpy(load_shard_arrays(data["val"])[1]).permute(0, 3, 1, 2).float()
        want = reconstruct_batch(dec, enc(x).detach())
        torch.testing.assert_close(torch.from_numpy(fs.all()), want, atol=0.2, rtol=0)
    # Figure 7's perturbed autoencoder curves: the fine-tuned encoder's features perturbed before decoding,
    # each image seeded by (seed, key): the batch split does not matter
    keys = load_shard_arrays(data["val"])[0]
    for kind in ("binarize", "drop50+binarize"):
        outs = []
        for bs in ("64", "1"):
            p = tmp_path / f"rec-{kind}-{bs}.h5"
            assert main(["reconstruct", "--model", str(out), "--images", data["val"], "--out", str(p),
                         "--perturb", kind, "--perturb-seed", "3", "--batch-size", bs]) == 0
            with FeatureStore(p) as fs:
                outs.append(fs.all())
                assert json.loads(fs.attrs["perturbation"]) == {"kind": kind, "seed": 3}
                assert fs.attrs["method"] == "autoencoder"
        np.testing.assert_array_equal(outs[0], outs[1])
        want = reconstruct_batch(dec, perturb_features(enc(x).detach(), keys, kind, 3))
        torch.testing.assert_close(torch.from_numpy(outs[0]), want, atol=0.2, rtol=0)
        pf = perturb_features(enc(x).detach(), keys, kind, 3)
        assert all(len(set(v[v != 0].tolist())) <= 1 for v in pf.flatten(1))  # binarised: one magnitude


def test_reconstruct_writes_stores_and_a_grid(trained, data, tmp_path):
    out = tmp_path / "rec" / "val-0.h5"
    grid = tmp_path / "grid.png"
    assert main(["reconstruct", "--model", str(trained), "--images", data["val"], "--features", data["val_store"],
                 "--out", str(out), "--grid", str(grid), "--grid-count", "5", "--grid-cols", "2"]) == 0
    keys, images, _ = load_shard_arrays(data["val"])
    with FeatureStore(out) as fs:
        assert fs.keys == keys
        assert fs.shape == (5, 3, SIZE, SIZE) and fs.dtype == np.float16
        assert fs.attrs["feature"] == "reconstruction" and fs.params["representation"] == "hog"
        rec = fs.all()
    assert rec.min() >= 0 and rec.max() <= 255 and rec.std() > 0
    with FeatureStore(data["val_store"]) as vs:
        want = reconstruct_batch(load_decoder(trained), torch.from_numpy(vs.all()))
    np.testing.assert_allclose(rec, want.numpy(), atol=0.2)  # float16 storage
    # 3 rows of 2 (input | reconstruction) pairs, 2 px white gaps
    im = np.asarray(Image.open(grid))
    assert im.shape == (2 + 3 * (SIZE + 2), 2 + 2 * (2 * SIZE + 4), 3)
    assert np.array_equal(im[2:2 + SIZE, 2:2 + SIZE], images[0])
    right = im[2:2 + SIZE, 2 + SIZE:2 + 2 * SIZE].astype(np.float32)
    assert np.abs(right - rec[0].astype(np.float32).transpose(1, 2, 0)).max() <= 0.6
    # the store-trained model needs stores or an explicit --on-the-fly
    with pytest.raises(ValueError, match="--features"):
        main(["reconstruct", "--model", str(trained), "--images", data["val"], "--out", str(out)])


def test_reconstruct_batch_resizes_to_the_image_size():
    torch.manual_seed(0)
    dec = build_decoder("fc", (10, 1, 1), 40, width=0.05)  # native 32 < 40, as fc8 -> 128 for 227
    assert dec.native_size == (32, 32)
    y = reconstruct_batch(dec, torch.rand(2, 10, 1, 1))
    assert y.shape == (2, 3, 40, 40) and y.min() >= 0 and y.max() <= 255
    assert reconstruct_batch(dec, torch.rand(2, 10), size=16).shape == (2, 3, 16, 16)


def test_bench_train_prints_figures_against_the_paper(capsys):
    from pipeline.decoders.bench import bench_train

    assert bench_train(["--size", "16", "--width", "0.05", "--steps", "1", "--warmup", "0", "--batch-size", "4",
                        "--kinds", "hog", "fc", "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("cpu ")]
    assert [l.split()[1] for l in lines] == ["hog", "fc"]
    for l in lines:
        ips, ms = float(l.split()[-3]), float(l.split()[-2])
        assert ips > 0 and ms > 0
    assert "5 ms per image" in out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_ddp_on_cpu_matches_a_single_process(data, tmp_path, one_thread, torchrun):
    """Two gloo processes, each half of every global batch: the same steps as one process."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(_args(data, single, "--features", *data["stores"], "--device", "cpu")) == 0
    r = torchrun(2, _args(data, ddp, "--features", *data["stores"], "--device", "cpu"), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = json.loads((ddp / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["steps_per_epoch"] == 3 and cfg["finished"]
    a, b = _state(single), _state(ddp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    la = [float(r["loss"]) for r in _rows(single)]
    lb = [float(r["loss"]) for r in _rows(ddp)]
    assert la == pytest.approx(lb, rel=1e-5)


def test_the_features_registry_entry_picks_the_decoder_not_the_label(data, tmp_path, one_thread):
    """A representation called ``texture`` whose stores hold LBP trains the LBP decoder."""
    from pipeline.features import get_feature

    lbp = get_feature("lbp", cell_size=8)
    stores = []
    for s, shard in enumerate(data["shards"]):
        keys, images, _ = load_shard_arrays(shard)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        path = tmp_path / f"lbp-{s}.h5"
        write_store(path, keys, lbp(x).numpy(), feature="lbp", params=lbp.params, dtype="float32")
        stores.append(str(path))
    out = tmp_path / "texture"
    args = _args(data, out, "--features", *stores, steps=2)
    args[args.index("--representation") + 1] = "texture"
    del args[args.index("--kind"):args.index("--kind") + 2]  # auto: from the stores' feature
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["representation"] == "texture" and cfg["kind"] == "lbp"
