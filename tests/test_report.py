"""What the report shows: the tables as HTML pages, the training curves and the
Mahendran & Vedaldi energy as figures, readable grid labels, and the workflow's
report entries (the report built from a real run is in tests/test_workflow.py)."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata
from skimage.transform import resize

from pipeline.baselines.descent import InversionLog
from pipeline.cli import main
from pipeline.data.shards import Sample, write_shard
from pipeline.evaluation import curves, tables
from pipeline.evaluation.report import markdown_page
from pipeline.images import _fit, image_grid
from pipeline.store import write_reconstructions

REPO = Path(__file__).resolve().parents[1]


class Page(HTMLParser):
    """The cells, list items (with their class) and title of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.cells, self.items, self.title, self._in = [], [], "", None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th", "li", "title"):
            self._in = (tag, dict(attrs).get("class"))
            if tag in ("td", "th"):
                self.cells.append("")
            elif tag == "li":
                self.items.append([dict(attrs).get("class"), ""])

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if not self._in:
            return
        tag = self._in[0]
        if tag in ("td", "th"):
            self.cells[-1] += data
        elif tag == "li":
            self.items[-1][1] += data
        else:
            self.title += data


def _record(row, name, method, e, paper=None):
    return {"row": row, "name": name, "method": method, "error_mean": e, "error_std": 0.1,
            "error_ci95_low": e - 0.05, "error_ci95_high": e + 0.05, "psnr_mean": 12.0, "ssim_mean": 0.2,
            "n_images": 6, "paper_error": paper, "normaliser": 4000.0, "image_size": "32x32", "ci_method": "t"}


def test_table2_page_holds_the_numbers_the_paper_and_the_checks():
    recs = [_record("mv-hog", "HOG⁻¹ [Mahendran & Vedaldi]", "mv", 0.812, 0.63),
            _record("ours-hog", "HOG ours", "ours", 0.68, 0.24),
            _record("mean-image", "Mean image (floor)", "mean-image", 0.7)]
    for r in recs:
        r["rel_to_floor"] = r["error_mean"] / 0.7
    md = tables.render_table2_md(recs, "Dataset: test & co.")
    page = Page(markdown_page(md, "Table 2 (Dosovitskiy & Brox 2016)"))
    assert page.title == "Table 2 (Dosovitskiy & Brox 2016)"
    assert page.cells[:2] == ["Method", "Error"] and "Paper" in page.cells
    for value in ("HOG⁻¹ [Mahendran & Vedaldi]", "0.812", "0.680", "0.63", "0.24", "[0.630, 0.730]", "1.00"):
        assert value in page.cells, value
    assert [c for c, _ in page.items] == ["yes", "no"]  # below the baselines; not every decoder 10% below the floor
    assert page.items[1][1].endswith(": NO")


def test_markdown_page_escapes_text_and_keeps_escaped_bars():
    page = markdown_page("**Title.** a < b & c\n\n| a \\| b | c |\n|---|---|\n| <x> | 1 |\n", "t & u")
    assert "<strong>Title.</strong> a &lt; b &amp; c" in page and "<title>t &amp; u</title>" in page
    assert Page(page).cells == ["a | b", "c", "<x>", "1"]


def _photos(n=4, size=32):
    im = skdata.astronaut()
    crops = [im[i * 60:i * 60 + 256, i * 40:i * 40 + 256] for i in range(n)]
    return np.stack([resize(c, (size, size), preserve_range=True, anti_aliasing=True).round().astype(np.uint8)
                     for c in crops])


def test_table2_and_mv_table1_commands_write_html_pages(tmp_path):
    photos = _photos()
    keys = [f"k{i}" for i in range(len(photos))]
    shard = tmp_path / "val.tar"
    write_shard(shard, [Sample(k, im) for k, im in zip(keys, photos)])
    rec = tmp_path / "rec.h5"
    noisy = np.clip(photos.transpose(0, 3, 1, 2) + 30.0, 0, 255).astype(np.float32)
    write_reconstructions(rec, keys, noisy, method="ours", representation="hog", feature="hog", feature_params={})
    out, html = tmp_path / "t2.csv", tmp_path / "t2.html"
    assert main(["evaluate", "table2", "--images", str(shard), "--row", f"ours-hog={rec}", "--floor-from-val",
                 "--dataset", "four crops", "--out", str(out), "--html", str(html), "--ci", "t"]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    page = Page(html.read_text())
    assert f"{float(rows[0]['error_mean']):.3f}" in page.cells and "HOG ours" in page.cells
    assert "Dataset: four crops." in html.read_text()
    out1, html1 = tmp_path / "t1.csv", tmp_path / "t1.html"
    assert main(["evaluate", "mv-table1", "--images", str(shard), "--row", f"hog={rec}", "--out", str(out1),
                 "--html", str(html1), "--ci", "t"]) == 0
    page = Page(html1.read_text())
    assert page.title == "Table 1 (Mahendran & Vedaldi 2015)" and any("28.10" in c for c in page.cells)


def _metrics(path, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "lr", "images_per_s", "grad_norm"])
        for i, loss in enumerate(losses):
            w.writerow([10 * (i + 1), i / 10, loss, 1e-3, 100.0, 1.0])


