"""The built-in sample dataset: bundled photographs and dead-leaves images.

Nothing is downloaded.  The photographs bundled with scikit-image are split
*by photograph* into train and validation (no photograph feeds both) and cut
into deterministic multi-scale crops with random flips.  For training only,
procedurally generated "dead leaves" images are added (occluding discs and
rectangles with power-law sizes, colours drawn from the training photographs,
mild blur and noise), the classic model of natural-image statistics.  Twenty
photographs are far too few to learn a decoder from; the procedural images
give it the statistics of edges and occlusions, and validation stays on
held-out photographs only.

Everything random comes from :func:`_rng`, a generator keyed by the seed and
the entry (split, index), so an index and its images are reproducible.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

#: Natural photographs that ship inside scikit-image (name -> loader name).
#: ``stereo_motorcycle`` returns a stereo pair: only the left view is used.
SAMPLE_PHOTOS = {
    "astronaut": "astronaut",
    "brick": "brick",
    "camera": "camera",
    "cell": "cell",
    "chelsea": "chelsea",
    "clock": "clock",
    "coffee": "coffee",
    "coins": "coins",
    "grass": "grass",
    "gravel": "gravel",
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "moon": "moon",
    "motorcycle": "stereo_motorcycle",
    "page": "page",
    "retina": "retina",
    "rocket": "rocket",
    "text": "text",
}



@functools.lru_cache(maxsize=None)
def load_sample_photo(name: str) -> np.ndarray:
    """A bundled photograph as (H, W, 3) uint8 RGB (read-only, cached: some take a second to decode)."""
    import skimage.data

    if name not in SAMPLE_PHOTOS:
        raise KeyError(f"unknown sample photograph {name!r}; known: {', '.join(SAMPLE_PHOTOS)}")
    im = getattr(skimage.data, SAMPLE_PHOTOS[name])()
    if isinstance(im, tuple):  # stereo pair
        im = im[0]
    im = np.asarray(im)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    im = np.ascontiguousarray(im[:, :, :3].astype(np.uint8))
    im.flags.writeable = False
    return im


def sample_photo_split(split: str, val_photos: list[str]) -> list[str]:
    unknown = sorted(set(val_photos) - set(SAMPLE_PHOTOS))
    if unknown:
        raise ValueError(
            f"dataset.sample.val_photos: unknown photograph(s) {unknown}; "
            f"allowed: {', '.join(SAMPLE_PHOTOS)}"
        )
    if split == "val":
        return sorted(val_photos)
    return sorted(set(SAMPLE_PHOTOS) - set(val_photos))


def _rng(seed: int, *words) -> np.random.Generator:
    """A generator seeded by the seed and any number of strings/ints."""
    key = [int(seed)]
    for w in words:
        if isinstance(w, str):
            key.extend(w.encode())
            key.append(255)
        else:
            key.append(int(w))
    return np.random.default_rng(key)


def sample_index(split: str, cfg: dict, seed: int) -> list[dict]:
    """Entries of the sample source's index for ``split``.

    Photo crop ``i`` uses photograph ``i mod P`` of the split, a crop side
    drawn from ``crop_scales`` (fractions of the photograph's shorter side), a
    uniformly drawn position and a coin-flip mirror, all from a generator
    seeded by (seed, split, i).  Procedural images are keyed by their index.
    """
    photos = sample_photo_split(split, cfg["val_photos"])
    n_crops = cfg["train_photo_crops"] if split == "train" else cfg["val_crops"]
    entries = []
    sizes = {p: load_sample_photo(p).shape[:2] for p in photos}
    for i in range(n_crops):
        photo = photos[i % len(photos)]
        rng = _rng(seed, "crop", split, i)
        h, w = sizes[photo]
        side = int(round(min(h, w) * float(rng.choice(cfg["crop_scales"]))))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        flip = bool(rng.integers(0, 2))
        entries.append(
            {
                "key": f"{split}_{photo}_{i:06d}",
                "kind": "photo",
                "photo": photo,
                "box": [x, y, side],
                "flip": flip,
                "label": None,
            }
        )
    if split == "train":
        for i in range(cfg["procedural"]):
            entries.append(
                {"key": f"train_deadleaves_{i:07d}", "kind": "deadleaves", "index": i, "label": None}
            )
        # Interleave photo crops and procedural images across shards.
        order = _rng(seed, "order", split).permutation(len(entries))
        entries = [entries[j] for j in order]
    return entries


def _training_photos(photos: tuple[str, ...]) -> list[np.ndarray]:
    return [load_sample_photo(p) for p in photos]


def dead_leaves(size: int, rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    """One dead-leaves image, (size, size, 3) uint8.

    Shapes fall back to front (each new one occludes the old): discs and
    axis-aligned rectangles with radius density ~ r^-3 between size/64 and
    size/2 (scale invariant, as in natural images).  Each is filled either with
    a flat colour drawn from a pixel of a training photograph, weakly shaded,
    or (one in three) with a texture patch cut from a training photograph.
    Rendered at twice the size and downsampled (anti-aliased edges), then
    mildly blurred, plus a little Gaussian noise.
    """
    from scipy.ndimage import gaussian_filter

    s = 2 * size
    rmin, rmax = s / 64.0, s / 2.0

    def pick_colour():
        ph = photos[rng.integers(0, len(photos))]
        return ph[rng.integers(0, ph.shape[0]), rng.integers(0, ph.shape[1])].astype(np.float32)

    img = np.empty((s, s, 3), np.float32)
    img[:] = pick_colour()
    n_shapes = int(rng.integers(60, 160))
    for _ in range(n_shapes):
        u = rng.random()
        # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
        r = 1.0 / np.sqrt(1.0 / rmin**2 - u * (1.0 / rmin**2 - 1.0 / rmax**2))
        cx, cy = rng.uniform(0, s, size=2)
        rect = rng.random() < 0.5
        a, b = (r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)) if rect else (r, r)
        x0, x1 = int(max(0, np.floor(cx - a))), int(min(s, np.ceil(cx + a) + 1))
        y0, y1 = int(max(0, np.floor(cy - b))), int(min(s, np.ceil(cy + b) + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        if rect:
            mask = (np.abs(xx - cx) <= a) & (np.abs(yy - cy) <= b)
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        h, w = y1 - y0, x1 - x0
        if rng.random() < 1 / 3:
            ph = photos[rng.integers(0, len(photos))]
            py = int(rng.integers(0, max(1, ph.shape[0] - h)))
            px = int(rng.integers(0, max(1, ph.shape[1] - w)))
            patch = ph[py : py + h, px : px + w].astype(np.float32)
            if patch.shape[:2] != (h, w):
                patch = np.resize(patch, (h, w, 3))
        else:
            gx, gy = rng.normal(0, 20.0 / s, size=2)
            shade = np.clip(1.0 + gx * (xx - cx) + gy * (yy - cy), 0.6, 1.4)
            patch = pick_colour()[None, None, :] * shade[:, :, None]
        region = img[y0:y1, x0:x1]
        region[mask] = patch[mask]
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    img = gaussian_filter(img, sigma=(rng.uniform(0.3, 0.8),) * 2 + (0,))
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_sample_entry(entry: dict, size: int, cfg: dict, seed: int) -> np.ndarray:
    if entry["kind"] == "photo":
        im = load_sample_photo(entry["photo"])
        x, y, side = entry["box"]
        crop = Image.fromarray(im[y : y + side, x : x + side])
        crop = crop.resize((size, size), Image.BICUBIC, reducing_gap=None)
        arr = np.asarray(crop)
        return np.ascontiguousarray(arr[:, ::-1]) if entry["flip"] else arr
    if entry["kind"] == "deadleaves":
        photos = tuple(sample_photo_split("train", cfg["val_photos"]))
        rng = _rng(seed, "deadleaves", entry["index"])
        return dead_leaves(size, rng, _training_photos(photos))
    raise ValueError(f"unknown sample entry kind {entry['kind']!r}")
