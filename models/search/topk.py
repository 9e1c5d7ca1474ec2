"""The top-k search stage's dispatch, shared by the pipeline and the bench.

A top-k search runs on ``components.topk.TopkData`` (train pairs, eval split for early stopping
and rewards; never test) and returns what it found per ``TopkData`` row; the pipeline
(``components.search``) spreads that over Transform ids into the ``Architecture``, and the bench
(``benchmarks.topk``) passes it straight to ``train_bpr``. The strategies:

- ``esapn``: per-id embedding sizes (``id_dims``), ``models.search.esapn.search_topk``;
- ``autolossgen``: a pointwise loss (``loss``), ``models.search.autolossgen.search_topk``;
- ``lambdaopt``: nothing is trained here: ``Λ`` is learned jointly with the model, so the
  strategy returns the validated settings of that joint training (``lambdaopt``,
  ``models.search.lambdaopt.joint_training_settings``) and the retrain runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.search import SearchError

TOPK_STRATEGIES = ("esapn", "autolossgen", "lambdaopt")


@dataclass
class TopkFound:
    """A top-k search's result: ``report`` (for ``arch.search[method]``) and one of ``id_dims``
    (``"user"``/``"item"``: one size per ``TopkData`` row), ``loss`` (a loss spec, None when
    AutoLossGen found no valid candidate) or ``lambdaopt`` (joint training settings)."""

    report: dict[str, Any]
    id_dims: dict[str, np.ndarray] | None = None
    loss: dict | None = None
    lambdaopt: dict[str, Any] | None = None


def search_topk(method: str, data: Any, *, settings: dict[str, Any], fit: dict[str, int],
                options: dict[str, Any] | None, report_dir: str | None) -> TopkFound:
    """Runs ``method`` on ``data``.

    Args:
      method: one of ``TOPK_STRATEGIES``.
      data: a ``components.topk.TopkData``.
      settings: MF's ``dim``, ``learning_rate``, ``batch_size``, ``l2``, ``init_std``, ``seed``.
      fit: the retrain's early stopping (``max_epochs``, ``patience``, ``eval_every``,
        ``min_epochs``);
        AutoLossGen's finalists, ESAPN's episodes and λOpt's joint training use it.
      options: ``search_options[method]``.
      report_dir: where pictures go, or None.

    Raises:
      SearchError: an unknown method.
    """
    if method not in TOPK_STRATEGIES:
        raise SearchError(f"Top-k datasets support the search strategies {TOPK_STRATEGIES} "
                          f"(one at a time). Received: {method!r}")
    common = {**settings, "options": dict(options or {}), "report_dir": report_dir}
    if method == "esapn":
        from models.search.esapn import search_topk as esapn  # noqa: PLC0415

        found = esapn(data, **common, **fit)
        return TopkFound(report=found["report"], id_dims={
            key: np.asarray(dims, np.int64) for key, dims in found["id_dims"].items()})
    if method == "autolossgen":
        from models.search.autolossgen import search_topk as autolossgen  # noqa: PLC0415

        loss, report = autolossgen(data, **common, **fit)
        return TopkFound(report=report, loss=loss)
    from models.search.lambdaopt import joint_training_settings  # noqa: PLC0415

    values = joint_training_settings(options)
    return TopkFound(report={"settings": values, "trained_in": "retrain"}, lambdaopt=values)
