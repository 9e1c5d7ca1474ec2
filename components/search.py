"""The search stage: a TFX component that writes the ``Architecture`` the retrain stage builds.

The architecture travels as a one-file ``HyperParameters`` artifact (``architecture.json``), the
channel a stock Trainer reads into ``fn_args.hyperparameters`` (TFX has no way to wire a custom
artifact into the Trainer). Strategy ``none`` is the fixed baseline architecture; searching
strategies (``models.search``) start from it and read the transformed train and eval splits only,
never test. Their pictures go to a separate ``search_report`` artifact (the Trainer requires the
HyperParameters folder to hold exactly one file).
"""


import json
import os
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import base
from models.architecture import Architecture
from models.search import SearchContext, parse_strategy, run_strategy
from pipeline import storage
from pipeline.configs import PipelineConfig

ARCHITECTURE_FILE = "architecture.json"
# Tuned keys that change the architecture; the rest (learning_rate) are training settings.
ARCHITECTURE_HPARAMS = ("embedding_dim", "dropout", "l2")
MF_INIT_STD = 0.1  # LightGCN's MF baseline: N(0, 0.1^2) for both tables.


def fixed_architecture(config: PipelineConfig, spec: dict, vocab: dict[str, int],
                       tuned: dict | None = None, numeric_missing: list[str] | None = None
                       ) -> Architecture:
    """The ``none`` strategy: the configured model with one embedding size for every field,
    trained with ``config.loss_from``'s loss when set (else logloss). ``numeric_missing``:
    the numerical fields with absent train values (``base.numeric_missing``)."""
    train = config.train.resolved()
    values = {k: getattr(train, k) for k in ARCHITECTURE_HPARAMS}
    values.update({k: v for k, v in (tuned or {}).items() if k in ARCHITECTURE_HPARAMS})
    return Architecture.uniform(
        train.model, spec["categorical"], spec["numerical"], vocab,
        embedding_dim=int(values["embedding_dim"]),
        numeric_encoding={f: train.numeric_encoding for f in spec["numerical"]},
        numeric_missing=list(numeric_missing or []),
        hidden_units=list(train.hidden_units), dropout=float(values["dropout"]),
        l2=float(values["l2"]), net_l2=train.net_l2, batch_norm=train.batch_norm,
        embedding_init_std=train.embedding_init_std,
        cross_layers=train.cross_layers, loss=config.fixed_loss(),
        search={"strategy": "none", "tuned": tuned or {}},
    )


def searched_architecture(config: PipelineConfig, spec: dict, vocab: dict[str, int],
                          dataset: Callable, *, tuned: dict | None = None,
                          counts: dict[str, list[int]] | None = None,
                          report_dir: str | None = None,
                          numeric_missing: list[str] | None = None) -> Architecture:
    """The fixed architecture, then ``config.search_strategy``'s methods in order.

    ``dataset(split, input_names, shuffle)`` gives transformed train/eval batches. The result's
    ``search["seconds"]`` is the time the methods took.
    """
    arch = fixed_architecture(config, spec, vocab, tuned, numeric_missing)
    if not parse_strategy(config.search_strategy):
        return arch
    train = config.train
    learning_rate = float((tuned or {}).get("learning_rate", train.learning_rate))

    def context(current: Architecture, name: str) -> SearchContext:
        return SearchContext(arch=current, dataset=dataset, learning_rate=learning_rate,
                             batch_size=train.batch_size, max_epochs=train.max_epochs,
                             patience=train.patience, seed=train.seed,
                             options=dict(config.search_options.get(name, {})),
                             vocab_counts=counts, report_dir=report_dir)

    start = time.perf_counter()
    arch = run_strategy(config.search_strategy, context, arch)
    arch.search["seconds"] = time.perf_counter() - start
    arch.search.setdefault("tuned", tuned or {})
    return arch


