"""`autorecsys run --user --item` on an interaction log: the top-k pipeline end to end.

The log is the embedded synthetic_topk data with renamed columns, a timestamp, a label and some
label-0 rows (dropped). The run splits it per user, trains MF-BPR with the shipped settings,
pushes, its test Recall@20 beats a popularity ranking of the same split, and `autorecsys
predict` reads the log's own user column.
"""

import csv
import json
import os
from collections import Counter

import pytest

from pipeline.datasets import prepare_dataset
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


def _popularity_recall(directory: str, k: int = 20) -> float:
    def pairs(split):
        with open(os.path.join(directory, f"{split}.csv")) as f:
            return [(r["uid"], r["iid"]) for r in csv.DictReader(f)]

    train, test = pairs("train"), pairs("test")
    ranking = [i for i, _ in Counter(i for _, i in train).most_common()]
    seen, held = {}, {}
    for u, i in train:
        seen.setdefault(u, set()).add(i)
    for u, i in test:
        held.setdefault(u, set()).add(i)
    recalls = []
    for u, items in held.items():
        top = [i for i in ranking if i not in seen.get(u, ())][:k]
        recalls.append(len(items.intersection(top)) / len(items))
    return sum(recalls) / len(recalls)


def test_interaction_log_runs_pushes_and_beats_popularity(tmp_path):
    source = prepare_dataset("synthetic_topk", str(tmp_path / "source"))
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["ts", "uid", "iid", "clicked"])
        n = 0
        for split in ("train", "eval", "test"):
            with open(os.path.join(source.directory, f"{split}.csv")) as f:
                for row in csv.DictReader(f):
                    writer.writerow([n, row["user"], row["item"], 1])
                    if n % 10 == 0:
                        writer.writerow([n, row["user"], "i-never-clicked", 0])
                    n += 1
    run_dir = tmp_path / "run"
    result = run_cli("run", "--data", str(log), "--user", "uid", "--item", "iid", "--label",
                     "clicked", "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["dataset"] == "csv" and summary["architecture"]["model"] == "mf"
    assert os.path.exists(os.path.join(summary["pushed_model_dir"], "saved_model.pb"))
    data_dir = os.path.dirname(summary["raw_test_file"])
    with open(os.path.join(data_dir, "train.csv")) as f:
        train = [(r["uid"], r["iid"]) for r in csv.DictReader(f)]
    items = {i for _, i in train}
    assert "i-never-clicked" not in items  # label-0 rows are not interactions
    popularity = _popularity_recall(data_dir)
    assert summary["metrics"]["test_users"] == 300
    assert summary["metrics"]["test_recall@20"] > popularity + 0.05, (summary["metrics"],
                                                                      popularity)
    users = tmp_path / "users.csv"
    users.write_text("uid\nu0\nu1\n")
    out = run_cli("predict", "--model-dir", summary["pushed_model_dir"], "--input", str(users))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = list(csv.reader(out.stdout.strip().splitlines()))
    assert lines[0] == ["uid", "items"] and [line[0] for line in lines[1:]] == ["u0", "u1"]
    for user, top in lines[1:]:
        assert len(top.split()) == 20 and not {(user, i) for i in top.split()} & set(train)
