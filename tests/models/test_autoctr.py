"""AutoCTR: the virtual blocks and the DAG layer, DAG validation, mutation, the pairwise
ranker, the budget and resume of the evolution, and the search on tiny and planted data."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError
from models.autoctr_dag import check_dag, sinks
from models.layers.autoctr import AutoCTRNet, DotBlock, FMBlock
from models.search import SearchContext, SearchError, autoctr
from models.search import autoctr_evolution as evolution
from models.zoo import build_ctr_model, model_input_names
from tests.models.in_memory import split_datasets
from tests.models.synthetic_search import search_synthetic

# [B=2, F=3, D=2] embeddings with hand-checkable products.
EMBEDDINGS = np.array([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]],
                       [[1.0, 1.0], [1.0, -1.0], [2.0, 2.0]]], np.float32)
# Row 0: <e0,e1> = 2, <e0,e2> = 0, <e1,e2> = 3; row 1: 0, 4, 0.
DOTS = np.array([[2.0, 0.0, 3.0], [0.0, 4.0, 0.0]], np.float32)
# sum_{i<j} e_i * e_j per dim: row 0: [0+0+0, 0+0+3] = [0, 3]; row 1: [1+2+2, -1+2-2] = [5, -1].
FM_VECTOR = np.array([[2.0, 3.0], [5.0, -1.0]], np.float32)


class BlocksTest(tf.test.TestCase):

    def test_fm_block_golden_values(self):
        self.assertAllClose(FMBlock("vector")(EMBEDDINGS), FM_VECTOR)
        self.assertAllClose(FMBlock()(EMBEDDINGS), DOTS.sum(axis=1, keepdims=True))

    def test_dot_block_golden_values(self):
        self.assertAllClose(DotBlock()(EMBEDDINGS), DOTS)

    def test_dag_of_fm_and_dot_concatenates_the_sinks(self):
        dag = {"blocks": [{"type": "fm", "inputs": ["sparse"], "output": "scalar"},
                          {"type": "dot", "inputs": ["sparse"]}]}
        out = AutoCTRNet(dag)(tf.constant(EMBEDDINGS))
        self.assertAllClose(out, np.concatenate([DOTS.sum(1, keepdims=True), DOTS], axis=1))

    def test_dag_edges_feed_blocks_their_views(self):
        # 0: fm vector [B, 2]; 1: mlp [1] on block 0 (dense view); 2: dot on sparse + block 1
        # (block 1 projected to a D-vector). Only block 2 is a sink.
        dag = {"blocks": [{"type": "fm", "inputs": ["sparse"], "output": "vector"},
                          {"type": "mlp", "inputs": [0], "units": [1]},
                          {"type": "dot", "inputs": ["sparse", 1]}]}
        net = AutoCTRNet(dag)
        net(tf.constant(EMBEDDINGS))
        net.blocks[1].set_weights([np.ones([2, 1]), np.zeros([1])])
        net.projections["1"].set_weights([np.array([[1.0, 2.0]]), np.array([0.0, 1.0])])
        out = net(tf.constant(EMBEDDINGS)).numpy()
        hidden = np.maximum(FM_VECTOR.sum(axis=1), 0.0)  # relu(1^T v) = [5, 4]
        projected = hidden[:, None] * np.array([1.0, 2.0]) + np.array([0.0, 1.0])
        vectors = np.concatenate([EMBEDDINGS, projected[:, None, :]], axis=1)
        expected = [[vectors[b, i] @ vectors[b, j] for i in range(4) for j in range(i + 1, 4)]
                    for b in range(2)]
        self.assertEqual(net.sinks, [2])
        self.assertAllClose(out, expected)

    def test_dense_input_reaches_mlp_and_interaction_blocks(self):
        dag = {"blocks": [{"type": "mlp", "inputs": ["dense"], "units": [3]},
                          {"type": "fm", "inputs": ["sparse", "dense"], "output": "scalar"}]}
        out = AutoCTRNet(dag, has_dense=True)(tf.constant(EMBEDDINGS), dense=tf.ones([2, 4]))
        self.assertEqual(out.shape, (2, 4))
        with self.assertRaisesRegex(ValueError, "pass dense"):
            AutoCTRNet(dag, has_dense=True)(tf.constant(EMBEDDINGS))

    def test_config_round_trips(self):
        dag = {"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": [4, 2]},
                          {"type": "dot", "inputs": ["sparse", 0]}]}
        net = AutoCTRNet(dag, dropout=0.2, batch_norm=True, l2=0.01, name="net")
        config = net.get_config()
        self.assertEqual(AutoCTRNet.from_config(config).get_config(), config)
        self.assertEqual(config["dag"], dag)
        self.assertEqual(FMBlock.from_config(FMBlock("vector").get_config()).output_kind,
                         "vector")
        self.assertEqual(DotBlock.from_config(DotBlock(name="d").get_config()).name, "d")

    def test_saved_model_round_trip_of_the_autoctr_model(self):
        dag = {"blocks": [{"type": "mlp", "inputs": ["sparse", "dense"], "units": [4]},
                          {"type": "fm", "inputs": ["sparse", 0], "output": "vector"},
                          {"type": "dot", "inputs": ["dense", 1]}]}
        arch = Architecture.uniform("autoctr", ["user", "item"], ["age"],
                                    {"user": 5, "item": 4}, embedding_dim=3, autoctr=dag)
        model = build_ctr_model(arch)
        inputs = {"user_id": tf.constant([0, 4, 2], tf.int64),
                  "item_id": tf.constant([1, 3, 0], tf.int64),
                  "age_z": tf.constant([0.5, -1.0, 2.0])}
        self.assertEqual(sorted(inputs), sorted(model_input_names(arch)))
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "autoctr")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertIsInstance(restored.get_layer("autoctr"), AutoCTRNet)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
        self.assertEqual(Architecture.from_json(arch.to_json()).autoctr, dag)


class DagValidationTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        ({"blocks": []}, "non-empty 'blocks'"),
        ({"blocks": [{"type": "fm", "inputs": ["sparse"]}], "extra": 1}, "unknown keys"),
        ({"blocks": [{"type": "fm", "inputs": ["sparse"]}, {"type": "cin", "inputs": [0]}]},
         "block 1: type"),
        ({"blocks": [{"type": "fm", "inputs": ["sparse"]}, {"type": "dot", "inputs": [1]}]},
         r"block 1 \(dot\): input 1"),
        ({"blocks": [{"type": "mlp", "inputs": ["dense"], "units": [4]}]},
         r"block 0 \(mlp\): reads 'dense'"),
        ({"blocks": [{"type": "dot", "inputs": ["sparse", "sparse"]}]}, "listed twice"),
        ({"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": []}]},
         r"block 0 \(mlp\): 'units'"),
        ({"blocks": [{"type": "fm", "inputs": ["sparse"], "output": "matrix"}]},
         r"block 0 \(fm\): 'output'"),
        ({"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": [2]},
                     {"type": "dot", "inputs": [0]}]}, r"block 1 \(dot\): .* single vector"),
        ({"blocks": [{"type": "fm", "inputs": []}]}, r"block 0 \(fm\): needs a non-empty"),
        ({"blocks": [{"type": "fm", "inputs": ["sparse"], "units": [3]}]}, "unknown keys"),
    )
    def test_bad_dags_name_the_block(self, dag: dict, message: str):
        with self.assertRaisesRegex(ValueError, message):
            check_dag(dag, has_dense=False)
        with self.assertRaisesRegex(ArchitectureError, "autoctr: .*" + message):
            Architecture.uniform("autoctr", ["a", "b"], [], {"a": 2, "b": 2}, embedding_dim=2,
                                 autoctr=dag)

    def test_architecture_without_dag_constructs_but_does_not_build(self):
        arch = Architecture.uniform("autoctr", ["a", "b"], [], {"a": 2, "b": 2},
                                    embedding_dim=2)
        self.assertIsNone(arch.autoctr)
        with self.assertRaisesRegex(ArchitectureError, "needs the DAG"):
            build_ctr_model(arch)


def _reaches_output(dag: dict) -> bool:
    reached = set(sinks(dag))
    for index in range(len(dag["blocks"]) - 1, -1, -1):
        if index in reached:
            reached |= {s for s in dag["blocks"][index]["inputs"] if isinstance(s, int)}
    return reached == set(range(len(dag["blocks"])))


class MutationTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters((["sparse"],), (["sparse", "dense"],))
    def test_mutants_stay_valid_acyclic_and_connected(self, raw: list[str]):
        rng = np.random.default_rng(0)
        dag = evolution.random_dag(rng, raw, max_blocks=4)
        changed = 0
        for _ in range(400):
            child = evolution.mutate(dag, rng, raw, max_blocks=4)
            check_dag(child, has_dense="dense" in raw)
            self.assertTrue(all(s < i for i, b in enumerate(child["blocks"])
                                for s in b["inputs"] if isinstance(s, int)))
            self.assertTrue(_reaches_output(child))
            self.assertLessEqual(len(child["blocks"]), 4)
            changed += evolution.canonical(child) != evolution.canonical(dag)
            dag = child
        self.assertGreater(changed, 250)  # a no-op mutant is dropped by the evolution

    def test_remove_block_shifts_later_edges(self):
        dag = {"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": [4]},
                          {"type": "fm", "inputs": ["sparse"], "output": "scalar"},
                          {"type": "dot", "inputs": [0, 1]}]}
        self.assertEqual(evolution.remove_block(dag, 0)["blocks"][1]["inputs"], ["sparse", 0])


class RankerAndPopulationTest(tf.test.TestCase):

    def test_ranker_recovers_a_clear_ordering(self):
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(30, 5))
        ranker = evolution.PairwiseRanker(seed=0).fit(x, 2.0 * x[:, 0] - x[:, 1])
        candidates = np.column_stack([np.linspace(0, 1, 8), np.full(8, 0.5),
                                      rng.uniform(size=(8, 3))])
        scores = ranker.score(candidates, x)
        self.assertEqual(int(np.argmax(scores)), 7)
        self.assertGreater(np.corrcoef(np.argsort(np.argsort(scores)), np.arange(8))[0, 1], 0.9)

    def test_population_weighs_reward_age_and_cost(self):
        trials = [{"reward": r, "cost": c} for r, c in
                  [(0.9, 5), (0.1, 1), (0.2, 9), (0.8, 2), (0.3, 3), (0.4, 4)]]
        # Size 2: the 4 most recent (2..5); ages 3, 2, 1, 0; reward ranks 3, 0, 2, 1; cost
        # ranks 3, 0, 1, 2. With weights (1, 0, 1): 6, 0, 3, 3 -> trials 3 and 4 (stable).
        self.assertEqual(evolution.population(trials, 2, (1.0, 0.0, 1.0)), [3, 4])
        self.assertEqual(evolution.population(trials, 2, (0.1, 1.0, 0.1)), [4, 5])
        rng = np.random.default_rng(0)
        self.assertEqual(evolution.tournament(trials, [0, 1, 2], 3, rng), 0)


OPTIONS = {**autoctr.DEFAULTS, "population": 3, "tournament": 2, "num_mutants": 10,
           "ranker_min_trials": 4, "max_blocks": 4}


def _fake_score(calls: list[dict], sleep: float = 0.0):
    def score(dag: dict) -> tuple[float, float]:
        calls.append(dag)
        time.sleep(sleep)
        kinds = [b["type"] for b in dag["blocks"]]
        return 0.5 + 0.1 * kinds.count("fm") + 0.01 * len(kinds), float(len(kinds))
    return score


class EvolutionBudgetAndResumeTest(tf.test.TestCase):

    def test_initial_dags_are_the_first_trials_then_evolve(self):
        baseline = autoctr.baseline_dag(["sparse", "dense"], [400, 400, 400])
        self.assertEqual(baseline["blocks"][0], {"type": "fm", "inputs": ["sparse", "dense"],
                                                 "output": "scalar"})
        check_dag(baseline, has_dense=True)
        calls: list[dict] = []
        state = evolution.evolve(_fake_score(calls), {**OPTIONS, "max_trials": 6},
                                 ["sparse", "dense"], seed=0, fingerprint={},
                                 initial=[baseline])
        self.assertEqual(calls[0], baseline)
        self.assertEqual([t["how"] for t in state["trials"]][:3],
                         ["initial", "random", "random"])  # population 3
        self.assertNotIn(evolution.canonical(baseline),
                         [evolution.canonical(d) for d in calls[1:]])  # never scored twice

    def test_trial_budget_stops_and_the_ranker_takes_over(self):
        calls: list[dict] = []
        state = evolution.evolve(_fake_score(calls), {**OPTIONS, "max_trials": 8}, ["sparse"],
                                 seed=0, fingerprint={})
        self.assertLen(calls, 8)
        self.assertEqual(state["stopped_by"], "trials")
        self.assertEqual([t["how"] for t in state["trials"]][:3], ["random"] * 3)
        self.assertEqual(state["trials"][-1]["how"], "ranked")
        self.assertEqual([t["best_so_far"] for t in state["trials"]],
                         list(np.maximum.accumulate([t["reward"] for t in state["trials"]])))
        self.assertLen({evolution.canonical(d) for d in calls}, 8)

    def test_tied_rewards_evolve_by_mutation_without_the_ranker(self):
        # Every trial scoring alike (e.g. a tiny eval split) gives the ranker no pair to learn.
        calls: list[dict] = []
        state = evolution.evolve(lambda dag: (calls.append(dag) or 0.5, 1.0),
                                 {**OPTIONS, "max_trials": 6}, ["sparse"], seed=0,
                                 fingerprint={})
        self.assertLen(calls, 6)
        self.assertEqual([t["how"] for t in state["trials"]][3:], ["mutant"] * 3)

    def test_seconds_budget_stops(self):
        calls: list[dict] = []
        state = evolution.evolve(_fake_score(calls, sleep=0.1),
                                 {**OPTIONS, "max_trials": 100, "max_seconds": 0.25},
                                 ["sparse"], seed=0, fingerprint={})
        self.assertEqual(state["stopped_by"], "seconds")
        self.assertBetween(len(calls), 1, 3)  # each trial sleeps 0.1 s
        self.assertGreaterEqual(state["seconds"], 0.25)
        self.assertLess(state["seconds"] - state["trials"][-1]["seconds"], 0.25)

    def test_resume_continues_after_the_last_saved_trial(self):
        path = os.path.join(self.get_temp_dir(), "state", evolution.STATE_FILE)
        first: list[dict] = []
        evolution.evolve(_fake_score(first), {**OPTIONS, "max_trials": 3}, ["sparse"], seed=0,
                         fingerprint={"a": 1}, state_path=path)
        second: list[dict] = []
        resumed = evolution.evolve(_fake_score(second), {**OPTIONS, "max_trials": 7},
                                   ["sparse"], seed=0, fingerprint={"a": 1}, state_path=path)
        self.assertLen(second, 4)
        self.assertEqual(resumed["resumed_at"], 4)
        self.assertEqual([t["trial"] for t in resumed["trials"]], list(range(1, 8)))
        straight: list[dict] = []
        evolution.evolve(_fake_score(straight), {**OPTIONS, "max_trials": 7}, ["sparse"],
                         seed=0, fingerprint={})
        self.assertEqual(first + second, straight)  # an interrupted run = an uninterrupted one
        fresh: list[dict] = []
        other = evolution.evolve(_fake_score(fresh), {**OPTIONS, "max_trials": 2}, ["sparse"],
                                 seed=0, fingerprint={"a": 2}, state_path=path)
        self.assertIsNone(other["resumed_at"])
        self.assertLen(fresh, 2)


def _tiny_context(options: dict[str, Any], report_dir: str | None) -> SearchContext:
    rng = np.random.default_rng(0)
    ids = {f"{f}_id": rng.integers(0, 4, 256) for f in "abc"}
    ids["p_z"] = rng.normal(size=256).astype(np.float32)
    labels = ((ids["a_id"] + ids["b_id"]) % 2).astype(np.float32)[:, None]

    dataset = split_datasets({"train": (ids, labels), "eval": (ids, labels)}, 64)

    arch = Architecture.uniform("autoctr", list("abc"), ["p"], dict.fromkeys("abc", 4),
                                embedding_dim=3, hidden_units=[4])
    return SearchContext(arch=arch, dataset=dataset, learning_rate=1e-3, batch_size=64,
                         max_epochs=1, patience=1, seed=0, options=options,
                         report_dir=report_dir)


class SearchTest(tf.test.TestCase):

    def test_settings_errors_name_the_option(self):
        with self.assertRaisesRegex(SearchError, "unknown options"):
            autoctr.settings(_tiny_context({"generations": 3}, None))
        with self.assertRaisesRegex(SearchError, "max_trials=0"):
            autoctr.settings(_tiny_context({"max_trials": 0}, None))
        with self.assertRaisesRegex(SearchError, "sample_fraction=1.5"):
            autoctr.settings(_tiny_context({"sample_fraction": 1.5}, None))
        with self.assertRaisesRegex(SearchError, "min_steps=-1"):
            autoctr.settings(_tiny_context({"min_steps": -1}, None))
        with self.assertRaisesRegex(SearchError, "initial_dags must be 'baseline' or a list"):
            autoctr.settings(_tiny_context({"initial_dags": "deepfm"}, None))
        bad = {"blocks": [{"type": "mlp", "inputs": [3], "units": [8]}]}
        with self.assertRaisesRegex(SearchError, r"initial_dags\[0\]: AutoCTR block 0"):
            autoctr.search(_tiny_context({"initial_dags": [bad]}, None))

    def test_refuses_an_eval_split_of_one_label(self):
        ctx = _tiny_context({}, None)
        both = ctx.dataset

        def negatives_only(split: str, names: list[str], shuffle: bool) -> tf.data.Dataset:
            batches = both(split, names, shuffle)
            return batches if split == "train" else batches.map(lambda x, y: (x, 0 * y))

        ctx.dataset = negatives_only
        with self.assertRaisesRegex(SearchError, "autoctr: the eval split needs positive and "
                                                 "negative examples.*256 eval labels, all 0"):
            autoctr.search(ctx)

    def test_small_samples_get_more_trial_epochs(self):
        options = {"epochs": 1, "batch_size": 512, "min_steps": 30}
        self.assertEqual(autoctr.trial_epochs(2400, options), 6)     # 5 steps an epoch
        self.assertEqual(autoctr.trial_epochs(15585, options), 1)    # 31 steps
        self.assertEqual(autoctr.trial_epochs(100, {**options, "min_steps": 0}), 1)
        self.assertEqual(autoctr.trial_epochs(100, {**options, "epochs": 3}), 30)

    def test_finalists_are_the_best_trials_retrained_and_their_scores_are_saved(self):
        dags = [{"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": [units]}]}
                for units in (32, 64, 128)]
        trials = [{"trial": n + 1, "dag": dag, "reward": reward, "cost": 10.0 * n, "how": "random"}
                  for n, (dag, reward) in enumerate(zip(dags, (0.70, 0.75, 0.72), strict=True))]
        retrained = {64: 0.80, 128: 0.83, 32: 0.99}  # the lowest trial is never trained
        calls = []

        def fake_train(arch, train_ds, eval_ds, **kwargs):
            units = arch.autoctr["blocks"][0]["units"][0]
            calls.append((units, kwargs["max_epochs"], kwargs["seed"]))
            return SimpleNamespace(history={"val_auc": [0.5, retrained[units], 0.6]},
                                   best_epoch=2)

        state_dir = self.get_temp_dir()
        ctx = _tiny_context({}, None)
        with mock.patch("components.base.train_model", fake_train):
            finalists = autoctr._train_finalists(ctx, trials, 2, state_dir, {"seed": 0})
            self.assertEqual([t["trial"] for t in finalists], [2, 3])  # by low-fidelity AUC
            self.assertEqual([t["retrained_val_auc"] for t in finalists], [0.80, 0.83])
            self.assertEqual(calls, [(64, ctx.max_epochs, ctx.seed), (128, ctx.max_epochs,
                                                                      ctx.seed)])
            again = autoctr._train_finalists(ctx, trials, 2, state_dir, {"seed": 0})
            self.assertLen(calls, 2)  # resumed: nothing retrained
            self.assertEqual(again, finalists)
            autoctr._train_finalists(ctx, trials, 2, state_dir, {"seed": 1})
            self.assertLen(calls, 4)  # another search's scores are not reused
            self.assertEqual(autoctr._train_finalists(ctx, trials, 1, state_dir, {}), [])
            trials[0]["how"] = "initial"  # the baseline always joins the finalists
            with_baseline = autoctr._train_finalists(ctx, trials, 1, state_dir, {"seed": 0})
            self.assertEqual([t["trial"] for t in with_baseline], [2, 1])
            self.assertEqual(calls[-1][0], 32)
            self.assertEqual(autoctr._train_finalists(ctx, trials, 0, state_dir, {}), [])

    @pytest.mark.slow  # trains two tiny models: ~15 s alone, minutes on a shared machine
    def test_search_writes_the_dag_pictures_and_state(self):
        report_dir = self.get_temp_dir()
        options = {"max_trials": 1, "population": 2, "tournament": 2, "max_blocks": 3,
                   "num_mutants": 4, "ranker_min_trials": 2, "batch_size": 64}
        searched = autoctr.search(_tiny_context(options, report_dir))
        record = searched.search["autoctr"]
        self.assertEqual(record["trials"], 1)
        self.assertEqual(record["history"][0]["how"], "initial")  # the baseline DAG first
        best = max(record["history"], key=lambda t: t["reward"])
        self.assertEqual(record["best_trial"], best["trial"])
        check_dag(searched.autoctr, has_dense=True)
        self.assertEqual(build_ctr_model(searched).output_shape, (None, 1))
        for picture in (autoctr.DAG_PICTURE, autoctr.CURVE_PICTURE):
            self.assertGreater(os.path.getsize(os.path.join(report_dir, picture)), 1000)
        with open(os.path.join(report_dir, "autoctr_state", evolution.STATE_FILE)) as f:
            self.assertLen(json.load(f)["trials"], 1)
        self.assertEqual(record["chosen_by"], "low-fidelity AUC")  # one trial: no finalists
        resumed = autoctr.search(_tiny_context({**options, "max_trials": 2}, report_dir))
        record = resumed.search["autoctr"]
        self.assertEqual(record["resumed_at"], 2)
        self.assertEqual(record["trials"], 2)
        self.assertEqual(record["chosen_by"], "finalists' retrained val AUC")
        self.assertLen(record["finalists"], 2)
        chosen = max(record["finalists"], key=lambda t: t["retrained_val_auc"])
        self.assertEqual(record["best_trial"], chosen["trial"])
        self.assertTrue(os.path.exists(os.path.join(report_dir, "autoctr_state",
                                                    autoctr.FINALISTS_FILE)))


@pytest.mark.slow
def test_search_on_planted_synthetic_beats_the_first_trial(tmp_path):
    arch, _ = search_synthetic(tmp_path, "autoctr", options={
        "autoctr": {"max_trials": 14, "population": 5, "ranker_min_trials": 5}})
    record = arch.search["autoctr"]
    history = record["history"]
    assert record["trials"] == 14
    assert any(t["how"] == "ranked" for t in history)
    assert record["best_eval_auc"] > history[0]["reward"] + 0.01, history
    assert record["best_eval_auc"] > 0.7, history
    assert (tmp_path / "report" / autoctr.DAG_PICTURE).stat().st_size > 1000
