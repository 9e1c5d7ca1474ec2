"""Shared by the slow search tests: run a bench model's search on the planted synthetic data."""

from __future__ import annotations

from typing import Any


def search_synthetic(tmp_path: Any, model_name: str, seed: int = 2021,
                     options: dict[str, dict[str, Any]] | None = None) -> tuple[Any, Any]:
    """Prepares ``synthetic`` under ``tmp_path/work`` and runs bench model ``model_name``'s
    search (train and eval splits only; pictures in ``tmp_path/report``).

    Returns ``(architecture, bench data)``; the data's ``dataset.metadata["ground_truth"]``
    holds the planted structure.
    """
    from benchmarks.bench import parse_model  # noqa: PLC0415 (loads Beam and TFT)
    from benchmarks.data import prepare_bench_data, transformed_dataset  # noqa: PLC0415
    from components import base  # noqa: PLC0415
    from components.search import searched_architecture  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    data = prepare_bench_data("synthetic", str(tmp_path / "work"), None, seed)
    config = parse_model(model_name, PipelineConfig())
    config.seed = config.train.seed = seed
    config.search_options = dict(options or {})
    config.train.batch_size = base.train_batch_size(config.train, data.split_files("train"),
                                                    compression_type="")  # as the bench does

    def dataset(split: str, names: list[str], shuffle: bool):
        return transformed_dataset(data, split, names, config.train.batch_size,
                                   shuffle=shuffle, seed=seed)

    categorical = data.spec["categorical"]
    arch = searched_architecture(config, data.spec, base.vocab_sizes(data.transform_output,
                                                                     categorical), dataset,
                                 counts=base.vocab_counts(data.transform_output, categorical),
                                 report_dir=str(tmp_path / "report"))
    return arch, data
