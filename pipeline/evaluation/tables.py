"""The papers' tables: Table 2 of Dosovitskiy & Brox 2016 (image-space
normalised error, PSNR, SSIM and the mean-image floor) and Table 1 of
Mahendran & Vedaldi 2015 (CVPR) (feature-space error of inversions), as
records for CSV and as Markdown.  The metrics are in
:mod:`pipeline.evaluation.metrics`.
"""
from __future__ import annotations

import itertools
import json
import sys
from typing import Sequence

import numpy as np
import torch

from pipeline.evaluation.metrics import (
    feature_errors, images_nchw, mean_pairwise_distance_streamed, mean_squared_pairwise_distance_streamed,
    normalized_errors, prepare_reconstructions, psnr_per_image, squared_feature_errors, ssim_per_image, summarize,
)
from pipeline.evaluation.report import _fmt, markdown_table
from pipeline.evaluation.testset import CHUNK, RowFile, TestSet, iter_reconstructions
from pipeline.features import get_feature
from pipeline.store import FeatureStore, ReconstructionMeta
from pipeline.vocabulary import FLOOR_ROW, MV_TABLE1_METRIC_FEATURES, MV_TABLE1_ROWS, TABLE2_ROWS

# --------------------------------------------------------------------------- row evaluation


def evaluate_image_row(test: TestSet, stores: Sequence, norm: float, *, ci: str = "bootstrap",
                       seed: int = 0, ssim: bool = True) -> dict:
    """Image-space metrics of one row: per-image arrays and summaries (the stores streamed a chunk at a time)."""
    meta, idx, err, ps, ss = [], [], [], [], []
    for i, recs in iter_reconstructions(test, stores, meta):
        x = test.take(i)
        idx.append(i)
        err.append(normalized_errors(x, recs, norm)[0])
        ps.append(psnr_per_image(x, recs))
        if ssim:
            ss.append(ssim_per_image(x, recs))
    err, ps = np.concatenate(err), np.concatenate(ps)
    out = {"keys": [test.keys[i] for i in np.concatenate(idx)], "error": err, "meta": meta,
           "error_summary": summarize(err, ci=ci, seed=seed)}
    out["psnr"], out["psnr_summary"] = ps, summarize(ps, ci=ci, seed=seed)
    if ssim:
        ss = np.concatenate(ss)
        out["ssim"], out["ssim_summary"] = ss, summarize(ss, ci=ci, seed=seed)
    return out



def _row_record(row_id: str, name: str, method: str, rep: str, res: dict, *, dataset: str,
                norm: float, size, paper) -> dict:
    e = res["error_summary"]
    rec = {
        "row": row_id, "name": name, "method": method, "representation": rep,
        "dataset": dataset, "n_images": e.n,
        "error_mean": e.mean, "error_std": e.std, "error_ci95_low": e.ci_low, "error_ci95_high": e.ci_high,
        "normaliser": norm, "image_size": f"{size[0]}x{size[1]}", "ci_method": e.method, "paper_error": paper,
    }
    if "psnr_summary" in res:
        rec.update(psnr_mean=res["psnr_summary"].mean, psnr_std=res["psnr_summary"].std)
    if "ssim_summary" in res:
        rec.update(ssim_mean=res["ssim_summary"].mean, ssim_std=res["ssim_summary"].std)
    return rec


TABLE2_COLUMNS = (
    "row", "name", "method", "representation", "dataset", "n_images",
    "error_mean", "error_std", "error_ci95_low", "error_ci95_high",
    "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "rel_to_floor",
    "paper_error", "normaliser", "image_size", "ci_method",
)


