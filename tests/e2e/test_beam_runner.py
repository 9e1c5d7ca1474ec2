"""beam_runner.py: the same pipeline under TFX's BeamDagRunner, components on multi-process Beam."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_beam_dag_runner_with_multiprocess_direct_runner(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "dataset": "synthetic", "dataset_options": {"n_rows": 2000}, "min_eval_auc": 0.5,
        "train": {"max_epochs": 2, "batch_size": 256, "hidden_units": [16],
                  "learning_rate": 0.005},
    }))
    out = tmp_path / "run"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "beam_runner.py"), "--config", str(config),
         "--runner", "direct-multiprocess", "--output-dir", str(out)],
        capture_output=True, text=True, env=env, check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "direct_running_mode=multi_processing" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert os.path.exists(os.path.join(summary["pushed_model_dir"], "saved_model.pb"))
    assert 0.0 < summary["metrics"]["test_auc"] <= 1.0
