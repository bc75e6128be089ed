"""Per-shard feature stores in HDF5.

One store per (representation, image shard), aligned with the image shard:
the dataset ``keys`` holds the image keys in the shard's order, ``features``
holds an ``(N, D, h, w)`` array (float16 or float32), chunked per image and
compressed.  Attributes record the feature name, its parameters (JSON), the
package version and the SHA-256 of the image shard it was computed from.

HDF5 rather than WebDataset tars because decoders and evaluation read
features by index (random access for shuffling, subsets for evaluation), a
store is a single dense array per shard that h5py memory-maps chunk by chunk,
and attributes give a natural place for provenance.  Image shards stay tars
because they are streamed sequentially and hold encoded images.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.io import atomic_path

DTYPES = {"float16": np.float16, "float32": np.float32}


def write_store(
    path,
    keys: list[str],
    features: np.ndarray,
    *,
    feature: str,
    params: dict,
    image_shard: str | None = None,
    image_shard_sha256: str | None = None,
    dtype: str = "float16",
    compression: str | None = "gzip",
    extra_attrs: dict | None = None,
) -> None:
    """Write a store atomically."""
    if dtype not in DTYPES:
        raise ValueError(f"store dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    features = np.asarray(features)
    if features.ndim < 2 or len(keys) != features.shape[0]:
        raise ValueError(
            f"{path}: {len(keys)} keys but features of shape {features.shape}"
        )
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("keys", data=np.array(keys, dtype=h5py.string_dtype()))
            chunks = (1,) + features.shape[1:] if features.shape[0] else None
            f.create_dataset(
                "features",
                data=features.astype(DTYPES[dtype]),
                chunks=chunks,
                compression=compression if features.shape[0] else None,
                shuffle=compression is not None and features.shape[0] > 0,
            )
            f.attrs["feature"] = feature
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            f.attrs["code_version"] = __version__
            f.attrs["image_shard"] = image_shard or ""
            f.attrs["image_shard_sha256"] = image_shard_sha256 or ""
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = v


class FeatureStore:
    """Read access to a store: ``len``, ``keys``, ``store[i]`` -> float32 array."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise ValueError(f"{self.path}: not a readable feature store ({e})") from None
        if "features" not in self._f or "keys" not in self._f:
            self._f.close()
            raise ValueError(f"{self.path}: not a feature store (no 'features'/'keys')")
        self.keys = [k.decode() if isinstance(k, bytes) else k for k in self._f["keys"][:]]
        self.attrs = dict(self._f.attrs)
        self.params = json.loads(self.attrs.get("params", "{}"))

    @property
    def shape(self):
        return self._f["features"].shape

    @property
    def dtype(self):
        return self._f["features"].dtype

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, idx) -> np.ndarray:
        return np.asarray(self._f["features"][idx], dtype=np.float32)

    def all(self) -> np.ndarray:
        return self[:]

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def store_info(path) -> dict:
    with FeatureStore(path) as s:
        return {
            "path": str(path),
            "feature": str(s.attrs.get("feature", "")),
            "params": s.params,
            "count": len(s),
            "shape": list(s.shape[1:]),
            "dtype": str(s.dtype),
            "bytes_on_disk": os.path.getsize(path),
            "bytes_per_item": os.path.getsize(path) / max(len(s), 1),
            "code_version": str(s.attrs.get("code_version", "")),
            "image_shard": str(s.attrs.get("image_shard", "")),
            "image_shard_sha256": str(s.attrs.get("image_shard_sha256", "")),
        }