def topk_architecture(config: PipelineConfig, spec: dict, vocab: dict[str, int]) -> Architecture:
    """Top-k datasets (``spec["task"] == "topk"``): MF over the user then the item field, sized
    by Transform's vocabularies, with ``config.topk``'s dim and L2 (``train.model`` is ignored),
    trained with BPR or ``config.loss_from``'s loss."""
    user, item = spec["user"], spec["item"]
    return Architecture.uniform(
        "mf", [user, item], [], {f: vocab[f] for f in (user, item)},
        embedding_dim=config.topk.embedding_dim, l2=config.topk.l2, hidden_units=[],
        embedding_init_std=MF_INIT_STD, loss=config.fixed_loss(),
        search={"strategy": "none", "tuned": {}})


def is_topk(spec: dict) -> bool:
    return spec.get("task", "ctr") == "topk"


def search_payload(arch: Architecture, config: PipelineConfig, tuned: dict | None) -> dict:
    """What the Trainer receives: the architecture plus the training settings."""
    if arch.model == "mf":
        return {"architecture": json.loads(arch.to_json()),
                "training": {"learning_rate": config.topk.learning_rate,
                             "batch_size": config.topk.batch_size}}
    learning_rate = (tuned or {}).get("learning_rate", config.train.learning_rate)
    return {"architecture": json.loads(arch.to_json()),
            "training": {"learning_rate": float(learning_rate)}}


@tfx.dsl.components.component
def ArchitectureSearch(
    transform_graph: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.TransformGraph],
    architecture: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.HyperParameters],
    config_json: tfx.dsl.components.Parameter[str],
    spec_json: tfx.dsl.components.Parameter[str],
    code_version: tfx.dsl.components.Parameter[str],
    search_report: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelRun],
    hyperparameters: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.HyperParameters] = None,
    transformed_examples: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.Examples] = None,
) -> None:
    """Runs the configured search strategy and writes ``architecture.json``; pictures and the
    search's own files go to ``search_report``."""
    del code_version  # part of the cache key only
    config = PipelineConfig.from_dict(json.loads(config_json))
    spec = json.loads(spec_json)
    tuned = None
    if hyperparameters is not None:
        tuned = _read_tuned(hyperparameters.uri)
    tf_transform_output = tft.TFTransformOutput(transform_graph.uri)
    vocab = base.vocab_sizes(tf_transform_output, spec["categorical"])
    with storage.local_dir_for(search_report.uri) as report_dir:
        if is_topk(spec):
            arch = topk_architecture(config, spec, vocab)
            if parse_strategy(config.search_strategy):
                arch = _search_topk(arch, config, transformed_examples, tf_transform_output,
                                    report_dir)
        else:
            if transformed_examples is not None:
                config.train.batch_size = base.train_batch_size(
                    config.train, os.path.join(transformed_examples.uri, "Split-train", "*"))
            dataset = _split_reader(transformed_examples, tf_transform_output, spec["label"],
                                    config)
            arch = searched_architecture(
                config, spec, vocab, dataset, tuned=tuned,
                counts=base.vocab_counts(tf_transform_output, spec["categorical"]),
                report_dir=report_dir,
                numeric_missing=base.numeric_missing(tf_transform_output, spec["numerical"]))
        with open(os.path.join(report_dir, ARCHITECTURE_FILE), "w") as f:
            f.write(arch.to_json())
    storage.write_text(os.path.join(architecture.uri, ARCHITECTURE_FILE),
                       json.dumps(search_payload(arch, config, tuned), indent=2, sort_keys=True))
    architecture.set_string_custom_property("strategy", config.search_strategy)
    architecture.set_int_custom_property("architecture_version", arch.version)


