"""ESAPN: the per-id layer's equations, growth, serialisation, honest parameter counts, the
grow-only policy, and tiny searches (top-k MF-BPR and a CTR DeepFM)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError, id_dims_params
from models.layers.esapn import ESAPNEmbedding, ESAPNFieldEmbedding
from models.search import SearchContext, SearchError
from models.search.esapn import (
    DEFAULTS,
    GrowthController,
    SizePolicy,
    explored_rollout,
    fill_budget,
    id_effects,
    recall_credit,
    rollout,
    search,
    search_topk,
    settings,
    uniform_size_prior,
)
from models.zoo import build_ctr_model, model_input_names
from models.zoo.mf import MatrixFactorization
from tests.models.in_memory import split_datasets

TABLE = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


def _layer(**overrides) -> ESAPNEmbedding:
    args = {"num_ids": 3, "candidate_dims": [1, 2, 3], "id_dims": [1, 2, 3],
            "embeddings_initializer": keras.initializers.Constant(TABLE),
            "map_initializer": keras.initializers.Constant(2.0), "rescale_init": False}
    return ESAPNEmbedding(**{**args, **overrides})


class ESAPNEmbeddingTest(tf.test.TestCase, parameterized.TestCase):

    def test_golden_values_follow_the_chain_of_maps(self):
        layer = _layer()
        out = layer(tf.constant([0, 1, 2]))
        # id 0: x = [1] -> W_1 (1x2 of 2s) -> [2, 2] -> W_2 (2x3 of 2s) -> [8, 8, 8]
        # id 1: x = [4, 5] -> W_2 -> [18, 18, 18];  id 2: x = [7, 8, 9] as is (biases are 0)
        self.assertAllClose(out, [[8.0, 8.0, 8.0], [18.0, 18.0, 18.0], [7.0, 8.0, 9.0]])
        self.assertEqual(layer(tf.constant([[0, 2]])).shape, (1, 2, 3))

    def test_identity_maps_zero_pad_a_fresh_id(self):
        layer = _layer(map_initializer="identity")
        self.assertAllClose(layer(tf.constant([0, 1])), [[1.0, 0.0, 0.0], [4.0, 5.0, 0.0]])

    def test_rescaled_init_gives_every_id_the_norm_of_a_full_size_one(self):
        layer = _layer(map_initializer="identity", rescale_init=True)
        self.assertAllClose(layer(tf.constant([0, 2])),
                            [[np.sqrt(3.0), 0.0, 0.0], [7.0, 8.0, 9.0]])

    def test_grow_initialises_the_larger_embedding_by_the_map_and_keeps_the_output(self):
        layer = _layer(id_dims=[1, 1, 3], map_initializer="glorot_uniform")
        before = layer(tf.constant([0, 1, 2])).numpy()
        layer.grow(np.array([0, 2]))
        self.assertEqual(layer.id_dims(), [2, 1, 3])  # id 2 is already at the largest size
        kernel, bias = layer.maps[0].get_weights()
        self.assertAllClose(layer.embeddings[0, :2], np.array([1.0]) @ kernel + bias)
        self.assertAllClose(layer(tf.constant([0, 1, 2])), before, rtol=1e-5)

    def test_stored_params_count_the_used_sizes_and_maps(self):
        # sizes 1 + 2 + 3, maps (1 + 1) x 2 and (2 + 1) x 3
        self.assertEqual(_layer().stored_params(), 6 + 4 + 9)
        # only ids of size >= 2: the 1 -> 2 map is not stored
        self.assertEqual(_layer(id_dims=[2, 2, 3]).stored_params(), 7 + 9)
        self.assertEqual(id_dims_params([2, 3], [1, 2, 3], use_bias=False), 5 + 6)

    def test_config_round_trip_keeps_the_grown_sizes(self):
        layer = _layer(l2=0.1)
        layer(tf.constant([0]))
        layer.grow(np.array([1]))
        clone = ESAPNEmbedding.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        clone(tf.constant([0]))
        clone.set_weights(layer.get_weights())
        ids = tf.constant([0, 1, 2])
        self.assertAllClose(clone(ids), layer(ids))

    def test_saved_model_round_trip(self):
        ids = keras.Input(shape=(), dtype=tf.int64)
        model = keras.Model(ids, _layer(map_initializer="glorot_uniform")(ids))
        expected = model(tf.constant([0, 1, 2], tf.int64)).numpy()
        path = os.path.join(self.get_temp_dir(), "esapn")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertAllClose(restored(tf.constant([0, 1, 2], tf.int64)), expected)
        self.assertIsInstance(restored.layers[-1], ESAPNEmbedding)

    @parameterized.parameters(
        ({"num_ids": 0}, "num_ids=0"),
        ({"candidate_dims": [2, 2, 3]}, r"candidate_dims=\[2, 2, 3\]"),
        ({"id_dims": [1, 2]}, "len\\(id_dims\\)=2"),
        ({"id_dims": [1, 2, 5]}, r"Received: \[5\]"),
        ({"l2": -1.0}, "l2=-1.0"),
    )
    def test_validation_errors_name_the_value(self, overrides, message):
        with self.assertRaisesRegex(ValueError, message):
            _layer(**overrides)


class RetrainFromArchitectureTest(tf.test.TestCase):

    def _arch(self) -> Architecture:
        arch = Architecture.uniform("deepfm", ["user", "item"], ["age"], {"user": 4, "item": 3},
                                    embedding_dim=4, hidden_units=[4])
        arch.id_dims = {"user": [2, 4, 2, 2]}
        return arch

    def test_architecture_counts_sizes_and_maps(self):
        arch = self._arch()
        # user: sum of sizes 10 + map (2 + 1) x 4 instead of 4 x 4; first-order scalars stay.
        fixed = dataclass_copy(arch, id_dims={})
        self.assertEqual(arch.embedding_params(), fixed.embedding_params() - 16 + 10 + 12)

    def test_architecture_rejects_bad_id_dims(self):
        with self.assertRaisesRegex(ArchitectureError, "id_dims\\['user'\\]"):
            dataclass_copy(self._arch(), id_dims={"user": [2, 8, 2, 2]})
        with self.assertRaisesRegex(ArchitectureError, "3 sizes"):
            dataclass_copy(self._arch(), id_dims={"user": [2, 2, 2]})

    def test_deepfm_builds_from_id_dims_and_survives_a_saved_model(self):
        arch = Architecture.from_json(self._arch().to_json())
        model = build_ctr_model(arch)
        self.assertIsInstance(model.get_layer("field_embedding"), ESAPNFieldEmbedding)
        inputs = {"user_id": np.array([0, 1, 3]), "item_id": np.array([2, 0, 1]),
                  "age_z": np.array([0.5, -1.0, 0.0], np.float32)}
        inputs = {k: inputs[k] for k in model_input_names(arch)}
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "deepfm_esapn")
        model.save(path, save_format="tf")
        serving = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serving(**{k: tf.constant(v) for k, v in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)

    def test_mf_with_id_dims_counts_honestly_and_round_trips(self):
        model = MatrixFactorization(3, 2, embedding_dim=4, id_dims={"item": [2, 4]}, seed=1)
        users, items = model.embedding_tables()
        self.assertEqual((users.shape, items.shape), ((3, 4), (2, 4)))
        # MF zero-pads (frozen identity maps): the items store 2 + 4, the maps nothing.
        self.assertEqual(model.embedding_params(), 3 * 4 + 6)
        self.assertEqual(len(model.item_embedding.trainable_weights), 1)
        self.assertAllClose(items[0, 2:], [0.0, 0.0])
        clone = MatrixFactorization.from_config(model.get_config())
        clone.build()
        clone.set_weights(model.get_weights())
        self.assertAllClose(clone.embedding_tables()[1], items)
        self.assertFalse(clone.get_config()["rescale_init"])

    def test_mf_tables_start_like_a_plain_mf_unless_rescaled(self):
        # Every id at 16: each coordinate ~ N(0, 0.1^2), as in a plain MF of size 16; with
        # rescale_init (the stream search's growing tables) 0.1 * sqrt(64 / 16) = 0.2.
        for rescale, std in ((False, 0.1), (True, 0.2)):
            model = MatrixFactorization(400, 300, embedding_dim=64, seed=0, rescale_init=rescale,
                                        id_dims={"user": [16] * 400, "item": [16] * 300})
            for table in model.embedding_tables():
                table = table.numpy()
                self.assertAllClose(table[:, 16:], np.zeros_like(table[:, 16:]))
                self.assertAlmostEqual(float(table[:, :16].std()), std, delta=0.1 * std)


def dataclass_copy(arch: Architecture, **changes) -> Architecture:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(arch, **changes)


def test_policy_only_grows_and_stops_at_the_largest_size():
    layer = ESAPNEmbedding(5, [2, 4, 8])
    layer(tf.constant([0]))
    controller = GrowthController(layer, settings({}, 8), seed=0)
    rng = np.random.default_rng(0)
    previous = np.array(layer.id_dims())
    for _ in range(12):
        ids = rng.integers(0, 5, 6)
        unique, chosen = controller.act(ids, rng)
        sizes = np.array(layer.id_dims())
        assert np.all(sizes >= previous) and set(sizes) <= {2, 4, 8}
        assert not np.any(chosen[1][previous[unique] == 8])  # no action at the largest size
        controller.observe(ids, rng.random(len(ids)), unique, chosen)
        previous = sizes
    assert controller.counts.sum() == 72


def test_settings_reject_unknown_and_bad_options():
    with pytest.raises(SearchError, match="unknown options \\['sizes'\\]"):
        settings({"sizes": [2]}, 64)
    with pytest.raises(SearchError, match="epochs=0"):
        settings({"epochs": 0}, 64)
    with pytest.raises(SearchError, match="candidate_dims=\\[2, 4\\]"):
        settings({"candidate_dims": [2, 4]}, 8)
    with pytest.raises(SearchError, match="mode must be one of"):
        settings({"mode": "online"}, 64)
    with pytest.raises(SearchError, match="max_params_fraction=0"):
        settings({"max_params_fraction": 0}, 64)
    with pytest.raises(SearchError, match="episodes=0"):
        settings({"episodes": 0}, 64)
    assert settings({}, 64)["candidate_dims"] == [2, 4, 8, 16, 64]  # the paper's, capped
    assert settings({}, 10)["candidate_dims"] == [2, 4, 8, 10]
    assert set(settings({}, 8)) == set(DEFAULTS)


def _tiny_topk_data():
    from components.topk import topk_data_from_interactions  # noqa: PLC0415

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 1500), rng.zipf(1.6, 1500) % 60
    split = rng.random(1500)

    def pick(mask):
        return users[mask].astype(str), items[mask].astype(str)

    return topk_data_from_interactions(pick(split < 0.8), pick((split >= 0.8) & (split < 0.9)),
                                       pick(split >= 0.9))


def test_uniform_size_prior_makes_every_final_size_equally_likely():
    policy = SizePolicy(5, settings({"policy_hidden": 8}, 64), seed=0,
                        prior=uniform_size_prior(5))
    counts = np.random.default_rng(1).integers(0, 500, 20_000)
    size, ids, keys, actions = rollout(policy, counts, np.random.default_rng(2))
    np.testing.assert_allclose(np.bincount(size, minlength=5) / 20_000, 0.2, atol=0.015)
    # One decision per step taken: every id decides once per size below its own, plus a
    # "keep" unless it reached the largest size.
    assert len(ids) == size.sum() + np.sum(size < 4) and actions.sum() == size.sum()
    # Decisions at size index j: every id that reached j (and is not at the largest size).
    reached = [np.sum(size >= j) for j in range(4)] + [0]
    assert np.bincount(keys % 5, minlength=5).tolist() == reached
    assert np.array_equal(keys // 5, policy.bucket(counts[ids]))
    greedy, *_ = rollout(policy, counts)  # P(enlarge) 0.8, 0.75, 0.67, then 0.5: not > 0.5
    assert set(greedy) == {3}


def test_explored_rollout_mixes_the_prior_and_the_policy_by_the_explore_share():
    values = settings({"policy_hidden": 8}, 64)
    explorer = SizePolicy(5, values, seed=0, prior=uniform_size_prior(5))
    policy = SizePolicy(5, values, seed=0)  # no prior: P(enlarge) = 0.5 at every size
    counts = np.random.default_rng(1).integers(0, 500, 20_000)
    halving = [0.5, 0.25, 0.125, 0.0625, 0.0625]
    for explore, expected in ((1.0, [0.2] * 5), (0.0, halving),
                              (0.5, (np.array(halving) + 0.2) / 2)):
        size, ids, _, actions = explored_rollout(policy, explorer, counts, explore,
                                                  np.random.default_rng(2))
        np.testing.assert_allclose(np.bincount(size, minlength=5) / 20_000, expected, atol=0.015)
        # Each id's decisions: one per size below its own, plus a keep below the largest.
        assert np.array_equal(np.bincount(ids, minlength=20_000), size + (size < 4))
        assert np.array_equal(np.bincount(ids, actions, minlength=20_000), size)
    with pytest.raises(SearchError, match="explore=1.5"):
        settings({"explore": 1.5}, 64)


def test_recall_credit_splits_recall_between_users_and_items():
    from components.topk import evaluate_topk  # noqa: PLC0415

    data = _tiny_topk_data()
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(data.num_users, 4)), rng.normal(size=(data.num_items, 4))
    credit = recall_credit(data, users, items, 5)
    metrics = evaluate_topk(users, items, data.train_items_by_user, data.eval_items_by_user, 5)
    for key in ("user", "item"):
        np.testing.assert_allclose(credit[key].sum() / metrics["users"], metrics["recall@5"])
    assert np.all(credit["user"] <= 1) and np.all(credit["user"] >= 0)
    assert np.all(credit["user"][data.eval_items_by_user.counts == 0] == 0)


def test_id_effects_remove_what_an_id_earns_at_any_size():
    rng = np.random.default_rng(0)
    n, buckets = 4000, np.repeat([0, 1], 2000)
    own = rng.gamma(1.0, 1.0, n) * (1 + 3 * buckets)  # e.g. an item's eval pairs
    sizes = [rng.integers(0, 2, n) for _ in range(4)]
    credits = [own + 0.3 * s + rng.normal(0, 0.1, n) for s in sizes]
    effects, beta = id_effects(credits, buckets)
    assert 0.9 < beta <= 1
    for credit, effect, size in zip(credits, effects, sizes, strict=True):
        adjusted = credit - effect
        # Within a bucket, what is left is mostly the size's effect (and noise).
        for b in (0, 1):
            at = buckets == b
            assert np.std(adjusted[at]) < 0.35 * np.std(credit[at])
            assert np.corrcoef(adjusted[at], size[at])[0, 1] > 0.5
    # Without an id effect (pure noise) the coefficient is about 0: nothing is subtracted.
    _, beta = id_effects([rng.normal(size=n) for _ in range(3)], buckets)
    assert beta < 0.05
    # One episode: no other episode to learn from.
    effects, beta = id_effects(credits[:1], buckets)
    assert beta == 0 and not np.any(effects[0])
    with pytest.raises(SearchError, match="id_baseline must be true or false"):
        settings({"id_baseline": "yes"}, 64)


def test_fill_budget_spends_what_the_price_leaves_on_the_ids_a_lower_price_enlarges():
    within = {"user": np.array([8, 8, 8, 8, 64]), "item": np.array([16, 16, 64])}
    over = {"user": np.array([64, 64, 64, 8, 64]), "item": np.array([64, 16, 64])}
    used = 4 * 8 + 64 + 2 * 16 + 64  # 192
    # Candidates: users 0-2 (8 -> 64, 56 more each) and item 0 (16 -> 64, 48 more).
    for spare, enlarged in ((0, 0), (47, 0), (48, 1), (103, 1), (104, 2), (1000, 4)):
        filled = fill_budget(within, over, used + spare, np.random.default_rng(spare))
        grew = {k: np.flatnonzero(filled[k] != within[k]) for k in within}
        assert sum(len(v) for v in grew.values()) == enlarged
        for key, ids in grew.items():  # only to the lower price's size, only where it is larger
            assert np.all(filled[key][ids] == over[key][ids]) and np.all(over[key][ids] > 8)
        assert sum(int(v.sum()) for v in filled.values()) <= used + spare
    assert fill_budget(within, over, used + 1000, np.random.default_rng(0))["item"][0] == 64
    # Which of the equally good ids grows is random.
    chosen = {tuple(fill_budget(within, over, used + 56, np.random.default_rng(s))["user"])
              for s in range(30)}
    assert len(chosen) >= 3


def test_topk_episode_search_keeps_the_budget_and_retrains_from_the_sizes(tmp_path):
    from components.topk import train_bpr  # noqa: PLC0415

    data = _tiny_topk_data()
    options = {"episodes": 2, "policy_hidden": 16, "policy_steps": 30,
               "max_params_fraction": 0.5}
    found = search_topk(data, dim=8, learning_rate=1e-2, batch_size=128, l2=1e-4, init_std=0.1,
                        seed=3, options=options, report_dir=str(tmp_path), max_epochs=3,
                        patience=1)
    sizes, report = found["id_dims"], found["report"]
    assert set(sizes["user"]) | set(sizes["item"]) <= {2, 4, 8}
    assert report["settings"]["mode"] == "episode" and len(report["history"]) == 2
    assert report["params_after"] <= 0.5 * report["params_before"]
    assert report["params_before"] == (data.num_users + data.num_items) * 8
    assert all(h["embedding_params"] > 0 and h["price"] >= 0 for h in report["history"])
    # The first episode has no other episode to estimate the ids' own effects from.
    assert report["history"][0]["id_baseline_coefficient"] == {"user": 0.0, "item": 0.0}
    assert all(0 <= b <= 1 for b in report["history"][1]["id_baseline_coefficient"].values())
    # The last episode's greedy sizes and the uniform allocation within the budget (every id
    # at 4, the largest candidate that fits half of 8) are the finalists; the better on eval
    # is the result.
    last = report["history"][-1]["greedy_size_counts"]
    finalists = {f["allocation"]: f for f in report["finalists"]}
    assert set(finalists) == {"searched", "uniform 4"}
    assert finalists["uniform 4"]["embedding_params"] == 4 * (data.num_users + data.num_items)
    assert finalists[report["chosen"]]["eval_recall@20"] == max(
        f["eval_recall@20"] for f in report["finalists"])
    if report["chosen"] == "searched":
        assert last == {key: {str(d): sizes[key].count(d) for d in (2, 4, 8)} for key in sizes}
    else:
        assert set(sizes["user"]) | set(sizes["item"]) == {4}
    assert report["size_counts"] == {
        key: {str(d): sizes[key].count(d) for d in (2, 4, 8)} for key in sizes}
    assert (tmp_path / "esapn_sizes.png").stat().st_size > 1000
    result = train_bpr(data, dim=8, max_epochs=2, seed=3, id_dims=sizes)
    assert result.embedding_params == report["params_after"] == sum(map(sum, sizes.values()))
    # Without the finalists the searched sizes are the result.
    alone = search_topk(data, dim=8, learning_rate=1e-2, batch_size=128, l2=1e-4, init_std=0.1,
                        seed=3, options={**options, "uniform_finalist": False}, max_epochs=3,
                        patience=1)
    assert alone["report"]["finalists"] == [] and alone["report"]["chosen"] == "searched"
    assert alone["report"]["history"][-1]["greedy_size_counts"] == alone["report"]["size_counts"]
    with pytest.raises(SearchError, match="uniform_finalist must be true or false"):
        settings({"uniform_finalist": 1}, 64)
    with pytest.raises(SearchError, match="below every id at the smallest size 2"):
        search_topk(data, dim=8, learning_rate=1e-2, batch_size=128, l2=1e-4, init_std=0.1,
                    seed=3, options={**options, "max_params_fraction": 0.2}, max_epochs=1)


def test_topk_stream_search_then_retrain_from_the_sizes(tmp_path):
    from components.topk import train_bpr  # noqa: PLC0415

    data = _tiny_topk_data()
    found = search_topk(data, dim=8, learning_rate=1e-2, batch_size=128, l2=1e-4, init_std=0.1,
                        seed=3, options={"mode": "stream", "epochs": 2, "policy_hidden": 16},
                        report_dir=str(tmp_path))
    sizes, report = found["id_dims"], found["report"]
    assert len(sizes["user"]) == data.num_users and len(sizes["item"]) == data.num_items
    assert set(sizes["user"]) | set(sizes["item"]) <= {2, 4, 8}
    assert report["params_before"] == (data.num_users + data.num_items) * 8
    assert len(report["history"]) == 2 and report["best_epoch"] in (1, 2)
    assert (tmp_path / "esapn_sizes.png").stat().st_size > 1000
    result = train_bpr(data, dim=8, max_epochs=2, seed=3, id_dims=sizes)
    assert result.embedding_params == report["params_after"] == result.model.embedding_params()


def test_ctr_search_writes_id_dims_that_retrain_alone(tmp_path):
    arch = Architecture.uniform("deepfm", ["user", "item"], [], {"user": 30, "item": 20},
                                embedding_dim=4, hidden_units=[8])
    rng = np.random.default_rng(0)
    features = {"user_id": rng.integers(0, 30, 512), "item_id": rng.integers(0, 20, 512)}
    labels = ((features["user_id"] + features["item_id"]) % 3 == 0).astype(np.float32)

    dataset = split_datasets({"train": (features, labels), "eval": (features, labels)}, 128)

    ctx = SearchContext(arch=arch, dataset=dataset, learning_rate=1e-2, batch_size=128,
                        max_epochs=2, patience=1, seed=0,
                        options={"epochs": 2, "policy_hidden": 16}, report_dir=str(tmp_path))
    with pytest.raises(SearchError, match="mode 'episode' is implemented for MF"):
        search(dataclass_copy(ctx, options={"mode": "episode"}))
    found = search(ctx)
    assert set(found.id_dims) == {"user", "item"}
    assert found.search["esapn"]["params_after"] == found.embedding_params()
    assert (tmp_path / "esapn_sizes.png").stat().st_size > 1000
    model = build_ctr_model(Architecture.from_json(found.to_json()))
    assert model({k: v[:3] for k, v in features.items()}).shape == (3, 1)
