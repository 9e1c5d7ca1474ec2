"""The CLI's error paths: each names what is wrong, exits non-zero, pushes nothing."""

import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.conftest import REPO_ROOT, run_cli


def test_unknown_dataset_is_named(tmp_path, capsys):
    assert main(["demo", "--dataset", "nope", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown dataset 'nope'" in err and "frappe86k" in err


def test_unknown_model_is_named(tmp_path, capsys):
    assert main(["demo", "--model", "xgboost", "--output-dir", str(tmp_path)]) == 2
    assert "train.model: unknown model 'xgboost'" in capsys.readouterr().err


def test_unknown_bench_model_is_named(tmp_path, capsys):
    code = main(["bench", "--datasets", "synthetic", "--models", "deepfm+magic",
                 "--out", str(tmp_path / "b.json")])
    assert code == 2
    assert "variant 'magic'" in capsys.readouterr().err


def test_run_requires_a_label(tmp_path, capsys):
    assert main(["run", "--data", "x.csv", "--categorical", "a"]) == 2
    assert "--label is required" in capsys.readouterr().err


@pytest.mark.parametrize("body, needle", [
    ("y,a,x\n1,u,1\n0,v,2\n1,w\n", "row 4: has 2 fields"),
    ("y,a,x\n1,u,1\n0,v,abc\n", "row 3: field 'x' is numerical"),
    ("y,a,x\n1,u,1\n0,v,inf\n", "row 3: field 'x'"),
    ("", "empty"),
    ("a,x\nu,1\n", "'y'"),
])
def test_run_on_bad_csv_exits_nonzero_naming_file_and_row_and_pushes_nothing(
        tmp_path, body, needle):
    data = tmp_path / "data.csv"
    data.write_text(body)
    out_dir = tmp_path / "run"
    result = run_cli("run", "--data", str(data), "--label", "y", "--categorical", "a",
                     "--numerical", "x", "--output-dir", str(out_dir))
    assert result.returncode == 2, result.stderr
    assert str(data) in result.stderr
    assert needle in result.stderr
    assert not (out_dir / "serving").exists()
    assert not (out_dir / "summary.json").exists()


def _main_in_fresh_process(argv: list[str]) -> subprocess.CompletedProcess:
    """``pipeline.cli.main(argv)`` in a new interpreter; stdout ends with ``RESULT <exit status>
    <tensorflow imported> <tfx imported>``."""
    code = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            "print('RESULT', rc, 'tensorflow' in sys.modules, 'tfx' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          check=False, cwd=REPO_ROOT,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))


def test_bad_input_is_reported_before_tensorflow_is_imported(tmp_path):
    # The CSV is validated before the pipeline (TFX, TensorFlow: ~25 s of imports) is loaded.
    data = tmp_path / "data.csv"
    data.write_text("y,a,x\n1,u,1\n0,v,nan\n")
    result = _main_in_fresh_process(["run", "--data", str(data), "--label", "y",
                                     "--categorical", "a", "--numerical", "x",
                                     "--output-dir", str(tmp_path / "run")])
    assert "row 3: field 'x'" in result.stderr
    assert "RESULT 2 False False" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("content, needle", [
    ('{"train": {"embedding_dim": "8"}}', "train.embedding_dim must be of type int"),
    ('{"train": 5}', "train must be a mapping"),
    ('{"search_options": {"nis": {"epochz": 1}}}', "search_options.nis: unknown options"),
    (None, "cannot read the config file"),  # a directory
])
def test_bad_config_file_exits_2_naming_the_key_or_file(tmp_path, capsys, content, needle):
    path = tmp_path / "c.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    assert main(["demo", "--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autorecsys: error: ") and needle in err
    assert content is not None or str(path) in err


def test_beam_runner_bad_config_exits_2(tmp_path, capsys):
    import beam_runner  # noqa: PLC0415

    path = tmp_path / "c.json"
    path.write_text('{"train": {"modle": "fm"}}')
    assert beam_runner.main(["--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert "train.modle" in capsys.readouterr().err


def test_topk_model_on_a_ctr_dataset_fails_before_tensorflow_is_imported(tmp_path):
    result = _main_in_fresh_process(["demo", "--model", "mf",
                                     "--output-dir", str(tmp_path / "run")])
    assert "train.model 'mf' is a top-k model; dataset 'synthetic'" in result.stderr
    assert "RESULT 2 False False" in result.stdout, result.stdout + result.stderr


def test_output_dir_that_is_a_file_exits_2(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("")
    assert main(["demo", "--output-dir", str(path)]) == 2
    assert f"output_dir {path}: exists and is not a directory" in capsys.readouterr().err


def test_a_run_that_fails_after_replacing_the_data_leaves_no_old_summary(tmp_path, capsys):
    # output_dir/data now holds this run's data: the last run's summary, naming it, must go.
    (tmp_path / "summary.json").write_text('{"dataset": "synthetic"}')
    config = tmp_path / "c.json"
    config.write_text('{"dataset_options": {"n_rows": 100}}')
    assert main(["demo", "--model", "mf", "--config", str(config),
                 "--output-dir", str(tmp_path)]) == 2
    assert "'mf' is a top-k model" in capsys.readouterr().err
    assert (tmp_path / "data" / "test.csv").exists()
    assert not (tmp_path / "summary.json").exists()