def table2(test: TestSet, rows: dict[str, list[str]], *, dataset: str, mean_image=None,
           floor_label: str = "train", ci: str = "bootstrap", seed: int = 0,
           norm_max_images: int | None = None, per_image: list | None = None) -> list[dict]:
    """Table 2 records in the paper's row order (rows without inputs omitted), floor last."""
    unknown = [r for r in rows if r not in TABLE2_ROWS]
    if unknown:
        raise ValueError(f"unknown Table 2 rows {unknown}; choose from {', '.join(TABLE2_ROWS)}")
    norm = test.normaliser(norm_max_images, seed)
    records = []
    for rid, (name, method, rep, paper) in TABLE2_ROWS.items():
        if rid not in rows:
            continue
        res = evaluate_image_row(test, rows[rid], norm, ci=ci, seed=seed)
        records.append(_row_record(rid, name, method, rep, res, dataset=dataset, norm=norm,
                                   size=test.size, paper=paper))
        if per_image is not None:
            per_image += [{"row": rid, "key": k, "error": e, "psnr": p, "ssim": s}
                          for k, e, p, s in zip(res["keys"], res["error"], res["psnr"], res["ssim"])]
    if mean_image is not None:
        rec = np.asarray(mean_image, dtype=np.float32).transpose(2, 0, 1)[None]
        err, ps, ss = [], [], []
        for _, x in test.blocks():
            recs = np.broadcast_to(rec, (len(x),) + rec.shape[1:])
            err.append(normalized_errors(x, recs, norm)[0])
            ps.append(psnr_per_image(x, recs))
            ss.append(ssim_per_image(x, recs))
        err, ps, ss = np.concatenate(err), np.concatenate(ps), np.concatenate(ss)
        res = {"error_summary": summarize(err, ci=ci, seed=seed), "psnr_summary": summarize(ps, ci=ci, seed=seed),
               "ssim_summary": summarize(ss, ci=ci, seed=seed)}
        name = "Mean image (floor)" if floor_label == "train" else f"Mean image (floor; {floor_label})"
        floor = _row_record(FLOOR_ROW, name, "mean-image", "-", res, dataset=dataset, norm=norm,
                            size=test.size, paper=None)
        for r in records:
            r["rel_to_floor"] = r["error_mean"] / floor["error_mean"]
        floor["rel_to_floor"] = 1.0
        records.append(floor)
        if per_image is not None:
            per_image += [{"row": FLOOR_ROW, "key": k, "error": e, "psnr": p, "ssim": s}
                          for k, e, p, s in zip(test.keys, err, ps, ss)]
    return records


def render_table2_md(records: list[dict], caption: str) -> str:
    body = []
    for r in records:
        body.append([
            r["name"], _fmt(r["error_mean"]), _fmt(r["error_std"]),
            f"[{_fmt(r['error_ci95_low'])}, {_fmt(r['error_ci95_high'])}]",
            _fmt(r.get("psnr_mean"), 2), _fmt(r.get("ssim_mean"), 3), _fmt(r.get("rel_to_floor"), 2),
            str(r["n_images"]), _fmt(r["paper_error"], 2) if r["paper_error"] is not None else "–",
        ])
    head = ["Method", "Error", "Std", "95% CI (mean)", "PSNR (dB)", "SSIM", "÷ floor", "Images", "Paper"]
    n0 = records[0] if records else {}
    checks = table2_checks(records)
    notes = (
        "Error: mean over images of ||x − f(Φ(x))||₂ / N, reconstructions resized bilinearly to the input size; "
        f"N = mean Euclidean distance between the test images (all pairs i ≠ j) = {_fmt(n0.get('normaliser'), 1)}; "
        f"images {n0.get('image_size', '?')}. Std: of the per-image errors. "
        f"95% CI: {'percentile bootstrap (10,000 resamples)' if n0.get('ci_method') == 'bootstrap' else 'Student t'}"
        " for the mean. ÷ floor: error relative to the mean-image predictor. "
        "Paper: Dosovitskiy & Brox 2016, Table 2 (ImageNet validation subset)."
    )
    text = f"**Table 2 (Dosovitskiy & Brox 2016).** Normalised reconstruction error. {caption}\n\n" + markdown_table(head, body) + "\n" + notes + "\n"
    if checks:
        text += "\nChecks against the paper's claims:\n\n" + "".join(f"- {c}\n" for c in checks)
    return text


def table2_checks(records: list[dict]) -> list[str]:
    """The paper's qualitative claims, checked on these numbers (text lines; empty when not applicable).

    HOG ours below both baselines (HOGgles, HOG^-1) where they are present,
    and every decoder ("ours" rows) at least 10% below the mean-image floor.
    """
    by = {r["row"]: r for r in records}
    out = []
    ours = by.get("ours-hog")
    base = [by[b] for b in ("hoggles", "mv-hog") if b in by]
    if ours and base:
        ok = all(ours["error_mean"] < b["error_mean"] for b in base)
        vs = ", ".join(f"{b['name']} {b['error_mean']:.3f}" for b in base)
        out.append(f"HOG ours ({ours['error_mean']:.3f}) below the baselines ({vs}): {'yes' if ok else 'NO'}")
    floor = by.get(FLOOR_ROW)
    dec = [r for r in records if r["method"] == "ours"]
    if floor and dec:
        ok = all(r["error_mean"] <= 0.9 * floor["error_mean"] for r in dec)
        vs = ", ".join(f"{r['name']} {r['error_mean'] / floor['error_mean']:.2f}" for r in dec)
        out.append(f"every decoder at least 10% below the mean-image floor ({floor['error_mean']:.3f}; "
                   f"ratios {vs}): {'yes' if ok else 'NO'}")
    return out

# --------------------------------------------------------------------------- feature-space errors


def _feature_module(name: str, params: dict, device):
    return get_feature(name, **params).to(device).eval()