def _search_topk(arch: Architecture, config: PipelineConfig, examples, tf_transform_output,
                 report_dir: str) -> Architecture:
    """A top-k strategy (``models.search.topk``) on Transform's train and eval id pairs: ESAPN's
    per-id sizes (per ``TopkData`` row, spread over Transform ids; ids absent from train keep the
    smallest size), AutoLossGen's pointwise loss (``arch.loss``) or λOpt's joint training
    settings (``arch.lambdaopt``; nothing to read or train here)."""
    import dataclasses  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from components.topk import topk_data_from_interactions  # noqa: PLC0415
    from components.topk_trainer import mf_schedule, read_id_pairs  # noqa: PLC0415
    from models.search import SearchError  # noqa: PLC0415
    from models.search.topk import TOPK_STRATEGIES, search_topk  # noqa: PLC0415

    method = config.search_strategy
    if method == "lambdaopt":  # settings only: the retrain learns Λ (models.search.topk)
        found = search_topk(method, None, settings={}, fit={},
                            options=config.search_options.get(method, {}), report_dir=report_dir)
        return dataclasses.replace(arch, lambdaopt=found.lambdaopt, search={
            "strategy": method, method: found.report, "tuned": {}, "seconds": 0.0})
    if method not in TOPK_STRATEGIES:
        raise SearchError(f"Top-k datasets support the search strategies {TOPK_STRATEGIES} "
                          f"(one at a time). Received: {method!r}")
    if examples is None:
        raise SearchError(f"{method} needs the transformed examples wired into "
                          f"ArchitectureSearch.")
    user, item = arch.categorical
    train, eval_ = (read_id_pairs(os.path.join(examples.uri, f"Split-{split}", "*"),
                                  tf_transform_output, user, item) for split in ("train", "eval"))
    empty = np.zeros(0, np.int64)
    data = topk_data_from_interactions(train, eval_, (empty, empty))
    start = time.perf_counter()
    step, fit = mf_schedule(config, data)
    settings = {"dim": arch.embedding_dims[user], "l2": arch.l2, **step,
                "init_std": arch.embedding_init_std, "seed": config.train.seed}
    found = search_topk(method, data, settings=settings, fit=fit,
                        options=config.search_options.get(method, {}), report_dir=report_dir)

    changes: dict[str, Any] = {"loss": found.loss} if method == "autolossgen" else {}
    if found.id_dims is not None:
        smallest = found.report["settings"]["candidate_dims"][0]
        changes["id_dims"] = {}
        for key, field, ids in (("user", user, data.user_ids), ("item", item, data.item_ids)):
            sizes = np.full(arch.vocab_sizes[field], smallest, np.int64)
            sizes[ids.astype(np.int64)] = found.id_dims[key]
            changes["id_dims"][field] = sizes.tolist()
    return dataclasses.replace(arch, **changes, search={
        "strategy": method, method: found.report, "tuned": {},
        "seconds": time.perf_counter() - start})


def _split_reader(examples, tf_transform_output, label: str, config: PipelineConfig) -> Callable:
    """``dataset(split, input_names, shuffle)`` over the transformed ``train``/``eval`` splits."""

    def dataset(split: str, input_names: list[str], shuffle: bool):
        if split not in ("train", "eval"):
            raise ValueError(f"A search reads the train and eval splits only. Received: {split!r}")
        if examples is None:
            raise ValueError(f"Search strategy {config.search_strategy!r} needs the transformed "
                             f"examples wired into ArchitectureSearch.")
        pattern = os.path.join(examples.uri, f"Split-{split}", "*")
        return base.make_dataset(pattern, tf_transform_output, label, config.train.batch_size,
                                 shuffle=shuffle, seed=config.train.seed,
                                 input_names=input_names)

    return dataset


def _read_tuned(uri: str) -> dict:
    """keras-tuner's best hyper-parameters (the Tuner writes ``get_config()`` of them)."""
    files = sorted(f.rstrip("/") for f in tf.io.gfile.listdir(uri))
    config = json.loads(storage.read_text(os.path.join(uri, files[0])))
    return dict(config.get("values", config))
