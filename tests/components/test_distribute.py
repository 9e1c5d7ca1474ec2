"""The Trainer's multi-device path: every CTR family, with each searched part, trains and saves
under ``MirroredStrategy``.

On a GPU machine ``choose_strategy`` mirrors the model over the visible GPUs. Our machines have
none, so the test splits the CPU into two logical devices and mirrors over those: the same
``tf.distribute`` code path (variables created in the strategy's scope, per-replica batches,
cross-replica reductions of gradients, metrics and batch-norm updates). It runs in a fresh
process, because logical devices must be configured before TensorFlow first touches the CPU.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = r"""
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from components.base import train_model
from models.architecture import Architecture
from models.losses import formula
from models.zoo import build_ctr_model, model_input_names

VOCAB = {"user": 20, "item": 10}
LOGLOSS_DAG = formula.validate({"kind": "autolossgen", "clamp": None, "nodes": [
    {"op": op, "inputs": inputs} for op, inputs in [
        ("negate", [0]), ("add", [2, 3]), ("log", [0]), ("log", [4]), ("multiply", [1, 5]),
        ("negate", [1]), ("add", [2, 8]), ("multiply", [9, 6]), ("add", [7, 10]),
        ("negate", [11])]]})
SEARCHED = {
    "deepfm+autodis": ("deepfm", {"numeric_encoding": {"age": "autodis", "price": "bucket"},
                                  "autodis": {"num_meta_embeddings": 4},
                                  "numeric_missing": ["price"]}),
    "fm+autofis": ("fm", {"kept_interactions": [["user", "item"], ["user", "age"]],
                          "gated_interactions": True}),
    "deepfm+nis": ("deepfm", {"embedding_blocks": {"user": [[10, 4], [10, 2]],
                                                   "item": [[10, 4]]}}),
    "deepfm+autodim": ("deepfm", {"embedding_dims": {"user": 2, "item": 8, "age": 4,
                                                     "price": 4}, "unified_dim": 6}),
    "deepfm+esapn": ("deepfm", {"id_dims": {"user": [2] * 10 + [4] * 10}}),
    "dcn": ("dcn", {}),
    "autogroup": ("autogroup", {"feature_groups": {"1": [["user"], ["item", "age", "price"]],
                                                   "2": [["user", "item", "price"]]},
                                "group_dims": {"1": 4, "2": 3}}),
    "autoctr": ("autoctr", {"autoctr": {"blocks": [
        {"type": "mlp", "inputs": ["sparse", "dense"], "units": [4]},
        {"type": "fm", "inputs": ["sparse", 0], "output": "scalar"},
        {"type": "dot", "inputs": ["sparse"]}]}}),
    "deepfm+autolossgen": ("deepfm", {"loss": LOGLOSS_DAG}),
}


def features(n, seed):
    rng = np.random.default_rng(seed)
    x = {"user_id": rng.integers(0, 20, n), "item_id": rng.integers(0, 10, n)}
    for f in ("age", "price"):
        x[f + "_z"] = rng.normal(size=n).astype("float32")
        x[f + "_raw"] = x[f + "_z"]
        x[f + "_bucket"] = rng.integers(0, 5, n)
        x[f + "_missing"] = (rng.random(n) < 0.2).astype("float32")
    logit = np.where(x["user_id"] % 2 == x["item_id"] % 2, 1.5, -1.5) + x["age_z"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32").reshape(-1, 1)
    return x, y


def dataset(arch, seed):
    x, y = features(1024, seed)
    x = {k: v for k, v in x.items() if k in model_input_names(arch)}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(128)


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {"replicas": strategy.num_replicas_in_sync, "rows": {}}
for name, (model, kwargs) in SEARCHED.items():
    kwargs = {"hidden_units": [8], "cross_layers": 2, "num_buckets": 5, **kwargs}
    dims = kwargs.pop("embedding_dims", {})
    arch = Architecture.uniform(model, ["user", "item"], ["age", "price"], VOCAB,
                                embedding_dim=4, **kwargs)
    arch.embedding_dims.update(dims)
    result = train_model(arch, dataset(arch, 0), dataset(arch, 1), learning_rate=0.01,
                         max_epochs=3, patience=3, seed=1, strategy=strategy)
    m = result.model
    mirrored = all(isinstance(v, tf.distribute.DistributedValues) for v in m.trainable_variables)
    x, _ = features(64, 2)
    inputs = {k: v for k, v in x.items() if k in model_input_names(arch)}
    expected = m(inputs, training=False).numpy()
    path = os.path.join(sys.argv[1], name)
    m.save(path, save_format="tf")
    # Loaded outside the strategy, as TF Serving and `autorecsys predict` load it.
    with tf.distribute.get_strategy().scope():
        served = tf.saved_model.load(path).signatures["serving_default"]
    got = served(**{k: tf.constant(v) for k, v in inputs.items()})["probability"].numpy()
    out["rows"][name] = {"mirrored": mirrored, "val_auc": result.history["val_auc"],
                         "loss": result.history["loss"],
                         "max_serving_diff": float(np.abs(got - expected).max())}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_every_family_trains_and_saves_under_mirrored_strategy(tmp_path):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["replicas"] == 2
    assert len(result["rows"]) == 9
    for name, row in result["rows"].items():
        assert row["mirrored"], f"{name}: a trainable variable is not mirrored"
        assert all(v == v and v < 1e3 for v in row["loss"]), (name, row["loss"])
        # The planted user x item parity and the age effect are learnable by every family.
        assert max(row["val_auc"]) > 0.6, (name, row["val_auc"])
        assert row["max_serving_diff"] < 1e-5, (name, row["max_serving_diff"])
