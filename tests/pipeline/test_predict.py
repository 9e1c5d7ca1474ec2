"""``pipeline.predict``: batching, example building, and its errors and top-k output on a small
stand-in SavedModel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.base import ASSETS_EXTRA, RAW_FEATURES_ASSET
from pipeline import predict
from pipeline.datasets.base import DatasetError, FeatureSpec
from tests.conftest import REPO_ROOT

SPEC = FeatureSpec(label="y", categorical=("user",), numerical=("price",))


def test_csv_examples_drop_the_label_and_collect_it(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("y,user,price\n1,a,2.5\n0,b,1.0\n")
    labels: list[int] = []
    examples = [tf.train.Example.FromString(e)
                for e in predict.csv_examples(str(path), SPEC, labels)]
    assert labels == [1, 0]
    assert [sorted(e.features.feature) for e in examples] == [["price", "user"]] * 2
    assert examples[1].features.feature["user"].bytes_list.value == [b"b"]


def test_serve_in_batches_keeps_order_across_batches(monkeypatch):
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    calls = []

    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        calls.append(int(examples.shape[0]))
        return {"out": tf.strings.to_number(examples)}

    out = np.concatenate([out for (out,) in predict.serve_in_batches(
        serve, (str(i).encode() for i in range(7)), "out")])
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(out, np.arange(7, dtype=np.float32))


def _write_raw_features(model_dir, text: str) -> None:
    assets = model_dir / ASSETS_EXTRA
    assets.mkdir(parents=True)
    (assets / RAW_FEATURES_ASSET).write_text(text)


@pytest.mark.parametrize("text", ['{"label": ', '{"categorical": []}', "[]"])
def test_an_unreadable_raw_feature_declaration_is_a_named_error(tmp_path, text):
    _write_raw_features(tmp_path / "model", text)
    with pytest.raises(DatasetError, match=f"{RAW_FEATURES_ASSET}.*not a raw feature"):
        predict.load_raw_spec(str(tmp_path / "model"))


def test_a_model_dir_without_a_savedmodel_is_a_named_error(tmp_path):
    _write_raw_features(tmp_path / "model", json.dumps(
        {"label": "y", "categorical": ["user"], "numerical": ["price"]}))
    rows = tmp_path / "rows.csv"
    rows.write_text("user,price\na,1.0\n")
    with pytest.raises(DatasetError, match="model: cannot load the SavedModel"):
        predict.score_csv(str(tmp_path / "model"), str(rows))


class _FakeTopk(tf.Module):
    """A top-k export's contract: the items a~c for every user, those the user has seen
    (user ``seen`` has seen b and c) scored -inf, as ``TopkServingModule`` does."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        users = tf.io.parse_example(examples, {"user": tf.io.FixedLenFeature([], tf.string)})
        rows = tf.shape(users["user"])[0]
        hidden = tf.equal(users["user"], "seen")[:, None] & tf.constant([[False, True, True]])
        scores = tf.where(hidden, -np.inf, tf.constant([[3.0, 2.0, 1.0]]))
        return {"items": tf.tile(tf.constant([[b"a", b"b", b"c"]]), [rows, 1]),
                "scores": scores}


@pytest.fixture(scope="module")
def topk_model(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("topk") / "model"
    module = _FakeTopk()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": module.serve})
    (model_dir / ASSETS_EXTRA).mkdir()
    (model_dir / ASSETS_EXTRA / RAW_FEATURES_ASSET).write_text(json.dumps(
        {"label": "label", "categorical": ["user", "item"], "numerical": [], "task": "topk",
         "user": "user", "item": "item", "k": 3}))
    return str(model_dir)


def test_topk_predict_reads_only_the_user_column(topk_model, tmp_path):
    # A label column (ratings, or empty cells) is ignored, as are the other columns.
    rows = tmp_path / "rows.csv"
    rows.write_text("label,user,item\n5,u1,x\n,u2,\n")
    users, items = predict.recommend_csv(topk_model, str(rows))
    assert users == ["u1", "u2"] and items == [["a", "b", "c"]] * 2


def test_topk_predict_never_returns_items_the_model_hides(topk_model, tmp_path):
    # With fewer unseen items than k, top_k fills the row with seen items scored -inf.
    rows = tmp_path / "rows.csv"
    rows.write_text("user\nseen\nu1\n")
    assert predict.recommend_csv(topk_model, str(rows))[1] == [["a"], ["a", "b", "c"]]


def test_predict_into_a_closed_pipe_exits_without_a_traceback(topk_model, tmp_path):
    # `autorecsys predict ... | head -1`: the reader leaves before predict has written.
    rows = tmp_path / "rows.csv"
    rows.write_text("user\n" + "".join(f"u{i}\n" for i in range(5000)))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "predict", "--model-dir",
                             topk_model, "--input", str(rows)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr[-2000:]
