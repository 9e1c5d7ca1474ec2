"""What a run publishes, and when: this run's pushed model and report, or nothing.

The MLMD lookups run on a hand-made store; ``run()`` runs with the TFX pipeline replaced.
"""

import json
import os
import time

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd
from tfx.orchestration import metadata

from pipeline import run as run_module
from pipeline.configs import PipelineConfig
from pipeline.datasets.base import DatasetError
from pipeline.run import NotPushedError, collect_search_report, pushed_model_dir


def _store(path: str) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(path))


def _execute(store, outputs, state=mlmd.Execution.COMPLETE) -> list[int]:
    """Records one execution that output ``outputs``: new ``(type, uri, properties)`` triples,
    or the ids of existing artifacts (what a cached execution outputs). Returns their ids."""
    artifacts = []
    for out in outputs:
        if isinstance(out, int):
            artifacts.append(store.get_artifacts_by_id([out])[0])
            continue
        type_name, uri, properties = out
        artifact = mlmd.Artifact(type_id=store.put_artifact_type(mlmd.ArtifactType(
            name=type_name)), uri=uri, state=mlmd.Artifact.LIVE)
        for key, value in properties.items():
            field = "int_value" if isinstance(value, int) else "string_value"
            setattr(artifact.custom_properties[key], field, value)
        artifacts.append(artifact)
    execution = mlmd.Execution(type_id=store.put_execution_type(mlmd.ExecutionType(name="Node")),
                               last_known_state=state)
    event = mlmd.Event(type=mlmd.Event.OUTPUT)
    _, ids, _ = store.put_execution(execution, [(a, event) for a in artifacts], [])
    time.sleep(0.01)  # MLMD times are in milliseconds
    return ids


def _now_ms() -> int:
    now = int(time.time() * 1000)
    time.sleep(0.01)
    return now


def _push(dest: str, blessed: int = 1) -> list:
    return [("PushedModel", f"/p/Pusher/{dest}", {"pushed": blessed, "pushed_destination": dest}),
            ("ModelBlessing", f"/p/Evaluator/{dest}", {"blessed": blessed})]


def test_a_cached_pusher_reports_the_push_it_reuses(tmp_path):
    # Runs A and B pushed; run C, with A's config again, reuses A's Pusher from the cache.
    path = str(tmp_path / "m.sqlite")
    store = _store(path)
    run_a = _execute(store, _push("serving/1"))
    _execute(store, _push("serving/2"))
    since = _now_ms()
    with pytest.raises(NotPushedError, match="did not run in this invocation"):
        pushed_model_dir(path, since)
    _execute(store, run_a, state=mlmd.Execution.CACHED)
    assert pushed_model_dir(path, since) == "serving/1"


def test_a_model_not_blessed_in_this_run_is_not_reported_as_pushed(tmp_path):
    path = str(tmp_path / "m.sqlite")
    store = _store(path)
    _execute(store, _push("serving/1"))
    since = _now_ms()
    _execute(store, _push("", blessed=0))
    with pytest.raises(NotPushedError, match="not blessed"):
        pushed_model_dir(path, since)


def test_search_report_is_this_runs_even_when_its_search_was_cached(tmp_path):
    path = str(tmp_path / "m.sqlite")
    store = _store(path)
    sources = []
    for name in ("a", "b"):
        source = tmp_path / "pipeline" / "ArchitectureSearch" / "search_report" / name
        source.mkdir(parents=True)
        (source / f"{name}.json").write_text("{}")
        sources.append(_execute(store, [("ModelRun", str(source), {})]))
    since = _now_ms()
    _execute(store, sources[0], state=mlmd.Execution.CACHED)
    out = tmp_path / "search"
    assert collect_search_report(path, str(out), since) == [str(out / "a.json")]


@pytest.fixture
def fake_pipeline(monkeypatch):
    """``run()`` with the TFX pipeline and the scoring replaced; returns the pipelines run.
    A test sets ``pipelines.fail`` to an exception the pipeline raises."""

    class Pipelines(list):
        fail = None

    pipelines = Pipelines()

    class Runner:
        def run(self, pipeline):
            pipelines.append(pipeline)
            if pipelines.fail is not None:
                raise pipelines.fail

    monkeypatch.setattr(run_module.tfx.orchestration, "LocalDagRunner", Runner)
    monkeypatch.setattr(run_module, "pushed_model_dir", lambda *_: "/serving/1")
    monkeypatch.setattr(run_module, "score_test_split", lambda *_: {"test_auc": 0.75})
    monkeypatch.setattr(run_module, "architecture_of", lambda _: {"model": "fm"})
    monkeypatch.setattr(run_module, "collect_search_report", lambda *_: [])
    return pipelines


def _config(output_dir, dataset="synthetic", seed=2021, **options) -> PipelineConfig:
    return PipelineConfig.from_dict({"output_dir": str(output_dir), "dataset": dataset,
                                     "seed": seed, "dataset_options": options or {"n_rows": 300},
                                     "tuner": {"enabled": False}})


def test_summary_names_this_runs_model_and_is_written_whole(tmp_path, fake_pipeline):
    summary = run_module.run(_config(tmp_path))
    assert os.listdir(tmp_path).count("summary.json") == 1
    assert "summary.json.partial" not in os.listdir(tmp_path)
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert summary["pushed_model_dir"] == "/serving/1"


def test_a_failed_run_leaves_no_report_of_the_last_one(tmp_path, fake_pipeline):
    (tmp_path / "summary.json").write_text('{"pushed_model_dir": "/serving/0"}')
    (tmp_path / "summary.json.partial").write_text("{")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "gates.png").write_bytes(b"")
    fake_pipeline.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run_module.run(_config(tmp_path))
    assert not {"summary.json", "summary.json.partial", "search"} & set(os.listdir(tmp_path))


def test_runs_on_other_data_get_their_own_pipeline_context(tmp_path, fake_pipeline):
    # The Evaluator's baseline is the latest blessed model of the pipeline's MLMD context: a
    # model of other data (other features, or rows now in eval) must never be it.
    for config in (_config(tmp_path), _config(tmp_path),
                   _config(tmp_path, seed=7),
                   _config(tmp_path, "synthetic_topk", n_users=20, n_items=80)):
        run_module.run(config)
    names = [p.pipeline_name for p in fake_pipeline]
    assert all(name.startswith("autorecsys-") for name in names)
    assert names[0] == names[1] and len(set(names)) == 3


def test_a_split_of_one_label_fails_before_anything_is_pushed(tmp_path, fake_pipeline):
    # 20 rows, seed 2021: the test split's two rows are both label 0, so AUC is undefined.
    with pytest.raises(DatasetError, match=r"test\.csv: the test split holds only label 0"):
        run_module.run(_config(tmp_path, n_rows=20))
    assert not fake_pipeline
    assert "summary.json" not in os.listdir(tmp_path)
