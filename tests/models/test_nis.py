"""NIS: the multi-size embedding's equations in both modes, honest parameter counts,
serialisation, the REINFORCE controller on a toy reward, and a search that retrains alone."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError
from models.layers.multisize import MultiSizeEmbedding, MultiSizeFieldEmbedding
from models.search import SearchContext, SearchError
from models.search.nis import (
    ReinforceController,
    merge_blocks,
    most_probable_within,
    search,
    settings,
    vocab_block_sizes,
)
from models.zoo import build_ctr_model, model_input_names
from tests.models.in_memory import split_datasets

BLOCKS = [[2, 4], [3, 2], [1, 0]]
IDS = tf.constant([0, 1, 2, 4, 5], tf.int64)


def _retrain_arch(model: str = "deepfm", block_projection: str = "learned") -> Architecture:
    return Architecture.uniform(model, ["user", "item"], ["age"], {"user": 6, "item": 4},
                                embedding_dim=4, hidden_units=[8],
                                embedding_blocks={"user": BLOCKS, "item": [[4, 4]]},
                                block_projection=block_projection)


def _random_blocks(**kwargs: Any) -> tuple[MultiSizeEmbedding, np.ndarray, np.ndarray,
                                            np.ndarray]:
    """A built ``MultiSizeEmbedding(BLOCKS, 4, **kwargs)`` with random block 0 and 1 tables
    and block 1's projection; returns ``(layer, top, small, projection)``."""
    layer = MultiSizeEmbedding(BLOCKS, output_dim=4, **kwargs)
    layer(IDS)
    rng = np.random.default_rng(0)
    top, small = rng.normal(size=(2, 4)), rng.normal(size=(3, 2))
    projection = rng.normal(size=(2, 4))
    layer.tables["0"].assign(top)
    layer.tables["1"].assign(small)
    layer.projections["1"].assign(projection)
    return layer, top, small, projection


