"""AutoDis (Guo et al., KDD 2021): numerical fields embedded by a learned soft discretisation.

AutoDis has no separate search stage: its meta network and meta-embeddings train end-to-end with
the CTR model (methods.md 8.3). ``search`` therefore only switches every numerical field to the
``"autodis"`` encoding with the configured settings (``search_options["autodis"]``, defaults
``models.architecture.AUTODIS_DEFAULTS``) and records, for the picture, each field's observed
range on a sample of the train split. ``report_trained`` draws what the retrained model learned:
per field, the soft bucket weights ``x^_j^h`` (``models.layers.autodis``) over that range, in
``autodis_buckets.png``.

Options (``search_options["autodis"]``): ``num_meta_embeddings`` (H), ``temperature`` (tau),
``skip_factor`` (alpha), ``aggregation`` (``weighted_average``, ``max_pooling``,
``top_k_sum``), ``top_k`` (K).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from components.features import missing_name, raw_name, scaled_name
from models.architecture import AUTODIS_DEFAULTS, Architecture
from models.search import SearchContext, SearchError

PICTURE = "autodis_buckets.png"
RANGE_SAMPLE = 100_000  # train rows read for the observed value ranges
RANGE_QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
GRID_POINTS = 200


def search(ctx: SearchContext) -> Architecture:
    """The architecture with every numerical field AutoDis-encoded (no search, see above)."""
    from models.layers.autodis import AutoDis  # noqa: PLC0415 (TensorFlow loads on use)

    arch = ctx.arch
    if not arch.numerical:
        raise SearchError("Search method 'autodis' embeds numerical fields, but this data has "
                          "none. Received: numerical=[]")
    unknown = sorted(set(ctx.options) - set(AUTODIS_DEFAULTS))
    if unknown:
        raise SearchError(f"search_options['autodis'] has unknown settings {unknown}; expected "
                          f"some of {sorted(AUTODIS_DEFAULTS)}. Received: {ctx.options}")
    settings = {**AUTODIS_DEFAULTS, **ctx.options}
    AutoDis([1], **settings)  # fails here, naming the bad value, rather than at retrain
    record = {**settings, "note": "end-to-end, no separate search",
              "value_range": _value_ranges(ctx)}
    return dataclasses.replace(
        arch, numeric_encoding={f: "autodis" for f in arch.numerical}, autodis=settings,
        search={**arch.search, "autodis": record})


def _value_ranges(ctx: SearchContext) -> dict[str, dict[str, list[float]]]:
    """Per numerical field, ``RANGE_QUANTILES`` of its model input ``f_z`` and of its clipped
    raw value ``f_raw`` on up to ``RANGE_SAMPLE`` train rows; both are observed values of the same
    rows, so the two lists pair up (``f_z`` is a monotone function of ``f_raw``). Absent values
    (``f_missing``, for ``arch.numeric_missing`` fields) are left out."""
    fields = ctx.arch.numerical
    names = [n for f in fields for n in (scaled_name(f), raw_name(f))]
    names += [missing_name(f) for f in ctx.arch.numeric_missing]
    batches = -(-RANGE_SAMPLE // ctx.batch_size)
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for features, _ in ctx.dataset("train", names, False).take(batches):
        for n in names:
            columns[n].append(np.asarray(features[n]).ravel())
    ranges = {}
    for f in fields:
        z, raw = (np.concatenate(columns[n]) for n in (scaled_name(f), raw_name(f)))
        if f in ctx.arch.numeric_missing:
            present = np.concatenate(columns[missing_name(f)]) == 0
            z, raw = (z, raw) if not present.any() else (z[present], raw[present])
        ranges[f] = {"quantiles": list(RANGE_QUANTILES),
                     "z": [float(v) for v in np.quantile(z, RANGE_QUANTILES, method="nearest")],
                     "raw": [float(v) for v in np.quantile(raw, RANGE_QUANTILES,
                                                           method="nearest")]}
    return ranges


def report_trained(arch: Architecture, model: Any, report_dir: str) -> None:
    """Draws, per AutoDis field, the learned soft bucket weights over its observed range."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    embedding = model.get_layer("field_embedding")
    layer = getattr(embedding, "autodis_layer", None)
    if layer is None:
        return
    fields = embedding.autodis_fields
    ranges = arch.search.get("autodis", {}).get("value_range", {})
    columns = int(np.ceil(np.sqrt(len(fields))))
    rows = int(np.ceil(len(fields) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for j, f in enumerate(fields):
        observed = ranges.get(f, {})
        z_quantiles = observed.get("z", [-3.0, 3.0])
        grid = np.linspace(z_quantiles[0], z_quantiles[-1], GRID_POINTS, dtype=np.float32)
        values = np.zeros((GRID_POINTS, len(fields)), np.float32)
        values[:, j] = grid
        weights = np.asarray(layer.bucket_weights(values))[:, j, :]  # [G, H]
        ax = axes[j // columns][j % columns]
        ax.stackplot(grid, weights.T, linewidth=0)
        ax.set_xlim(grid[0], grid[-1] if grid[-1] > grid[0] else grid[0] + 1)
        ax.set_ylim(0, 1)
        ax.set_title(f, fontsize=9)
        ax.set_xlabel(f"{scaled_name(f)} (robust-scaled)", fontsize=7)
        ax.tick_params(labelsize=7)
        if "raw" in observed:
            top = ax.secondary_xaxis("top")
            top.set_xticks(z_quantiles[1:-1], [f"{v:.3g}" for v in observed["raw"][1:-1]])
            top.tick_params(labelsize=6)
    for k in range(len(fields), rows * columns):
        axes[k // columns][k % columns].axis("off")
    settings = arch.autodis_settings()
    fig.suptitle(f"AutoDis soft bucket weights (H={settings['num_meta_embeddings']}, "
                 f"tau={settings['temperature']}, {settings['aggregation']})\n"
                 f"top axis: raw value at the train q01, q25, q50, q75, q99", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, PICTURE), dpi=110)
    plt.close(fig)
