"""The test set of the evaluation: the validation images and the
reconstructions of them in reconstruction stores
(:class:`pipeline.store.ReconstructionStore`), matched by image key.  A
store that records the SHA-256 of its image shard must come from one of the
test set's shards (:meth:`TestSet.verify`).

Memory does not grow with the number of images: :meth:`TestSet.load`
decodes the shards once, image by image, into an unnamed temporary file of
raw pixels (``$TMPDIR``, H x W x 3 bytes an image, deleted when the process
ends), which :meth:`TestSet.take` and :meth:`TestSet.blocks` read back a few
images at a time; :func:`iter_reconstructions` reads the stores a chunk of
images at a time.  Only the keys and per-image results are held for all
images.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from pipeline.data.shards import read_shard
from pipeline.evaluation.metrics import images_nchw, mean_pairwise_distance_streamed
from pipeline.io import sha256_file
from pipeline.store import REWRITE, ReconstructionMeta, ReconstructionStore

#: images (or reconstructions) read at a time
CHUNK = 64

# --------------------------------------------------------------------------- inputs


class RowFile:
    """An append-only array of equal items in an unnamed temporary file, read back by index."""

    def __init__(self, item_shape: tuple, dtype, directory=None):
        self.item_shape, self.dtype = tuple(item_shape), np.dtype(dtype)
        self.item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self.count = 0
        self._f = tempfile.TemporaryFile(dir=directory)

    def __len__(self) -> int:
        return self.count

    def append(self, items: np.ndarray) -> None:
        items = np.ascontiguousarray(items, dtype=self.dtype)
        if items.shape[1:] != self.item_shape:
            raise ValueError(f"items of shape {items.shape[1:]}, expected {self.item_shape}")
        self._f.seek(self.count * self.item_bytes)
        self._f.write(items.tobytes())
        self.count += len(items)

    def put(self, indices, items: np.ndarray) -> None:
        """Write ``items`` at positions ``indices`` (the file grows to hold the last; gaps are zeros)."""
        items = np.ascontiguousarray(items, dtype=self.dtype)
        for i, item in zip(indices, items):
            self._f.seek(int(i) * self.item_bytes)
            self._f.write(item.tobytes())
            self.count = max(self.count, int(i) + 1)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Items ``start`` to ``stop`` (exclusive)."""
        n = max(0, min(stop, self.count) - start)
        out = np.empty((n,) + self.item_shape, self.dtype)
        self._f.seek(start * self.item_bytes)
        if n and self._f.readinto(memoryview(out).cast("B")) != n * self.item_bytes:
            raise OSError("the temporary file of the test images was cut short")
        return out

    def take(self, indices) -> np.ndarray:
        """Items ``indices`` (any order), read run by run of consecutive indices."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        out = np.empty((len(idx),) + self.item_shape, self.dtype)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        if s[0] < 0 or s[-1] >= self.count:
            raise IndexError(f"index out of range 0..{self.count - 1}")
        breaks = np.flatnonzero(np.diff(s) != 1) + 1
        for run in np.split(np.arange(len(s)), breaks):
            lo = int(s[run[0]])
            out[order[run]] = self.read(lo, int(s[run[-1]]) + 1)
        return out

    def blocks(self, block: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """(start, items) for consecutive blocks of ``block`` items."""
        for s in range(0, self.count, block):
            yield s, self.read(s, s + block)

    def close(self) -> None:
        self._f.close()


@dataclass
class TestSet:
    """The evaluation images: keys, key -> index, and the images (N, H, W, 3) uint8 in a :class:`RowFile`."""

    keys: list[str]
    images: RowFile
    index: dict[str, int] = field(default_factory=dict)
    skipped: set = field(default_factory=set)  # keys left out by max_images (ignored in stores)
    shards: dict = field(default_factory=dict)  # SHA-256 -> path of the shards (empty: not checked)

    @classmethod
    def load(cls, shards: Sequence, max_images: int | None = None) -> "TestSet":
        """The images of ``shards`` in order (the first ``max_images`` of them), streamed to a temporary file."""
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        keys, skipped, sums, seen, rows, size = [], set(), {}, set(), None, None
        for s in shards:
            sums[sha256_file(s)] = str(s)
            for sample in read_shard(s):
                if sample.key in seen:
                    raise ValueError("--images: duplicate image keys across shards")
                seen.add(sample.key)
                if max_images is not None and len(keys) >= max_images:
                    skipped.add(sample.key)
                    continue
                im = sample.image
                if rows is None:
                    size, rows = im.shape[:2], RowFile(im.shape, np.uint8)
                elif im.shape[:2] != size:
                    raise ValueError(f"--images: shards hold images of different sizes "
                                     f"{sorted({tuple(size), im.shape[:2]})}")
                rows.append(im[None])
                keys.append(sample.key)
        if not keys:
            raise ValueError(f"--images: no images in {list(map(str, shards))}")
        return cls(keys, rows, {k: i for i, k in enumerate(keys)}, skipped, sums)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.item_shape[:2])

    def take(self, indices) -> np.ndarray:
        """Images ``indices`` (k, H, W, 3) uint8."""
        return self.images.take(indices)

    def blocks(self, block: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """(start, images) for consecutive blocks of the test images."""
        return self.images.blocks(block)

    def mean_image(self) -> np.ndarray:
        """Mean (H, W, 3) float64 of the test images (sums of integers: exact in float64)."""
        acc = np.zeros(self.images.item_shape, np.float64)
        for _, x in self.blocks():
            acc += x.astype(np.float64).sum(axis=0)
        return acc / len(self)

    def normaliser(self, max_items: int | None = None, seed: int = 0) -> float:
        """N of Dosovitskiy & Brox 2016: the mean pairwise distance of the test images, exact and
        streamed (:func:`pipeline.evaluation.metrics.mean_pairwise_distance_streamed`), or of a
        random subset of ``max_items`` of them."""
        return mean_pairwise_distance_streamed(lambda i: images_nchw(self.take(i)), len(self),
                                               max_items=max_items, seed=seed, read_rows=self.take)

    def verify(self, store, attrs: dict) -> None:
        """Raise unless the store ``store`` (its attributes ``attrs``) was made from one
        of the test set's shards (stores that record no SHA-256 pass)."""
        recorded = str(attrs.get("image_shard_sha256", "") or "")
        if recorded and self.shards and recorded not in self.shards:
            source = str(attrs.get("image_shard", "") or "") or "another shard"
            raise ValueError(
                f"{store}: made from the image shard {source} (SHA-256 {recorded[:16]}...), which is none of the "
                f"--images shards {sorted(self.shards.values())}: the store and the test images do not belong "
                f"together; give the shards it was made from, or {REWRITE} on these shards"
            )


