"""A searching pipeline on tiny synthetic data: ArchitectureSearch runs AutoDis then AutoFIS.

Asserts that the searched Architecture reaches the pushed SavedModel (retrained from it alone),
that the search report (pictures and the architecture) lands in the run's ``search/`` folder,
and that the model serves raw tf.Examples like the baseline.
"""

import json
import os

import numpy as np
import pytest

from pipeline import metrics
from pipeline.configs import PipelineConfig
from pipeline.predict import score_csv
from pipeline.run import run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("search") / "run")
    config = PipelineConfig.from_dict({
        "output_dir": output_dir,
        "dataset": "synthetic",
        "dataset_options": {"n_rows": 4000},
        "min_eval_auc": 0.5,
        "search_strategy": "autodis+autofis",
        "train": {"model": "deepfm", "max_epochs": 3, "batch_size": 256,
                  "hidden_units": [32, 32], "learning_rate": 0.005},
    })
    return output_dir, run(config)


def test_searched_architecture_is_what_was_pushed(search_run):
    output_dir, summary = search_run
    arch = summary["architecture"]
    assert arch["search"]["strategy"] == "autodis+autofis"
    assert {"autodis", "autofis"} <= set(arch["search"])
    assert set(arch["numeric_encoding"].values()) == {"autodis"}
    assert arch["gated_interactions"] is True
    assert arch["kept_interactions"] is not None
    with open(os.path.join(output_dir, "search", "architecture.json")) as f:
        assert json.load(f) == arch


def test_search_pictures_are_in_the_run_folder(search_run):
    output_dir, summary = search_run
    names = {os.path.basename(p) for p in summary["search_report"]}
    assert {"architecture.json", "autofis_gates.png", "autodis_buckets.png"} <= names
    for path in summary["search_report"]:
        assert os.path.getsize(path) > 0


def test_searched_model_serves_raw_examples(search_run):
    _, summary = search_run
    scores, labels = score_csv(summary["pushed_model_dir"], summary["raw_test_file"])
    assert labels is not None and scores.shape == labels.shape
    assert np.all((scores > 0) & (scores < 1))
    assert metrics.roc_auc(labels, scores) == pytest.approx(summary["metrics"]["test_auc"])
    assert summary["metrics"]["test_auc"] > 0.6
