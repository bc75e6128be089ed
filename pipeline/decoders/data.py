"""Training data of the decoders: images paired with their features.

Image shards (WebDataset tars) and feature stores (HDF5) are paired by
position and must hold the same keys in the same order.  Images are read by
random access into the tars (an index of member offsets), so a global
per-epoch permutation works at ImageNet scale with DataLoader workers; small
datasets (``--in-memory auto``: under 8 GiB) are decoded once into memory.
The data order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])``, split by rank like
``DistributedSampler``; ``--shuffle-block K`` shuffles within groups of K
shards (shard order permuted every epoch) for file-system locality.
"""
from __future__ import annotations

import bisect
import math
import os

import numpy as np
import torch

from pipeline.data.shards import REMAKE, decode_member, index_shard
from pipeline.store import FeatureStore, verify_image_shard

IN_MEMORY_LIMIT = 8 << 30  # bytes (the train rule asks for 32 GB)


def _feature_shape(shape) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    if len(shape) == 3:
        return tuple(int(s) for s in shape)
    raise ValueError(f"features must be (N, D) or (N, D, h, w), got per-item shape {tuple(shape)}")


class PairedData(torch.utils.data.Dataset):
    """Images of tar shards, with the aligned rows of feature stores (or none).

    ``data[i] -> (image uint8 (H, W, 3), features float32 (D, h, w) or None)``.
    ``in_memory``: True, False or "auto" (decode everything at once when the
    images and features take under 8 GiB).  Empty shards (and their empty
    stores) are skipped; ``allow_empty``: no images at all is no error
    (``image_size`` is then None).  A store that records the SHA-256 of its
    image shard must have been computed from the shard it is paired with.
    """

    def __init__(self, image_shards, feature_stores=None, in_memory="auto", allow_empty: bool = False):
        self.image_shards = [str(p) for p in image_shards]
        if not self.image_shards:
            raise ValueError("no image shards given")
        self.feature_stores = [str(p) for p in feature_stores] if feature_stores else None
        if self.feature_stores is not None and len(self.feature_stores) != len(self.image_shards):
            raise ValueError(
                f"{len(self.image_shards)} image shards but {len(self.feature_stores)} feature stores: "
                "give one store per shard, in the same order"
            )
        self.keys: list[str] = []
        self._spans: list[list[tuple[int, int]]] = []
        self.counts: list[int] = []
        self.feature_name = None
        self.feature_params = None
        self.feature_shape = None
        store_dtype = None
        first = None  # the store that set feature_name and feature_params
        for i, shard in enumerate(self.image_shards):
            keys, spans = index_shard(shard)
            if self.feature_stores is not None:
                store = self.feature_stores[i]
                with FeatureStore(store) as fs:
                    _check_aligned(shard, keys, store, fs.keys)
                    verify_image_shard(store, fs.attrs, shard)
                    # an empty store (a shard without images) has no feature shape
                    shape = _feature_shape(fs.shape[1:]) if len(keys) else self.feature_shape
                    name, params = str(fs.attrs.get("feature", "")), fs.params
                    store_dtype = fs.dtype if len(keys) else store_dtype
                if first is None:
                    first, self.feature_name, self.feature_params = store, name, params
                if self.feature_shape is None:
                    self.feature_shape = shape
                if (shape, name, params) != (self.feature_shape, self.feature_name, self.feature_params):
                    raise ValueError(
                        f"feature store {store} holds {name!r} {params} of shape {shape}, but "
                        f"{first} holds {self.feature_name!r} {self.feature_params} "
                        f"of shape {self.feature_shape}: all stores must hold the same representation"
                    )
            self.keys += keys
            self._spans.append(spans)
            self.counts.append(len(keys))
        if not self.keys and not allow_empty:
            raise ValueError(f"the image shards {self.image_shards} hold no images")
        self._starts = np.cumsum([0] + self.counts).tolist()
        self._files: dict = {}
        self._pid = None
        self.images = self.features = None
        if not self.keys:
            self.image_size, self.in_memory = None, False
            return
        first = self._read_image(*self.locate(0))  # the first shard may be empty
        self.image_size = tuple(first.shape[:2])
        if in_memory == "auto":
            itemsize = 2 if store_dtype == np.float16 else 4  # as _preload keeps them
            d = math.prod(self.feature_shape) * itemsize if self.feature_shape else 0
            in_memory = len(self) * (first.size + d) <= IN_MEMORY_LIMIT
        self.in_memory = bool(in_memory)
        if self.in_memory:
            self._preload(store_dtype)

    def __len__(self):
        return len(self.keys)

    def _handles(self):
        if self._pid != os.getpid():  # reopen after fork (DataLoader workers)
            self._files, self._pid = {}, os.getpid()
        return self._files

    def _read_image(self, s: int, j: int) -> np.ndarray:
        files = self._handles()
        f = files.get(("img", s))
        if f is None:
            f = files[("img", s)] = open(self.image_shards[s], "rb")
        off, size = self._spans[s][j]
        f.seek(off)
        data = f.read(size)
        key = self.keys[self._starts[s] + j]
        if len(data) != size:
            raise ValueError(f"{self.image_shards[s]}: member {key!r} is cut short ({len(data)} of {size} bytes): "
                             f"the shard changed or is damaged; {REMAKE}")
        img = decode_member(data, self.image_shards[s], key)
        if not img.flags.writeable:
            img = img.copy()
        if hasattr(self, "image_size") and tuple(img.shape[:2]) != self.image_size:
            raise ValueError(
                f"{self.image_shards[s]}: image {self.keys[self._starts[s] + j]!r} is "
                f"{img.shape[1]}x{img.shape[0]}, expected {self.image_size[1]}x{self.image_size[0]}: "
                "all training images must have one size"
            )
        return img

    def _read_feature(self, s: int, j: int) -> np.ndarray:
        files = self._handles()
        fs = files.get(("feat", s))
        if fs is None:
            fs = files[("feat", s)] = FeatureStore(self.feature_stores[s])
        return fs[j].reshape(self.feature_shape)

    def locate(self, i: int) -> tuple[int, int]:
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def __getitem__(self, i):
        i = int(i)
        if self.in_memory:
            f = None if self.features is None else torch.from_numpy(self.features[i].astype(np.float32))
            return torch.from_numpy(self.images[i]), f
        s, j = self.locate(i)
        img = torch.from_numpy(self._read_image(s, j))
        f = None if self.feature_stores is None else torch.from_numpy(self._read_feature(s, j))
        return img, f

    def _preload(self, store_dtype) -> None:
        h, w = self.image_size
        self.images = np.empty((len(self), h, w, 3), np.uint8)
        for i in range(len(self)):
            self.images[i] = self._read_image(*self.locate(i))
        if self.feature_stores is not None:
            dt = np.float16 if store_dtype == np.float16 else np.float32
            self.features = np.empty((len(self), *self.feature_shape), dt)
            for s, p in enumerate(self.feature_stores):
                with FeatureStore(p) as fs:
                    a, b = self._starts[s], self._starts[s + 1]
                    self.features[a:b] = fs.all(dt).reshape(b - a, *self.feature_shape)
        self.close()

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In-memory fast path: images (B, H, W, 3) uint8, features (B, D, h, w) float32."""
        idx = np.asarray(indices)
        f = None if self.features is None else torch.from_numpy(self.features[idx].astype(np.float32))
        return torch.from_numpy(self.images[idx]), f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state


def _check_aligned(shard, shard_keys, store, store_keys) -> None:
    if list(shard_keys) == list(store_keys):
        return
    n1, n2 = len(shard_keys), len(store_keys)
    i = next((k for k, (a, b) in enumerate(zip(shard_keys, store_keys)) if a != b), min(n1, n2))
    a = shard_keys[i] if i < n1 else "<end>"
    b = store_keys[i] if i < n2 else "<end>"
    raise ValueError(
        f"image shard {shard} ({n1} images) and feature store {store} ({n2} rows) do not hold the "
        f"same keys in the same order: first difference at position {i}: {a!r} vs {b!r}"
    )


def _collate(items):
    imgs = torch.stack([a for a, _ in items])
    feats = None if items[0][1] is None else torch.stack([b for _, b in items])
    return imgs, feats


def epoch_order(counts, epoch: int, seed: int, shuffle_block: int = 0) -> np.ndarray:
    """Global sample order of one epoch, a pure function of (seed, epoch).

    ``shuffle_block == 0``: a uniform permutation of all samples.  ``K > 0``:
    shards in a permuted order, samples permuted within groups of K shards.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = int(sum(counts))
    if shuffle_block <= 0:
        return rng.permutation(n)
    starts = np.cumsum([0] + list(counts))
    shards = rng.permutation(len(counts))
    parts = []
    for g in range(0, len(shards), shuffle_block):
        idx = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards[g:g + shuffle_block]])
        parts.append(rng.permutation(idx))
    return np.concatenate(parts)


def epoch_batches(counts, epoch, seed, batch, rank=0, world=1, shuffle_block=0) -> list[np.ndarray]:
    """This rank's batches of one epoch: ``order[rank::world]``, then full batches."""
    order = epoch_order(counts, epoch, seed, shuffle_block)
    per_rank = len(order) // world
    mine = order[rank::world][:per_rank]
    nb = per_rank // batch
    return [mine[b * batch:(b + 1) * batch] for b in range(nb)]


def iter_batches(data: PairedData, batches, workers: int = 0, pin: bool = False):
    if data.in_memory:
        for b in batches:
            yield data.get_batch(b)
        return
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
        collate_fn=_collate, pin_memory=pin,
    )
    yield from loader