def iter_reconstructions(test: TestSet, stores: Sequence, meta: list | None = None, *, only=None,
                         chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Indices into ``test`` and reconstructions (k, C, h, w) float32 of ``stores``, matched by key,
    ``chunk`` images at a time, store by store.

    Stores may cover a subset of the test images (e.g. ``--max-images``);
    keys unknown to the test set, or present twice, are errors.  Images
    outside the evaluated subset (``--max-images`` on the test set) are
    skipped, and so are those not in ``only`` (indices) when it is given.
    Each store's :class:`ReconstructionMeta` is appended to ``meta``; when
    no store holds a test image the last step raises.
    """
    seen, found = set(), False
    for path in stores:
        with ReconstructionStore(path) as st:
            test.verify(path, st.attrs)
            shape = st.shape
            if len(shape) != 4 or shape[1] not in (1, 3):
                raise ValueError(f"{path}: expected reconstructions (N, 3, H, W), got shape {shape}")
            unknown = [k for k in st.keys if k not in test.index and k not in test.skipped]
            if unknown:
                raise ValueError(f"{path}: {len(unknown)} keys not in the --images shards, e.g. {unknown[0]!r}")
            pos, idx = [], []
            for j, k in enumerate(st.keys):
                if k not in test.index:
                    continue
                if k in seen:
                    raise ValueError(f"{path}: image {k!r} reconstructed twice in the inputs of one row")
                seen.add(k)
                found = True
                if only is None or test.index[k] in only:
                    pos.append(j)
                    idx.append(test.index[k])
            if meta is not None:
                meta.append(st.meta)
            for s in range(0, len(pos), chunk):
                p = pos[s:s + chunk]
                sel = slice(p[0], p[-1] + 1) if p[-1] - p[0] == len(p) - 1 else p
                yield np.asarray(idx[s:s + chunk]), st[sel]
    if not found:
        raise ValueError(f"no reconstructions of the test images in {list(map(str, stores))}")


def reconstructions_of(test: TestSet, stores: Sequence, indices) -> tuple[dict, list[ReconstructionMeta]]:
    """{test index: reconstruction (C, h, w)} of the test images ``indices`` found in ``stores``, and their meta."""
    meta, out = [], {}
    for idx, recs in iter_reconstructions(test, stores, meta, only=set(int(i) for i in indices)):
        out.update(zip(idx.tolist(), recs))
    return out, meta

