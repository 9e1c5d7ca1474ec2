"""The TFX pipeline on a CSV whose optional numerical column has empty cells.

SchemaGen infers the column as optional, ExampleValidator passes, Transform writes ``x_missing``
and lists ``x`` as a field with absent values, the model gets a learned missing-value embedding,
and the pushed model and ``autorecsys predict`` score rows whose ``x`` is empty.
"""

import csv
import json
import os

import numpy as np
import pytest

from pipeline.configs import PipelineConfig
from pipeline.run import run
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e


def _write_csv(path: str, rows: int = 2000, seed: int = 0) -> None:
    """``x`` drives the label where present; where it is absent (20 %) the click rate is high,
    so the missing-value embedding has something to learn."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["y", "u", "x"])
        for _ in range(rows):
            absent = rng.random() < 0.2
            x = rng.normal()
            p = 0.8 if absent else 1 / (1 + np.exp(-2 * x))
            writer.writerow([int(rng.random() < p), f"u{rng.integers(20)}",
                             "" if absent else f"{x:.4f}"])


@pytest.fixture(scope="module")
def missing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing")
    data = str(root / "clicks.csv")
    _write_csv(data)
    config = PipelineConfig.from_dict({
        "output_dir": str(root / "run"), "dataset": "csv", "min_eval_auc": 0.5,
        "dataset_options": {"data": data, "label": "y", "categorical": ["u"],
                            "numerical": ["x"], "optional_numerical": ["x"]},
        "tuner": {"enabled": False},
        "train": {"model": "deepfm", "max_epochs": 3, "batch_size": 128,
                  "hidden_units": [16], "learning_rate": 0.01},
    })
    return run(config)


def test_the_model_learned_a_missing_value_embedding_and_was_pushed(missing_run):
    assert missing_run["architecture"]["numeric_missing"] == ["x"]
    assert os.path.exists(os.path.join(missing_run["pushed_model_dir"], "saved_model.pb"))
    assert missing_run["metrics"]["test_auc"] > 0.7
    with open(os.path.join(missing_run["pushed_model_dir"], "assets.extra",
                           "raw_features.json")) as f:
        assert json.load(f)["optional_numerical"] == ["x"]


def test_predict_scores_rows_with_an_empty_cell(missing_run, tmp_path):
    with open(missing_run["raw_test_file"]) as f:
        rows = list(csv.DictReader(f))
    assert any(r["x"] == "" for r in rows)
    out = run_cli("predict", "--model-dir", missing_run["pushed_model_dir"],
                  "--input", missing_run["raw_test_file"])
    assert out.returncode == 0, out.stderr
    scores = [float(v) for v in out.stdout.split()[1:]]
    assert len(scores) == len(rows) and all(0.0 < p < 1.0 for p in scores)
    absent = [p for p, r in zip(scores, rows, strict=True) if r["x"] == ""]
    present = [p for p, r in zip(scores, rows, strict=True) if r["x"] != ""]
    # The absent rows' planted click rate (0.8) is above the present rows' mean (0.5).
    assert np.mean(absent) > np.mean(present)
