"""The shipped real photographs (pipeline/data/photos) and their loader."""
from __future__ import annotations

import fnmatch
import importlib.resources
import importlib.util
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from pipeline.data.photoset import SPLITS, load_photo, photo_split, photo_table

REPO = Path(__file__).resolve().parents[1]
PHOTOS = importlib.resources.files("pipeline.data") / "photos"


def _tool():
    spec = importlib.util.spec_from_file_location("make_photo_set", REPO / "tools" / "make_photo_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_sizes_and_disjoint_by_photograph():
    ids = {s: [i for i, _ in photo_split(s)] for s in SPLITS}
    assert {s: len(v) for s, v in ids.items()} == {"train": 800, "val": 200, "dev": 100, "fit": 700}
    for v in ids.values():
        assert len(set(v)) == len(v)
    assert not set(ids["train"]) & set(ids["val"])
    assert set(ids["dev"]) <= set(ids["train"]) and set(ids["fit"]) == set(ids["train"]) - set(ids["dev"])
    assert set(ids["train"]) | set(ids["val"]) == {r["ImageId"] for r in photo_table()}
    with pytest.raises(ValueError, match="unknown photo split"):
        photo_split("test")


def test_split_is_the_documented_seeded_one():
    table = photo_table()
    want = _tool().split_of([r["ImageId"] for r in table])
    assert {r["ImageId"]: (r["split"], r["dev"]) for r in table} == want


def test_labels_are_imagenet_indices():
    labels = [r["label"] for r in photo_table()]
    assert len(labels) == 1000 and all(0 <= l < 1000 for l in labels)
    assert len(set(labels)) > 400  # 430 classes
    assert dict(photo_split("val")) == {r["ImageId"]: r["label"] for r in photo_table() if r["split"] == "val"}


def test_every_listed_file_exists_and_nothing_else_ships():
    listed = {r["file"] for r in photo_table()}
    assert all((PHOTOS / f).is_file() for f in listed)
    shipped = {p.name for p in PHOTOS.iterdir() if p.name.endswith(".jpg")}
    assert shipped == listed
    total = sum((PHOTOS / f).stat().st_size for f in listed)
    assert total <= 10_000_000


def test_attribution_complete():
    for r in photo_table():
        assert r["Author"].strip(), r["ImageId"]
        for key in ("AuthorProfileURL", "OriginalLandingURL"):  # as in the source: http(s), with or without www
            url = urlparse(r[key])
            assert url.scheme in ("http", "https") and url.netloc.endswith("flickr.com") and url.path.strip("/"), r
        assert r["License"] == "https://creativecommons.org/licenses/by/2.0/", r["ImageId"]
    assert "CC BY 2.0" in (PHOTOS / "README.md").read_text()


def test_load_photo():
    pid, _ = photo_split("dev")[0]
    im = load_photo(pid)
    assert im.dtype == np.uint8 and im.shape == (160, 160, 3) and not im.flags.writeable
    assert im.std() > 10  # a photograph, not a blank
    with pytest.raises(KeyError, match="unknown photograph"):
        load_photo("not-an-id")


def test_declared_as_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["pipeline.data"]
    names = [f"photos/{r['file']}" for r in photo_table()] + ["photos/attribution.csv", "photos/README.md"]
    for name in names:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
