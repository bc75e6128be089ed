"""Fixtures shared by the test files: torch thread count, photo helpers, torchrun."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """One torch intra-op thread during the test: tiny problems, where threads
    only add synchronisation overhead and contend on a shared machine."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole test module, module-scoped fixtures included
    (``pytestmark = pytest.mark.usefixtures("one_thread_module")``)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def square_photos():
    """``square_photos(n=2, size=32, offset=0)``: (n, 3, size, size) float in [0, 255].

    The top-left square of astronaut, coffee, chelsea and rocket (from the
    ``offset``-th on, cycling), area-downsampled to ``size``.
    """

    def make(n: int = 2, size: int = 32, offset: int = 0) -> torch.Tensor:
        ims = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
        out = []
        for i in range(n):
            im = ims[(i + offset) % len(ims)]
            s = min(im.shape[:2])
            t = torch.from_numpy(im[:s, :s].copy()).permute(2, 0, 1)[None].float()
            out.append(F.interpolate(t, size=(size, size), mode="area")[0])
        return torch.stack(out)

    return make


@pytest.fixture(scope="session")
def downsampled_crops():
    """``downsampled_crops(photo, n, seed, size=32)``: n random 4x-downsampled
    size x size crops of a photograph (uint8 HWC arrays)."""

    def make(photo: np.ndarray, n: int, seed: int, size: int = 32) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            y = rng.integers(0, photo.shape[0] - 4 * size)
            x = rng.integers(0, photo.shape[1] - 4 * size)
            c = torch.from_numpy(photo[y:y + 4 * size, x:x + 4 * size].copy()).permute(2, 0, 1)[None].float()
            out.append(F.avg_pool2d(c, 4)[0].permute(1, 2, 0).round().byte().numpy())
        return out

    return make


@pytest.fixture
def torchrun():
    """``torchrun(nproc, args, timeout)``: ``python -m torch.distributed.run
    --nproc-per-node nproc ... -m pipeline *args`` on a free local port, from
    this checkout; returns the CompletedProcess (output captured as text)."""

    def run(nproc: int, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "pipeline", *args],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    return run


#: What :func:`test_config_run` builds: Table 2 of config/test.yaml, and the data
#: stage's manifests (which Table 2 does not need).
TEST_CONFIG_TARGETS = ("results/table2.csv", "data/shards/32px/train/manifest.json",
                       "data/shards/32px/val/manifest.json")


@pytest.fixture(scope="session")
def test_config_run(tmp_path_factory):
    """The working directory of one local run of the workflow on config/test.yaml
    (``snakemake --cores 2`` of :data:`TEST_CONFIG_TARGETS`: shards, manifests, the
    feature stores of every representation, the decoders, the baselines, Table 2),
    made once per session for the end-to-end tests that read it (the data stage,
    Table 2 and the report, the Slurm run's local reference). They only read it and
    add to results/; a failed run fails each of them with its output."""
    work = tmp_path_factory.mktemp("test_config_run")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "2", *TEST_CONFIG_TARGETS, "--configfile", str(REPO / "config" / "test.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return work