def compute_features(module, images_or_recs: torch.Tensor, batch_size: int = 32, device="cpu") -> torch.Tensor:
    """Features of (N, 3, H, W) float [0, 255] images, in batches, returned on the CPU."""
    out = []
    with torch.no_grad():
        for s in range(0, images_or_recs.shape[0], batch_size):
            out.append(module(images_or_recs[s:s + batch_size].to(device)).float().cpu())
    return torch.cat(out)


def representation_of_store(meta: ReconstructionMeta) -> tuple[str, dict]:
    """(feature name, params) of the representation a reconstruction store inverts."""
    if not meta.feature:
        raise ValueError(f"{meta.path}: the store does not record its representation; give --feature ROW=NAME")
    return meta.feature, dict(meta.feature_params)


MV_TABLE1_COLUMNS = (
    "row", "name", "method", "representation", "feature", "feature_params", "dataset", "n_images",
    "authors_error_pct_mean", "authors_error_pct_std", "authors_error_pct_ci95_low", "authors_error_pct_ci95_high",
    "authors_feature", "authors_normaliser", "paper_error_pct", "paper_std_pct",
    "error_pct_mean", "error_pct_std", "error_pct_ci95_low", "error_pct_ci95_high",
    "normaliser", "ci_method",
)


def mv_table1(test: TestSet, rows: dict[str, list[str]], *, dataset: str, features: dict | None = None,
              feature_names: dict | None = None, feature_params: dict | None = None,
              authors_features: dict | None = None, device="cpu", batch_size: int = 32, ci: str = "bootstrap",
              seed: int = 0) -> list[dict]:
    """Mahendran & Vedaldi 2015's Table 1 records: feature-space errors (%) of each row's reconstructions.

    Two measures (:mod:`pipeline.evaluation.metrics`): ``authors_error_pct_*``,
    the authors' Table 1 script (squared error over the mean squared pairwise
    distance) on the representation they measured
    (:data:`pipeline.vocabulary.MV_TABLE1_METRIC_FEATURES`, or
    ``authors_features[row] = (name, params)``): the column compared with the
    paper; and ``error_pct_*``, the paper's text (unsquared, over the mean
    pairwise distance) on the inverted representation.  ``features``:
    optional row -> feature stores of the *test images* (Phi(x) of the
    inverted representation), matched by key; otherwise computed here.  The
    inverted representation defaults to what the reconstruction stores record.
    """
    unknown = [r for r in rows if r not in MV_TABLE1_ROWS]
    if unknown:
        raise ValueError(f"unknown Table 1 rows {unknown}; choose from {', '.join(MV_TABLE1_ROWS)}")
    features, feature_names, feature_params = features or {}, feature_names or {}, feature_params or {}
    authors_features = authors_features or {}
    records = []
    for rid, (name, method, rep, paper, paper_std) in MV_TABLE1_ROWS.items():
        if rid not in rows:
            continue
        meta = []
        batches = _rebatched(iter_reconstructions(test, rows[rid], meta), batch_size)
        first = next(batches)  # reads the first store's meta
        fname, fparams = representation_of_store(meta[0]) if rid not in feature_names else (feature_names[rid], {})
        if rid in feature_params:
            fparams = feature_params[rid]
        if fname != rep and rid not in feature_names:
            print(f"mv-table1: row {rid!r} ({rep}) evaluated with the stores' representation {fname!r}",
                  file=sys.stderr)
        module = _feature_module(fname, fparams, device)
        # the authors' Table 1 script: squared, on the representation they measured
        aname, aparams = authors_features.get(rid, (MV_TABLE1_METRIC_FEATURES[rid], {}))
        amodule = _feature_module(aname, aparams, device)
        phi_x = _stored_features(test, rid, features[rid]) if rid in features else None
        a_x = None
        for _, x in test.blocks(batch_size):
            xb = images_nchw(x)
            if rid not in features:
                f = compute_features(module, xb, batch_size, device).numpy()
                if phi_x is None:
                    phi_x = RowFile(f.shape[1:], np.float32)
                phi_x.append(f)
            f = compute_features(amodule, xb, batch_size, device).numpy()
            if a_x is None:
                a_x = RowFile(f.shape[1:], np.float32)
            a_x.append(f)
        norm = mean_pairwise_distance_streamed(lambda i: torch.from_numpy(phi_x.take(i)), len(phi_x))
        a_norm = mean_squared_pairwise_distance_streamed(lambda i: torch.from_numpy(a_x.take(i)), len(a_x))
        err, a_err = [], []
        for idx, recs in itertools.chain([first], batches):
            r = prepare_reconstructions(recs, test.size)
            phi_r = compute_features(module, r, batch_size, device)
            if phi_r.shape[1:] != phi_x.item_shape:
                raise ValueError(f"row {rid}: features of reconstructions {tuple(phi_r.shape[1:])} and images "
                                 f"{phi_x.item_shape} differ")
            err.append(feature_errors(phi_r, torch.from_numpy(phi_x.take(idx)), norm)[0])
            a_err.append(squared_feature_errors(compute_features(amodule, r, batch_size, device),
                                                torch.from_numpy(a_x.take(idx)), a_norm)[0])
        err, a_err = np.concatenate(err), np.concatenate(a_err)
        s = summarize(100.0 * err, ci=ci, seed=seed)
        a = summarize(100.0 * a_err, ci=ci, seed=seed)
        records.append({
            "row": rid, "name": name, "method": method, "representation": rep, "feature": fname,
            "feature_params": json.dumps(getattr(module, "params", fparams), sort_keys=True),
            "dataset": dataset, "n_images": s.n,
            "authors_error_pct_mean": a.mean, "authors_error_pct_std": a.std,
            "authors_error_pct_ci95_low": a.ci_low, "authors_error_pct_ci95_high": a.ci_high,
            "authors_feature": json.dumps({"name": aname, "params": getattr(amodule, "params", aparams)},
                                          sort_keys=True),
            "authors_normaliser": a_norm, "paper_error_pct": paper, "paper_std_pct": paper_std,
            "error_pct_mean": s.mean, "error_pct_std": s.std,
            "error_pct_ci95_low": s.ci_low, "error_pct_ci95_high": s.ci_high, "normaliser": norm,
            "ci_method": s.method,
        })
    return records


