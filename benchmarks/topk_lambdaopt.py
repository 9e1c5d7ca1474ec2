"""λOpt's top-k bench rows: the fixed-λ MF grid and the two λOpt variants, each measured alone.

``mf+l2grid`` expands into one row per value of ``search_options.lambdaopt.l2_grid`` (model
``mf[l2=VALUE]``, plain ``train_bpr`` with that L2); ``mf+lambdaopt`` into
``mf+lambdaopt[truncated]`` and ``mf+lambdaopt[full]`` (``models.search.lambdaopt``: the jointly
trained model, scored at its best eval epoch; ``Λ``'s picture and ``lambdas.npz`` go to
``<search_dir>/<dataset>-<row>-seed<seed>/``; the pipeline's top-k ``search_strategy: lambdaopt``
trains the same way), plus ``mf+lambdaopt[fixed]``: the configured variant's ``Λ`` of the best
eval epoch, then MF retrained from scratch with that ``Λ`` as a fixed per-id L2
(``search_seconds`` is the first training), the retrain the pipeline does *not* use.

Every row runs in a fresh Python process (``python -m benchmarks.topk_lambdaopt``), so that
``ru_maxrss`` is that row's own peak resident memory. A row records ``peak_rss_mb`` (the process's
peak), ``train_rss_mb`` (the peak minus the peak before the model was built: what training itself
added) and ``seconds_per_epoch``; ``time_vs_mf`` / ``train_rss_vs_mf`` divide them by those of the
grid row with the pipeline's L2 (``config.topk.l2``, plain MF's setting) of the same seed, when the
bench ran it (None otherwise). The data, split and metrics are ``benchmarks.topk``'s.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from typing import Any

from pipeline.configs import PipelineConfig
from pipeline.datasets.base import PreparedDataset

EXPANSIONS = ("mf+l2grid", "mf+lambdaopt")


def grid_name(value: float) -> str:
    return f"mf[l2={value:g}]"


def expand(model: str, config: PipelineConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(row model name, spec)`` pairs of a bench model in ``EXPANSIONS``, or the one row named
    ``model`` (e.g. ``mf+lambdaopt[fixed]``: that row alone).

    >>> [name for name, _ in expand("mf+lambdaopt", PipelineConfig())]
    ['mf+lambdaopt[truncated]', 'mf+lambdaopt[full]', 'mf+lambdaopt[fixed]']
    """
    from models.search.lambdaopt import VARIANTS, settings  # noqa: PLC0415

    values = settings(config.search_options.get("lambdaopt", {}))
    if model not in EXPANSIONS:  # one row of an expansion by its own name
        rows = [row for name in EXPANSIONS for row in expand(name, config) if row[0] == model]
        if rows:
            return rows
    if model == "mf+l2grid":
        return [(grid_name(v), {"kind": "fixed", "l2": v}) for v in values["l2_grid"]]
    if model == "mf+lambdaopt":
        return [*((f"mf+lambdaopt[{variant}]", {"kind": "lambdaopt", "variant": variant})
                  for variant in VARIANTS),
                ("mf+lambdaopt[fixed]", {"kind": "fixed_lambdas", "variant": values["variant"]})]
    raise ValueError(f"Unknown expansion {model!r}; known: {EXPANSIONS}.")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _row(dataset: str, name: str, spec: dict[str, Any], seed: int, config_data: dict,
         data_path: str, report_dir: str | None) -> dict[str, Any]:
    """One row, in the current process (the child), on the prepared dataset at ``data_path``."""
    from components.search import MF_INIT_STD  # noqa: PLC0415
    from components.topk import load_topk, ranked_test_metrics, train_bpr  # noqa: PLC0415
    from components.topk_trainer import mf_schedule  # noqa: PLC0415

    config = PipelineConfig.from_dict(config_data)
    data = load_topk(PreparedDataset.load(data_path))
    mf = config.topk
    step, fit = mf_schedule(config, data)
    common = {"dim": mf.embedding_dim, **step, "seed": seed, **fit}
    before = _rss_mb()
    search: dict[str, Any] = {"strategy": "none"}
    search_seconds = 0.0
    if spec["kind"] == "fixed":
        result, l2 = train_bpr(data, l2=spec["l2"], **common), spec["l2"]
    elif spec["kind"] == "fixed_lambdas":
        from models.search.lambdaopt import fixed_lambdas  # noqa: PLC0415

        options = {**config.search_options.get("lambdaopt", {}), "variant": spec["variant"]}
        start = time.perf_counter()
        lambdas, report = fixed_lambdas(data, init_std=MF_INIT_STD, options=options,
                                        report_dir=report_dir, **common)
        search_seconds = time.perf_counter() - start
        result = train_bpr(data, l2=mf.l2, init_std=MF_INIT_STD, **common,
                           id_l2={key: lam.tolist() for key, lam in lambdas.items()})
        l2, search = None, {"strategy": "lambdaopt", "lambdaopt": report}
    else:
        from models.search.lambdaopt import train_lambdaopt  # noqa: PLC0415

        options = {**config.search_options.get("lambdaopt", {}), "variant": spec["variant"]}
        found = train_lambdaopt(data, init_std=MF_INIT_STD, options=options,
                                report_dir=report_dir, **common)
        result, l2 = found.result, None
        search = {"strategy": "lambdaopt", "lambdaopt": found.report}
    peak = _rss_mb()
    users, items = (t.numpy() for t in result.model.embedding_tables())
    test = ranked_test_metrics(data, users, items)
    epochs = len(result.history)
    return {
        "dataset": dataset, "model": name, "seed": seed,
        **test,
        "val_recall@20": result.best_eval.get("recall@20"),
        "best_epoch": result.best_epoch, "epochs": epochs, "stop_reason": result.stop_reason,
        "embedding_params": result.embedding_params, "total_params": result.embedding_params,
        "search_seconds": search_seconds, "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.train_seconds / max(epochs, 1),
        "batch_size": common["batch_size"],
        "train_examples_per_second": result.examples_per_second,
        "peak_rss_mb": peak, "train_rss_mb": peak - before,
        "architecture": {"model": "mf", "embedding_dim": mf.embedding_dim,
                         "num_users": data.num_users, "num_items": data.num_items,
                         "l2": l2, "search": search, "id_dims": {}},
    }