def _inversion_log(path, energies):
    """A log of 3 targets x 2 restarts (restart 1 kept) over len(energies) iterations."""
    T, N, R = len(energies), 3, 2
    e = np.array(energies, dtype=float)[:, None, None] * np.array([1.0, 2.0, 3.0])[None, :, None] \
        * np.array([10.0, 1.0])[None, None, :]  # the discarded restart 0 is 10x higher
    values = {c: e.copy() for c in ("energy", "feature_loss", "alpha_term", "tv_term", "pixel_rmse")}
    log = InversionLog(keys=["a", "b", "c"], iteration=np.arange(1, T + 1), lr=np.full(T, 0.01), values=values,
                       best=np.ones(N, dtype=int))
    log.write_csv(path)


def test_training_curves_and_mv_energy_commands(tmp_path, monkeypatch):
    _metrics(tmp_path / "hog" / "metrics.csv", [0.4, 0.2, 0.1, 0.08])
    _metrics(tmp_path / "sift" / "metrics.csv", [0.4, 0.2, 0.1, 0.08])  # the same curve: still visible
    m = curves.read_training_metrics(tmp_path / "hog")
    assert m["step"].tolist() == [10, 20, 30, 40] and m["loss"][-1] == pytest.approx(0.08)
    out = tmp_path / "tc.png"
    assert main(["evaluate", "training-curves", "--run", f"HOG ours={tmp_path / 'hog'}",
                 "--run", f"SIFT ours={tmp_path / 'sift' / 'metrics.csv'}", "--dataset", "d",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".pdf").stat().st_size > 0
    caption = (tmp_path / "tc.png.caption.txt").read_text()
    assert caption.startswith("Training loss of the decoders (Dosovitskiy & Brox 2016). Dataset: d.")
    _inversion_log(tmp_path / "hog.csv", [8.0, 4.0, 2.0])
    s = curves.read_inversion_logs([tmp_path / "hog.csv"])
    assert s["iteration"].tolist() == [1, 2, 3] and s["targets"].tolist() == [3, 3, 3]
    np.testing.assert_allclose(s["energy_median"], [16.0, 8.0, 4.0])  # the kept restart only, median of 1x 2x 3x
    out = tmp_path / "mv.png"
    assert main(["evaluate", "mv-energy", "--run", f"HOG={tmp_path / 'hog.csv'}", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "Mahendran & Vedaldi 2015" in (tmp_path / "mv.png.caption.txt").read_text()
    seen = {}
    monkeypatch.setattr(curves, "save_figure", lambda fig, path, caption: seen.setdefault("fig", fig))
    curves.plot_training_curves(tmp_path / "x.png", {"a": m, "b": m, "c": m})
    lines = seen["fig"].axes[0].lines
    assert len({ln.get_marker() for ln in lines}) == 3 and len({ln.get_linestyle() for ln in lines}) == 3
    _metrics(tmp_path / "empty" / "metrics.csv", [])
    with pytest.raises(ValueError, match="no metrics rows"):
        curves.read_training_metrics(tmp_path / "empty")


def test_grid_column_labels_are_wrapped_to_their_column(tmp_path, monkeypatch):
    label = "HOG⁻¹ [Mahendran & Vedaldi]"
    assert all(len(line) <= 14 for line in _fit(label, 1.2).splitlines()) and "\n" in _fit(label, 1.2)
    assert _fit("HOG ours", 1.2) == "HOG ours"
    import pipeline.images as images

    seen = {}
    monkeypatch.setattr(images, "save_figure", lambda fig, path, caption: seen.setdefault("fig", fig))
    img = np.zeros((8, 8, 3), np.uint8)
    image_grid(tmp_path / "g.png", [[img, img]], col_labels=["Image", label])
    titles = [ax.get_title() for ax in seen["fig"].axes]
    assert titles == ["Image", _fit(label, 1.2)]


def test_report_entries_are_grouped_by_paper_and_the_main_target_builds_the_training_curves(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "-n", "--cores", "1", "results/table2.csv", "--configfile", str(REPO / "config" / "test.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "rule training_curves:" in out and "results/figures/training_curves_shallow.png" in out
    assert "results/table2.html" in out and "rule mv_energy:" not in out  # nothing the table does not need
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    # every report entry's category is a paper (vocabulary.PAPERS, as DB2016, MV2015, MV2016)
    assert set(re.findall(r"\bcategory=(\w+)", rules)) == {"DB2016", "MV2015", "MV2016"}
    assert rules.count("report(") == len(re.findall(r"\bcategory=", rules))
    for rst in (REPO / "workflow" / "report").glob("*.rst"):
        text = rst.read_text()
        assert "seed 00" not in text and ("Dosovitskiy & Brox" in text or "Mahendran & Vedaldi" in text), rst