class MultiSizeEmbeddingTest(tf.test.TestCase, parameterized.TestCase):

    def test_golden_values_project_each_block_and_drop_size_zero(self):
        layer, top, small, projection = _random_blocks()
        expected = np.stack([top[0], top[1], small[0] @ projection, small[2] @ projection,
                             np.zeros(4)])
        self.assertAllClose(layer(IDS), expected, rtol=1e-6)

    def test_fresh_projection_zero_pads(self):
        layer = MultiSizeEmbedding([[1, 4], [2, 2]], output_dim=4)
        layer(IDS[:1])
        self.assertAllClose(layer.projections["1"], np.eye(2, 4))

    def test_pad_mode_zero_pads_each_block_and_stores_only_the_tables(self):
        layer = MultiSizeEmbedding(BLOCKS, output_dim=4, projection="pad")
        layer(IDS)
        rng = np.random.default_rng(0)
        top, small = rng.normal(size=(2, 4)), rng.normal(size=(3, 2))
        layer.tables["0"].assign(top)
        layer.tables["1"].assign(small)
        expected = np.stack([top[0], top[1], np.r_[small[0], 0, 0], np.r_[small[2], 0, 0],
                             np.zeros(4)])
        self.assertAllClose(layer(IDS), expected, rtol=1e-6)
        self.assertEqual(layer.projections, {})
        self.assertEqual(layer.stored_params(), 2 * 4 + 3 * 2)
        self.assertEqual(sum(int(np.prod(w.shape)) for w in layer.weights),
                         layer.stored_params())

    def test_pad_mode_is_the_search_super_network(self):
        """A padded retrain model with the search table's rows computes what the search scored."""
        search = MultiSizeEmbedding(BLOCKS, output_dim=4, search=True)
        search(IDS)
        table = np.arange(24, dtype=np.float32).reshape(6, 4) + 1
        search.table.assign(table)
        padded = MultiSizeEmbedding(BLOCKS, output_dim=4, projection="pad")
        padded(IDS)
        padded.tables["0"].assign(table[:2])
        padded.tables["1"].assign(table[2:5, :2])
        self.assertAllClose(padded(IDS), search(IDS))

    def test_search_mode_masks_a_shared_table(self):
        layer = MultiSizeEmbedding(BLOCKS, output_dim=4, search=True)
        layer(IDS)
        table = np.arange(24, dtype=np.float32).reshape(6, 4) + 1
        layer.table.assign(table)
        mask = np.array([[1, 1, 1, 1]] * 2 + [[1, 1, 0, 0]] * 2 + [[0, 0, 0, 0]])
        self.assertAllClose(layer(IDS), table[[0, 1, 2, 4, 5]] * mask)
        layer.set_block_dims([2, 4, 4])
        self.assertAllClose(layer(IDS), table[[0, 1, 2, 4, 5]] * np.array(
            [[1, 1, 0, 0]] * 2 + [[1, 1, 1, 1]] * 3))

    @parameterized.parameters(True, False)
    def test_l2_on_the_projected_blocks(self, projected_l2):
        """``projected_l2``: ``l2 |E_v P_v|^2`` for a projected block (``P_v`` cannot undo it by
        scaling), else ``l2 |E_v|^2``; full-size blocks always ``l2 |E_v|^2``."""
        layer, top, small, projection = _random_blocks(l2=0.5, projected_l2=projected_l2)
        small_penalty = np.sum((small @ projection) ** 2) if projected_l2 else np.sum(small ** 2)
        self.assertAllClose(sum(layer.losses), 0.5 * (np.sum(top ** 2) + small_penalty),
                            rtol=1e-5)
        layer.tables["1"].assign(small / 4.0)
        layer.projections["1"].assign(projection * 4.0)
        scaled = 0.5 * (np.sum(top ** 2) + (small_penalty if projected_l2
                                            else np.sum((small / 4.0) ** 2)))
        self.assertAllClose(sum(layer.losses), scaled, rtol=1e-5)

    def test_stored_params_equal_the_weights(self):
        layer = MultiSizeEmbedding(BLOCKS, output_dim=4)
        layer(IDS)
        self.assertEqual(layer.stored_params(), 22)
        self.assertEqual(sum(int(np.prod(w.shape)) for w in layer.weights), 22)

    @parameterized.parameters((False, "learned"), (True, "learned"), (False, "pad"))
    def test_config_round_trip(self, search, projection):
        layer = MultiSizeFieldEmbedding(
            ["user", "item"], ["age"], {"user": 6, "item": 4}, {"user": 4, "item": 4, "age": 4},
            embedding_blocks={"user": BLOCKS}, search=search, l2=0.1, name="nis",
            block_projection=projection)
        inputs = {"user_id": IDS[:3], "item_id": tf.constant([0, 3, 1], tf.int64),
                  "age_z": tf.constant([0.5, -1.0, 0.0])}
        expected = layer(inputs)
        clone = MultiSizeFieldEmbedding.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        clone(inputs)
        clone.set_weights(layer.get_weights())
        for a, b in zip(clone(inputs), expected, strict=True):
            self.assertAllClose(a, b)

    @parameterized.parameters(
        ({"output_dim": 0}, "output_dim=0"),
        ({"blocks": [[2, 5]]}, r"blocks=\[\[2, 5\]\]"),
        ({"blocks": []}, r"blocks=\[\]"),
        ({"l2": -1.0}, "l2=-1.0"),
        ({"projection": "linear"}, "projection='linear'"),
    )
    def test_validation_errors_name_the_value(self, overrides: dict[str, Any], message: str):
        with self.assertRaisesRegex(ValueError, message):
            MultiSizeEmbedding(**{"blocks": BLOCKS, "output_dim": 4, **overrides})

    def test_field_validation_errors_name_the_value(self):
        with self.assertRaisesRegex(ValueError, r"blocks=\[\[2, 4\]\]"):
            MultiSizeFieldEmbedding(["user"], [], {"user": 6}, {"user": 4},
                                    embedding_blocks={"user": [[2, 4]]})
        with self.assertRaisesRegex(ValueError, r"\['age'\]"):
            MultiSizeFieldEmbedding(["user"], ["age"], {"user": 6}, {"user": 4, "age": 4},
                                    embedding_blocks={"age": BLOCKS})


class MultiSizeArchitectureTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.product(model_name=["fm", "deepfm", "dnn", "dcn"],
                           block_projection=["learned", "pad"])
    def test_embedding_params_count_the_built_tables(self, model_name, block_projection):
        arch = _retrain_arch(model_name, block_projection)
        model = build_ctr_model(arch)
        tables = model.get_layer("field_embedding").weights
        if model_name in ("fm", "deepfm"):
            tables = tables + model.get_layer("field_linear").weights[:-1]  # minus the bias
        self.assertEqual(arch.embedding_params(), sum(int(np.prod(w.shape)) for w in tables))

    @parameterized.parameters(
        ({"user": [[6, 5]]}, r"\[\[6, 5\]\]"),
        ({"user": [[5, 4]]}, r"\[\[5, 4\]\]"),
        ({"age": [[1, 4]]}, r"\[\[1, 4\]\]"),
    )
    def test_architecture_rejects_bad_blocks(self, blocks, message):
        with self.assertRaisesRegex(ArchitectureError, message):
            Architecture.uniform("deepfm", ["user"], ["age"], {"user": 6}, embedding_dim=4,
                                 embedding_blocks=blocks)

    def test_architecture_rejects_an_unknown_block_projection(self):
        with self.assertRaisesRegex(ArchitectureError, "block_projection='linear'"):
            _retrain_arch(block_projection="linear")

    @parameterized.parameters("learned", "pad")
    def test_saved_model_round_trip(self, block_projection):
        arch = Architecture.from_json(_retrain_arch(block_projection=block_projection).to_json())
        self.assertEqual(arch.block_projection, block_projection)
        model = build_ctr_model(arch)
        rng = np.random.default_rng(0)
        inputs = {"user_id": rng.integers(0, 6, 5), "item_id": rng.integers(0, 4, 5),
                  "age_z": rng.normal(size=5).astype(np.float32)}
        inputs = {k: inputs[k] for k in model_input_names(arch)}
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "deepfm_nis")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
        self.assertEqual(type(restored.get_layer("field_embedding")).__name__,
                         "MultiSizeFieldEmbedding")
        serving = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serving(**{k: tf.constant(v) for k, v in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)


def test_controller_learns_the_best_arm_of_a_toy_reward():
    controller = ReinforceController([[0, 1, 2], [1, 2]], num_choices=3, learning_rate=0.1,
                                     seed=0)
    target = np.array([2, 1])
    for _ in range(300):
        actions = controller.sample()
        controller.update(actions, float((actions == target).sum()))
    np.testing.assert_array_equal(controller.most_probable(), target)
    probabilities = controller.probabilities()
    assert probabilities[1, 0] == 0.0
    assert probabilities[0, 2] > 0.8 and probabilities[1, 1] > 0.8
    assert 1.0 < controller.baseline <= 2.0


def test_budget_gives_up_the_least_probable_sizes_first():
    controller = ReinforceController([[0, 1, 2], [1, 2]], num_choices=3)
    controller.logits = np.log(np.array([[0.1, 0.3, 0.6], [1e-9, 0.4, 0.6]]))

    def params(actions: np.ndarray) -> int:
        return int(10 * actions.sum())

    np.testing.assert_array_equal(most_probable_within(controller, params, 40), [2, 2])
    # a step down loses log(0.6/0.4) for decision 1, the larger log(0.6/0.3) for decision 0
    np.testing.assert_array_equal(most_probable_within(controller, params, 30), [2, 1])
    np.testing.assert_array_equal(most_probable_within(controller, params, 20), [1, 1])
    with pytest.raises(SearchError, match="budget of 5"):
        most_probable_within(controller, params, 5)


def test_controller_rejects_a_decision_without_choices():
    with pytest.raises(ValueError, match=r"\[\[0\], \[\]\]"):
        ReinforceController([[0], []], num_choices=2)


def test_blocks_helpers_and_settings():
    assert vocab_block_sizes(10, 4) == [3, 3, 2, 2]
    assert vocab_block_sizes(2, 4) == [1, 1]
    assert merge_blocks([[3, 4], [3, 4], [2, 0]]) == [[6, 4], [2, 0]]
    with pytest.raises(SearchError, match=r"unknown options \['blocks'\]"):
        settings({"blocks": 2})
    with pytest.raises(SearchError, match="samples=0"):
        settings({"samples": 0})
    with pytest.raises(SearchError, match="baseline_decay=1"):
        settings({"baseline_decay": 1})
    with pytest.raises(SearchError, match="max_params_fraction=0"):
        settings({"max_params_fraction": 0})
    with pytest.raises(SearchError, match="projection='linear'"):
        settings({"projection": "linear"})
    assert settings({})["projection"] == "learned"
    with pytest.raises(SearchError, match="projected_l2='no'"):
        settings({"projected_l2": "no"})
    assert settings({})["projected_l2"] is True


def test_search_refuses_an_eval_split_of_one_label():
    """The reward's AUC needs both labels; a rare positive can leave the eval split without
    one (before, the policy became NaN and every block got size 0)."""
    rng = np.random.default_rng(0)
    ids = {"user_id": rng.integers(0, 6, 64), "item_id": rng.integers(0, 4, 64)}
    dataset = split_datasets({"train": (ids, (ids["user_id"] == 0).astype(np.float32)),
                              "eval": (ids, np.zeros(64, np.float32))}, 32)

    arch = Architecture.uniform("deepfm", ["user", "item"], [], {"user": 6, "item": 4},
                                embedding_dim=4, hidden_units=[8])
    ctx = SearchContext(arch=arch, dataset=dataset, learning_rate=1e-2, batch_size=32,
                        max_epochs=1, patience=1, seed=0,
                        options={"min_vocab": 2, "warmup_epochs": 0, "epochs": 1, "samples": 1})
    with pytest.raises(SearchError, match="nis: the eval split needs positive and negative "
                                          "examples.*64 eval labels, all 0"):
        search(ctx)


@pytest.mark.slow
def test_search_writes_blocks_that_retrain_alone(tmp_path):
    from benchmarks.data import prepare_bench_data, transformed_dataset  # noqa: PLC0415
    from components import base  # noqa: PLC0415
    from components.search import searched_architecture  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    data = prepare_bench_data("synthetic", str(tmp_path / "work"), None, 2021)
    config = PipelineConfig.from_dict({
        "search_strategy": "nis", "train": {"model": "deepfm", "hidden_units": [16]},
        "search_options": {"nis": {"min_vocab": 2, "warmup_epochs": 0, "epochs": 1,
                                   "samples": 2, "batch_size": 4096, "projection": "pad",
                                   "projected_l2": False}}})

    def dataset(split: str, input_names: list[str], shuffle: bool) -> tf.data.Dataset:
        return transformed_dataset(data, split, input_names, config.train.batch_size,
                                   shuffle=shuffle, seed=2021)

    categorical = data.spec["categorical"]
    arch = searched_architecture(config, data.spec,
                                 base.vocab_sizes(data.transform_output, categorical), dataset,
                                 counts=base.vocab_counts(data.transform_output, categorical),
                                 report_dir=str(tmp_path / "report"))
    found = arch.search["nis"]
    assert set(arch.embedding_blocks) == set(found["chosen"]) <= set(categorical)
    assert found["params_after"] == arch.embedding_params()
    assert arch.block_projection == "pad"  # the options reach the written architecture
    assert arch.projected_l2 is False
    assert len(found["reward_curve"]) == 1
    assert (tmp_path / "report" / "nis_blocks.png").stat().st_size > 1000
    rebuilt = Architecture.from_json(arch.to_json())
    assert rebuilt.embedding_blocks == arch.embedding_blocks
    assert rebuilt.block_projection == "pad"
    assert build_ctr_model(rebuilt).count_params() > 0
