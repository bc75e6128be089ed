"""Per-shard stores in HDF5: feature stores, reconstruction stores, and
stores derived from others.

One store per (representation, image shard), aligned with the image shard:
the dataset ``keys`` holds the image keys in the shard's order, ``features``
holds an ``(N, D, h, w)`` array (float16 or float32), chunked per image and
compressed.  Attributes record the feature name, its parameters (JSON), the
package version and the SHA-256 of the image shard it was computed from.

A *reconstruction store* (:func:`write_reconstructions`, read with
:class:`ReconstructionStore`) has the same layout with images
``(N, 3, H, W)`` as float16 pixels in [0, 255] in ``features``, whatever
method made them (learned decoders, optimisation, HOGgles, pre-images).
:func:`derive_store` writes a copy of a store with its features transformed
(perturbed or masked features), keeping keys and provenance.

Nothing non-finite passes: :func:`write_store` refuses NaN or Inf (and
values beyond float16's range in a float16 store) naming the store and the
first item, and :class:`FeatureStore` checks every read the same way, so
that neither a decoder nor a table silently consumes them.  A store records
the SHA-256 of its image shard; :func:`verify_image_shard` checks it against
the shard a command is given, and :func:`feature_mismatch` compares the
representation a store holds with the one a decoder expects.

HDF5 rather than WebDataset tars because decoders and evaluation read
features by index (random access for shuffling, subsets for evaluation), a
store is a single dense array per shard that h5py memory-maps chunk by chunk,
and attributes give a natural place for provenance.  Image shards stay tars
because they are streamed sequentially and hold encoded images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from pipeline import __version__, code_commit
from pipeline.io import atomic_path, sha256_file

DTYPES = {"float16": np.float16, "float32": np.float32}
#: What to do about a store that cannot be used.
REWRITE = "delete it and rerun the job that wrote it"

#: The ``feature`` attribute of a reconstruction store.
RECONSTRUCTION = "reconstruction"
#: Attributes every store gets from :func:`write_store` (not copied by :func:`derive_store`).
_PROVENANCE = ("feature", "params", "code_version", "image_shard", "image_shard_sha256")
#: Keys of a reconstruction store's parameters set by :func:`write_reconstructions` itself.
_RECONSTRUCTION_PARAMS = ("representation", "method", "feature")


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
    what = _describe(feature, params)
    check_finite(path, keys, features, what, "nothing was written")
    with np.errstate(over="ignore"):  # reported below, naming the store
        data = features.astype(DTYPES[dtype])
    if dtype == "float16" and features.size and not np.isfinite(data).all():
        over = np.abs(features[~np.isfinite(data)])
        raise ValueError(
            f"{path}: {over.size} values of {what} exceed float16's range (largest |x| {float(over.max()):.4g} > "
            f"{float(np.finfo(np.float16).max):.0f}); store them as float32 (extract --dtype float32; "
            "in the config: features.dtype: float32)"
        )
    try:
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("keys", data=np.array(keys, dtype=h5py.string_dtype()))
                chunks = (1,) + features.shape[1:] if features.shape[0] else None
                f.create_dataset(
                    "features",
                    data=data,
                    chunks=chunks,
                    compression=compression if features.shape[0] else None,
                    shuffle=compression is not None and features.shape[0] > 0,
                )
                f.attrs["feature"] = feature
                f.attrs["params"] = json.dumps(params, sort_keys=True)
                f.attrs["code_version"] = __version__
                f.attrs["code_commit"] = code_commit()
                f.attrs["image_shard"] = image_shard or ""
                f.attrs["image_shard_sha256"] = image_shard_sha256 or ""
                for k, v in (extra_attrs or {}).items():
                    f.attrs[k] = v
    except OSError as e:
        raise OSError(f"{path}: could not be written ({e}); is the disk full?") from None


def _describe(feature: str, params: dict) -> str:
    """What a store holds, for messages."""
    if feature == RECONSTRUCTION:
        return f"reconstructions of {params.get('representation')!r} by {params.get('method')!r}"
    return f"feature {feature!r}"


def check_finite(path, keys, values: np.ndarray, what: str, fix: str) -> None:
    """Raise naming ``path``, the count and the first item when ``values`` ((N, ...)) hold NaN or Inf."""
    if values.size == 0 or values.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: {int(bad.sum())} of {len(values)} items of {what} hold NaN or Inf "
                         f"(the first: {keys[first]!r}); {fix}")


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
        try:
            self.keys = [k.decode() if isinstance(k, bytes) else k for k in self._f["keys"][:]]
            self.attrs = dict(self._f.attrs)
            self.params = json.loads(self.attrs.get("params", "{}"))
        except (OSError, ValueError, KeyError) as e:
            self._f.close()
            raise ValueError(f"{self.path}: damaged store, its keys or attributes cannot be read ({e}); "
                             f"{REWRITE}") from None
        self._what = _describe(str(self.attrs.get("feature", "")), self.params)

    @property
    def shape(self):
        return self._f["features"].shape

    @property
    def dtype(self):
        return self._f["features"].dtype

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, idx) -> np.ndarray:
        """Items ``idx`` as float32; a damaged chunk or a NaN/Inf value raises naming the store."""
        return self.read(idx)

    def read(self, idx, dtype=np.float32) -> np.ndarray:
        """Items ``idx`` as ``dtype`` (float16 stores read as float16 skip a conversion: a
        SIFT training store of 3000 items is 408 M values), checked like ``store[idx]``."""
        try:
            values = np.asarray(self._f["features"][idx], dtype=dtype)
        except OSError as e:
            raise ValueError(f"{self.path}: damaged store, items {idx} cannot be read ({e}); {REWRITE}") from None
        if values.size and not np.isfinite(values).all():
            items = np.atleast_1d(np.arange(len(self.keys))[idx])
            keys = [self.keys[i] for i in items]
            check_finite(self.path, keys, values.reshape(len(items), -1), self._what, REWRITE)
        return values

    def all(self, dtype=np.float32) -> np.ndarray:
        return self.read(slice(None), dtype)

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


# --------------------------------------------------------------------------- provenance


def verify_image_shard(store, attrs: dict, shard, shard_sha256: str | None = None) -> None:
    """Raise unless the store ``store`` (its attributes ``attrs``) was computed from
    the image shard ``shard`` (its SHA-256 ``shard_sha256``, computed when None).

    Stores that record no SHA-256 (written by hand) are not checked.
    """
    recorded = str(attrs.get("image_shard_sha256", "") or "")
    if not recorded:
        return
    actual = shard_sha256 or sha256_file(shard)
    if recorded != actual:
        source = str(attrs.get("image_shard", "") or "") or "another shard"
        raise ValueError(
            f"{store}: computed from the image shard {source} (SHA-256 {recorded[:16]}...), not from {shard} "
            f"(SHA-256 {actual[:16]}...): the store and the images do not belong together; give the shard it was "
            f"computed from, or {REWRITE} on this shard"
        )


def feature_mismatch(recorded: dict, expected: dict) -> str | None:
    """Why the representation ``recorded`` (``{"name", "params"}``, e.g. a store's)
    is not the one ``expected`` (e.g. a decoder's): a different name, or a
    parameter both give with different values; None when they agree.

    Parameters are compared where both give them: a store records all of a
    representation's parameters, a configuration perhaps only some.
    """
    name, want = recorded.get("name") or "", expected.get("name") or ""
    if name != want:
        return f"holds {name!r}, not {want!r}"
    rp, ep = recorded.get("params") or {}, expected.get("params") or {}
    diff = sorted(k for k in set(rp) & set(ep) if rp[k] != ep[k])
    if diff:
        have = ", ".join(f"{k}={rp[k]!r}" for k in diff)
        need = ", ".join(f"{k}={ep[k]!r}" for k in diff)
        return f"holds {name!r} with {have}, not {need}"
    return None


# --------------------------------------------------------------------------- reconstruction stores


def write_reconstructions(
    path,
    keys: list[str],
    images: np.ndarray,
    *,
    method: str,
    representation: str | None,
    feature: str | None,
    feature_params: dict | None,
    image_shard: str | None = None,
    image_shard_sha256: str | None = None,
    details: dict | None = None,
    extra_attrs: dict | None = None,
) -> None:
    """Write a reconstruction store: ``images`` ``(N, 3, H, W)`` pixels in [0, 255], as float16.

    Every method writes the same attributes: ``feature = "reconstruction"``,
    ``method`` and ``pixel_range = "0-255"``, and the parameters (JSON)
    ``{"representation": ..., "method": ..., "feature": {"name": feature,
    "params": feature_params}}`` (``"feature": None`` when ``feature`` is
    None) naming the representation inverted, plus the method's ``details``
    (e.g. ``"inversion"`` settings).  ``extra_attrs`` are further attributes.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{path}: reconstructions must be (N, 3, H, W), got shape {images.shape}")
    clash = sorted(set(details or {}) & set(_RECONSTRUCTION_PARAMS))
    if clash:
        raise ValueError(f"{path}: details may not set {clash}")
    attrs = dict(extra_attrs or {})
    clash = sorted(set(attrs) & {*_PROVENANCE, "method", "pixel_range"})
    if clash:
        raise ValueError(f"{path}: extra_attrs may not set {clash}")
    params = {
        "representation": representation,
        "method": method,
        "feature": {"name": feature, "params": dict(feature_params or {})} if feature else None,
        **(details or {}),
    }
    write_store(path, keys, images, feature=RECONSTRUCTION, params=params, image_shard=image_shard,
                image_shard_sha256=image_shard_sha256, dtype="float16",
                extra_attrs={"pixel_range": "0-255", "method": method, **attrs})


@dataclass(frozen=True)
class ReconstructionMeta:
    """What a reconstruction store records: the method, the representation
    inverted (its label, feature name and parameters; empty when the store
    does not record them) and all its attributes and parameters."""

    path: str
    method: str
    representation: str
    feature: str
    feature_params: dict
    params: dict
    attrs: dict


class ReconstructionStore(FeatureStore):
    """Read access to a reconstruction store (see :func:`write_reconstructions`):
    a :class:`FeatureStore` of images, with :attr:`meta` a :class:`ReconstructionMeta`."""

    def __init__(self, path):
        super().__init__(path)
        kind = str(self.attrs.get("feature", ""))
        if kind != RECONSTRUCTION:
            self.close()
            raise ValueError(f"{self.path}: not a reconstruction store (feature {kind!r}, "
                             f"expected {RECONSTRUCTION!r})")
        inner = self.params.get("feature") or {}
        self.meta = ReconstructionMeta(
            path=str(self.path),
            method=str(self.attrs.get("method", "")),
            representation=str(self.params.get("representation") or ""),
            feature=str(inner.get("name") or ""),
            feature_params=dict(inner.get("params") or {}),
            params=self.params,
            attrs=dict(self.attrs),
        )


# --------------------------------------------------------------------------- derived stores


def derive_store(src, dst, transform: Callable[..., np.ndarray], *, params: dict | None = None,
                 attrs: dict | None = None, dtype: str | None = None, with_keys: bool = False) -> None:
    """Write ``dst``: the store ``src`` with ``transform`` applied to all its features.

    ``transform`` maps the float32 array ``(N, ...)`` to an array of the same
    length.  Keys, the feature name, its parameters, the image shard and its
    SHA-256 and the other attributes are kept; ``params`` are added to the
    parameters and ``attrs`` to the attributes (recording the derivation).
    ``dtype``: of the new store (default: the source's).  ``with_keys``: ``transform``
    also gets the keys (``transform(features, keys)``).
    """
    with FeatureStore(src) as s:
        features = s.all()
        keys = list(s.keys)
        src_attrs = dict(s.attrs)
        src_params = dict(s.params)
        dtype = dtype or ("float16" if s.dtype == np.float16 else "float32")
    out = np.asarray(transform(features, keys) if with_keys else transform(features))
    extra = {k: v for k, v in src_attrs.items() if k not in _PROVENANCE}
    extra.update(attrs or {})
    write_store(dst, keys, out, feature=str(src_attrs.get("feature", "")), params={**src_params, **(params or {})},
                image_shard=str(src_attrs.get("image_shard", "")) or None,
                image_shard_sha256=str(src_attrs.get("image_shard_sha256", "")) or None,
                dtype=dtype, extra_attrs=extra)
