"""Bench report: a Markdown table of means ± standard deviations over seeds, paired per-seed
differences against the baselines of the same run, and PNG plots."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

METRICS = ("test_auc", "test_auc_se", "test_logloss", "recall@20", "ndcg@20",
           "recall@20_excluding_eval", "ndcg@20_excluding_eval", "recall@20_refit",
           "ndcg@20_refit", "embedding_params",
           "train_seconds", "train_examples_per_second", "search_seconds")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (dataset, model): mean, std and n of every numeric metric.

    ``std`` is the population standard deviation of the per-seed values (ddof 0: the spread of
    the seeds run, 0 for one seed), the "±" of the Markdown table and of the README's tables;
    the paired table's ``std`` and ``se`` use ddof 1.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["model"])].append(row)
    summary = []
    for (dataset, model), group in groups.items():
        entry: dict[str, Any] = {"dataset": dataset, "model": model, "n": len(group)}
        for metric in METRICS:
            values = np.array([r[metric] for r in group if metric in r], dtype=float)
            if values.size:
                entry[metric] = (float(values.mean()), float(values.std(ddof=0)))
        summary.append(entry)
    return summary


# Models that other rows are compared with, when the same run has them.
REFERENCES = ("lr", "fm", "deepfm", "dnn", "dcn", "mf")


def paired_differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model against every reference model of its dataset, over the seeds both ran.

    The metric is test AUC (Recall@20 on top-k data). A seed is one pair, so the split and the
    data order cancel where the rows share them: ``mean`` and ``std`` (ddof 1) are over the
    per-seed differences, ``se`` is ``std / sqrt(n)`` (NaN for one seed), ``wins`` counts seeds
    with a difference >= 0, and ``test_se`` is the mean Hanley-McNeil standard error of one
    row's test AUC (how much the test sample alone moves it).

    >>> rows = [{"dataset": "d", "model": m, "seed": s, "test_auc": a}
    ...         for m, s, a in [("fm", 1, .70), ("fm", 2, .72), ("x", 1, .71), ("x", 2, .72)]]
    >>> [(e["model"], e["vs"], e["n"], round(e["mean"], 3), e["wins"])
    ...  for e in paired_differences(rows)]
    [('x', 'fm', 2, 0.005, 2)]
    """
    table: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        table[(row["dataset"], row["model"])][row["seed"]] = row
    out = []
    for (dataset, model), by_seed in table.items():
        # A baseline is compared only with the baselines listed before it (no mirrored pairs).
        references = (REFERENCES[:REFERENCES.index(model)] if model in REFERENCES
                      else REFERENCES)
        metric = "test_auc" if "test_auc" in next(iter(by_seed.values())) else "recall@20"
        for reference in references:
            base = table.get((dataset, reference))
            if not base:
                continue
            seeds = sorted(s for s in by_seed if s in base and metric in by_seed[s]
                           and metric in base[s])
            if not seeds:
                continue
            diffs = np.array([by_seed[s][metric] - base[s][metric] for s in seeds])
            std = float(diffs.std(ddof=1)) if diffs.size > 1 else float("nan")
            test_se = [r["test_auc_se"] for r in (*by_seed.values(), *base.values())
                       if "test_auc_se" in r]
            out.append({"dataset": dataset, "model": model, "vs": reference, "metric": metric,
                        "n": len(seeds), "mean": float(diffs.mean()), "std": std,
                        "se": float(std / np.sqrt(diffs.size)), "wins": int((diffs >= 0).sum()),
                        "test_se": float(np.mean(test_se)) if test_se else float("nan")})
    return out


# (header, metric, format) of the Markdown table; a metric no row has is left out (a CTR bench
# has no Recall@20 column, a top-k bench no AUC column).
COLUMNS = (("test AUC", "test_auc", ".4f"), ("test logloss", "test_logloss", ".4f"),
           ("Recall@20", "recall@20", ".4f"), ("NDCG@20", "ndcg@20", ".4f"))


def markdown_table(report: dict[str, Any]) -> str:
    entries = aggregate(report["results"])
    columns = [c for c in COLUMNS if any(c[1] in e for e in entries)]
    lines = ["| dataset | model | seeds | " + "".join(f"{h} | " for h, _, _ in columns)
             + "emb. params | train s | train ex/s |", "|---" * (len(columns) + 6) + "|"]
    for e in entries:
        def cell(metric: str, fmt: str, e: dict[str, Any] = e) -> str:
            if metric not in e:
                return "–"
            mean, std = e[metric]
            return f"{mean:{fmt}} ± {std:{fmt}}"
        lines.append(f"| {e['dataset']} | {e['model']} | {e['n']} | "
                     + "".join(f"{cell(m, fmt)} | " for _, m, fmt in columns)
                     + f"{e['embedding_params'][0]:,.0f} | {cell('train_seconds', '.1f')} | "
                     f"{cell('train_examples_per_second', ',.0f')} |")
    pairs = paired_differences(report["results"])
    if pairs:
        lines += ["", "Paired per-seed differences (model minus baseline, same seeds):", "",
                  "| dataset | model | vs | metric | seeds | mean difference | SE of the mean | "
                  "seeds >= 0 | one test AUC's SE |", "|---|---|---|---|---|---|---|---|---|"]
        for e in pairs:
            lines.append(f"| {e['dataset']} | {e['model']} | {e['vs']} | {e['metric']} | "
                         f"{e['n']} | {e['mean']:+.4f} | {e['se']:.4f} | {e['wins']}/{e['n']} | "
                         f"{'–' if np.isnan(e['test_se']) else format(e['test_se'], '.4f')} |")
    if report.get("serving"):
        lines += ["", "| dataset | model | batch | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for s in report["serving"]:
            for batch, lat in sorted(s["latency_ms"].items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {s['dataset']} | {s['model']} | {batch} | {lat['p50']:.2f} | "
                             f"{lat['p99']:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_json: str) -> None:
    """Writes ``<out>.md`` and ``<out>.png`` next to the JSON."""
    stem = os.path.splitext(out_json)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(report))
    entries = aggregate(report["results"])
    panels = [(m, title) for m, title in (
        ("test_auc", "test AUC (mean ± std over seeds)"),
        ("recall@20", "test Recall@20 (mean ± std over seeds)"),
        ("train_examples_per_second", "training examples/s"))
        if any(m in e for e in entries)]
    if len(panels) < 2:  # no quality metric to show
        return
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    width = max(len([e for e in entries if m in e]) for m, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 1.6 * width * len(panels) / 2), 4),
                             squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        shown = [e for e in entries if metric in e]
        means = [e[metric][0] for e in shown]
        stds = [e[metric][1] for e in shown]
        ax.bar(range(len(shown)), means, yerr=stds, capsize=4, color="#4C72B0")
        ax.set_xticks(range(len(shown)), [f"{e['dataset']}\n{e['model']}" for e in shown],
                      fontsize=8)
        ax.set_title(title)
        if metric != "train_examples_per_second":
            low = min(m - s for m, s in zip(means, stds, strict=True))
            ax.set_ylim(max(0.0, low - 0.02), min(1.0, max(means) + 0.02))
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)
