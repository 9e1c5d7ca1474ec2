"""`autorecsys bench --resume`: the rows already in ``--out`` are kept and only the missing ones
train, for the same config and data; anything else is refused before a row trains."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


def _rows(path) -> list[dict]:
    return json.loads(path.read_text())["results"]


def _config(tmp_path, **train) -> str:
    path = tmp_path / f"c{len(train)}.json"
    path.write_text(json.dumps({"train": {"max_epochs": 2, "batch_size": 512, **train}}))
    return str(path)


def test_resume_trains_only_the_missing_ctr_rows(tmp_path, monkeypatch):
    import benchmarks.bench  # noqa: PLC0415

    out, work, config = tmp_path / "b.json", tmp_path / "w", _config(tmp_path)
    common = ["--datasets", "synthetic", "--work-dir", str(work), "--config", config,
              "--out", str(out)]
    assert main(["bench", "--models", "lr", "--seeds", "1", *common]) == 0
    (first,) = _rows(out)
    trained = []
    real_row = benchmarks.bench.bench_row

    def counting_row(data, model, seed, *args, **kwargs):
        trained.append((model, seed))
        return real_row(data, model, seed, *args, **kwargs)

    monkeypatch.setattr(benchmarks.bench, "bench_row", counting_row)
    assert main(["bench", "--models", "lr,fm", "--seeds", "1,2", "--resume", *common]) == 0
    assert trained == [("fm", 1), ("lr", 2), ("fm", 2)]
    rows = _rows(out)
    assert rows[0] == first  # kept as it was, not retrained
    assert sorted((r["model"], r["seed"]) for r in rows) == [
        ("fm", 1), ("fm", 2), ("lr", 1), ("lr", 2)]
    assert "| synthetic | fm | 2 |" in out.with_suffix(".md").read_text()
    trained.clear()  # everything is there: nothing trains, the report is rewritten
    assert main(["bench", "--models", "lr,fm", "--seeds", "1,2", "--resume", *common]) == 0
    assert trained == [] and _rows(out) == rows


@pytest.mark.parametrize("change, needle", [
    (["--max-epochs", "3"], "different config"),
    (["--data", "OWN", "--label", "label", "--categorical", "c0"], "different data"),
    (["--refit"], "written without --refit"),
])
def test_resume_refuses_another_config_or_data(tmp_path, capsys, change, needle):
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    out = tmp_path / "b.json"  # a report of the default config on named datasets
    out.write_text(json.dumps({"results": [], "serving": [],
                               "config": json.loads(json.dumps(PipelineConfig().to_dict()))}))
    own = tmp_path / "own.csv"
    own.write_text("label,c0\n1,a\n0,b\n")
    change = [str(own) if a == "OWN" else a for a in change]
    datasets = [] if "--data" in change else ["--datasets", "synthetic"]
    before = out.read_text()
    assert main(["bench", *datasets, "--models", "lr", "--resume", *change,
                 "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert out.read_text() == before


def test_resume_of_an_older_report_without_its_config_is_refused(tmp_path, capsys):
    out = tmp_path / "b.json"
    out.write_text(json.dumps({"results": [], "serving": [], "train_config": {}}))
    assert main(["bench", "--datasets", "synthetic", "--models", "lr", "--resume",
                 "--out", str(out)]) == 2
    assert "does not record its config" in capsys.readouterr().err


def test_resume_without_a_report_runs_everything(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--datasets", "synthetic_topk", "--models", "mf", "--seeds", "1",
                 "--resume", "--work-dir", str(tmp_path / "w"), "--out", str(out)]) == 0
    assert [(r["model"], r["seed"]) for r in _rows(out)] == [("mf", 1)]


def test_resume_skips_done_top_k_rows_and_expansion_rows(tmp_path, monkeypatch):
    import benchmarks.topk  # noqa: PLC0415

    out, work = tmp_path / "t.json", tmp_path / "w"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"search_options": {"lambdaopt": {"l2_grid": [0.0, 0.001]}}}))
    common = ["--datasets", "synthetic_topk", "--work-dir", str(work), "--config", str(config),
              "--out", str(out)]
    assert main(["bench", "--models", "mf,mf+l2grid", "--seeds", "1", *common]) == 0
    done = _rows(out)
    assert [r["model"] for r in done] == ["mf", "mf[l2=0]", "mf[l2=0.001]"]
    import benchmarks.topk_lambdaopt  # noqa: PLC0415

    started = []

    def record(*args, **kwargs):
        started.append(args)
        raise AssertionError("a done row ran again")

    for module, name in ((benchmarks.topk, "in_fresh_process"), (benchmarks.topk, "topk_row"),
                         (benchmarks.topk_lambdaopt, "in_fresh_process")):
        monkeypatch.setattr(module, name, record)
    assert main(["bench", "--models", "mf,mf+l2grid", "--seeds", "1", "--resume", *common]) == 0
    assert started == [] and _rows(out) == done