def _rebatched(chunks, batch_size: int):
    """(indices, reconstructions) regrouped in batches of ``batch_size`` across stores (the last one smaller)."""
    idx, recs, n = [], [], 0
    for i, r in chunks:
        idx.append(i)
        recs.append(r)
        n += len(i)
        while n >= batch_size:
            i_all, r_all = np.concatenate(idx), np.concatenate(recs)
            yield i_all[:batch_size], r_all[:batch_size]
            idx, recs, n = [i_all[batch_size:]], [r_all[batch_size:]], n - batch_size
    if n:
        yield np.concatenate(idx), np.concatenate(recs)


def _stored_features(test: TestSet, rid: str, stores: Sequence) -> RowFile:
    """Phi(x) of the test images from feature stores (matched by key), in test order, in a :class:`RowFile`."""
    rows, have = None, np.zeros(len(test), bool)
    for p in stores:
        with FeatureStore(p) as st:
            test.verify(p, st.attrs)
            pos = [(j, test.index[k]) for j, k in enumerate(st.keys) if k in test.index]
            for s in range(0, len(pos), CHUNK):
                part = pos[s:s + CHUNK]
                arr = st[[j for j, _ in part]]
                if rows is None:
                    rows = RowFile(arr.shape[1:], np.float32)
                rows.put([i for _, i in part], arr)
                have[[i for _, i in part]] = True
    missing = [test.keys[i] for i in np.flatnonzero(~have)]
    if missing:
        raise ValueError(f"--features {rid}: no features for {len(missing)} test images, e.g. {missing[0]!r}")
    return rows


def render_mv_table1_md(records: list[dict], caption: str) -> str:
    body = [[r["name"], f"{_fmt(r['authors_error_pct_mean'], 2)} ±{_fmt(r['authors_error_pct_std'], 1)}",
             f"[{_fmt(r['authors_error_pct_ci95_low'], 2)}, {_fmt(r['authors_error_pct_ci95_high'], 2)}]",
             f"{r['paper_error_pct']:.2f} ±{r['paper_std_pct']:.1f}",
             f"{_fmt(r['error_pct_mean'], 2)} ±{_fmt(r['error_pct_std'], 1)}", str(r["n_images"])]
            for r in records]
    head = ["Representation / method", "Error % (authors' metric) ± std", "95% CI (mean)",
            "Paper (Mahendran & Vedaldi 2015, Table 1)", "Error % (paper's text: unsquared) ± std", "Images"]
    measured = ", ".join(f"{r['name']}: {json.loads(r['authors_feature'])['name']}" for r in records)
    notes = ("Authors' metric (compared with the paper; the authors' Table 1 script, "
             "experiment_shallow_quantitative.m): mean over images of ||Φ(x*) − Φ(x)||₂² / N²_Φ × 100, "
             "N²_Φ the mean squared Euclidean distance between the features of the test images over all "
             f"ordered pairs (i = j included), Φ the representation the authors measured ({measured}). "
             "Paper's text: mean of ||Φ(x*) − Φ(x)||₂ / N_Φ × 100 on the inverted representation, N_Φ the mean "
             "pairwise distance (i ≠ j). ± is the standard deviation of the per-image errors (as in the paper), "
             "the interval is for the mean.")
    return (f"**Mahendran & Vedaldi Table 1.** Feature-space reconstruction error. {caption}\n\n"
            + markdown_table(head, body) + "\n" + notes + "\n")