def is_expansion_row(model: str, config: PipelineConfig) -> bool:
    """Whether ``model`` is ``EXPANSIONS``' name or one of their rows'."""
    try:
        return bool(expand(model, config))
    except ValueError:
        return False


def in_fresh_process(module: str, request: dict[str, Any]) -> dict[str, Any]:
    """``python -m module REQUEST.json ANSWER.json``: the row the child wrote for ``request``.

    A fresh process per row measures the row's own peak memory, and frees what TensorFlow
    never frees in a process: each XLA-compiled MF training step keeps about 440 memory maps
    (its JIT code) until the process exits, so some 150 trainings in one process reach Linux's
    default ``vm.max_map_count`` (65,530) and LLVM fails with "Cannot allocate memory".
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        path, answer = os.path.join(tmp, "request.json"), os.path.join(tmp, "row.json")
        with open(path, "w") as f:
            json.dump(request, f)
        subprocess.run([sys.executable, "-m", module, path, answer], check=True, env=env)
        with open(answer) as f:
            return json.load(f)


def run_rows(dataset: str, model: str, seed: int, config: PipelineConfig, data_path: str,
             search_dir: str | None = None, skip: Collection[tuple[str, str, int]] = ()
             ) -> list[dict[str, Any]]:
    """The rows of one expansion for one seed, each in a fresh ``python -m`` process, on the
    prepared dataset at ``data_path``; ``skip``: ``(dataset, row, seed)`` of rows not to run."""
    return [in_fresh_process("benchmarks.topk_lambdaopt", {
        "dataset": dataset, "name": name, "spec": spec, "seed": seed,
        "config_data": config.to_dict(), "data_path": data_path,
        "report_dir": search_dir and os.path.join(search_dir, f"{dataset}-{name}-seed{seed}")})
        for name, spec in expand(model, config) if (dataset, name, seed) not in skip]


def add_relative_costs(rows: list[dict[str, Any]], config: PipelineConfig) -> None:
    """Sets ``time_vs_mf`` and ``train_rss_vs_mf`` on measured rows (see the module docstring)."""
    reference = {(r["dataset"], r["seed"]): r for r in rows
                 if r["model"] == grid_name(config.topk.l2) and "train_rss_mb" in r}
    for row in rows:
        base = reference.get((row["dataset"], row["seed"]))
        if "train_rss_mb" not in row:
            continue
        row["time_vs_mf"] = (row["seconds_per_epoch"] / base["seconds_per_epoch"]
                             if base else None)
        row["train_rss_vs_mf"] = (row["train_rss_mb"] / base["train_rss_mb"]
                                  if base and base["train_rss_mb"] > 0 else None)


def answer_request(row_fn: Callable[..., dict[str, Any]]) -> None:
    """The child's side of :func:`in_fresh_process`: ``row_fn(**REQUEST)`` into ANSWER, the
    paths given as ``sys.argv[1:3]``."""
    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    with open(sys.argv[1]) as f:
        request = json.load(f)
    row = row_fn(**request)
    with open(sys.argv[2], "w") as f:
        json.dump(row, f)


if __name__ == "__main__":
    answer_request(_row)
