"""The test set of the evaluation: the validation images and the
reconstructions of them in reconstruction stores
(:class:`pipeline.store.ReconstructionStore`), matched by image key.  A
store that records the SHA-256 of its image shard must come from one of the
test set's shards (:meth:`TestSet.verify`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.data.shards import load_shard_arrays
from pipeline.io import sha256_file
from pipeline.store import REWRITE, ReconstructionMeta, ReconstructionStore

# --------------------------------------------------------------------------- inputs


@dataclass
class TestSet:
    """The evaluation images: keys, (N, H, W, 3) uint8, and key -> index."""

    keys: list[str]
    images: np.ndarray
    index: dict[str, int] = field(default_factory=dict)
    skipped: set = field(default_factory=set)  # keys left out by max_images (ignored in stores)
    shards: dict = field(default_factory=dict)  # SHA-256 -> path of the shards (empty: not checked)

    @classmethod
    def load(cls, shards: Sequence, max_images: int | None = None) -> "TestSet":
        keys, arrays, sums = [], [], {}
        for s in shards:
            sums[sha256_file(s)] = str(s)
            k, im, _ = load_shard_arrays(s)
            if len(k):
                keys += k
                arrays.append(im)
        if not keys:
            raise ValueError(f"--images: no images in {list(map(str, shards))}")
        sizes = {a.shape[1:3] for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"--images: shards hold images of different sizes {sorted(sizes)}")
        images = np.concatenate(arrays)
        if len(set(keys)) != len(keys):
            raise ValueError("--images: duplicate image keys across shards")
        skipped = set()
        if max_images is not None:
            if max_images < 1:
                raise ValueError(f"max_images must be >= 1, got {max_images}")
            skipped = set(keys[max_images:])
            keys, images = keys[:max_images], images[:max_images]
        return cls(keys, images, {k: i for i, k in enumerate(keys)}, skipped, sums)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

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


def read_reconstructions(test: TestSet, stores: Sequence) -> tuple[np.ndarray, np.ndarray, list[ReconstructionMeta]]:
    """Indices into ``test`` and reconstructions (M, 3, h, w) of ``stores``, matched by key.

    Stores may cover a subset of the test images (e.g. ``--max-images``);
    keys unknown to the test set, or present twice, are errors.  Images
    outside the evaluated subset (``--max-images`` on the test set) are
    skipped.  Returns also each store's :class:`ReconstructionMeta`.
    """
    idx, recs, meta, seen = [], [], [], set()
    for path in stores:
        with ReconstructionStore(path) as st:
            test.verify(path, st.attrs)
            feats = st.all()
            if feats.ndim != 4 or feats.shape[1] not in (1, 3):
                raise ValueError(f"{path}: expected reconstructions (N, 3, H, W), got shape {feats.shape}")
            unknown = [k for k in st.keys if k not in test.index and k not in test.skipped]
            if unknown:
                raise ValueError(f"{path}: {len(unknown)} keys not in the --images shards, e.g. {unknown[0]!r}")
            for j, k in enumerate(st.keys):
                if k not in test.index:
                    continue
                if k in seen:
                    raise ValueError(f"{path}: image {k!r} reconstructed twice in the inputs of one row")
                seen.add(k)
                idx.append(test.index[k])
                recs.append(feats[j])
            meta.append(st.meta)
    if not recs:
        raise ValueError(f"no reconstructions of the test images in {list(map(str, stores))}")
    return np.asarray(idx), np.stack(recs), meta
