"""Top-k data indexing, full-ranking metrics (golden values), negative sampling and BPR training."""

from __future__ import annotations

import os

import numpy as np
import pytest

from components.topk import (
    UserItems,
    evaluate_split,
    evaluate_topk,
    load_topk,
    ranked_test_metrics,
    refit_bpr,
    sample_negatives,
    target_hits,
    topk_data_from_interactions,
    train_bpr,
    warn_if_past_map_limit,
    with_eval_in_train,
)
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset

TOPK_SPEC = FeatureSpec(label="label", categorical=("user", "item"), task="topk", user="user",
                        item="item")
# One dim, every user scores items 0 > 1 > 2 > 3 > 4.
USER_EMB = np.ones((4, 1), np.float32)
ITEM_EMB = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], np.float32)
EXCLUDE = [[0], [], [1], [0]]
TARGET = [[2, 4], [0], [], [0, 1]]
D2 = 1.0 / np.log2(3.0)  # discount of rank 2


def _write_split(directory: str, split: str, rows: list[tuple[str, str, str]]) -> None:
    with open(os.path.join(directory, f"{split}.csv"), "w") as f:
        f.write("label,user,item\n" + "".join(",".join(r) + "\n" for r in rows))


def _tiny_dataset(directory: str) -> PreparedDataset:
    _write_split(directory, "train", [("1", "10", "b"), ("1", "9", "b"), ("1", "9", "a"),
                                      ("1", "10", "b"), ("0", "11", "c")])
    _write_split(directory, "eval", [("1", "9", "b"), ("1", "11", "a"), ("1", "10", "c")])
    _write_split(directory, "test", [("1", "10", "a"), ("1", "10", "b")])
    dataset = PreparedDataset(name="tiny", directory=directory, spec=TOPK_SPEC)
    dataset.write_manifest()
    return dataset


def test_evaluate_topk_golden_values():
    # k = 2.  user 0: ranking 1,2,3,4 (0 excluded) -> top [1, 2], hit at rank 2 of 2 targets.
    #         user 1: top [0, 1], hit at rank 1 of 1 target.
    #         user 2: no target, skipped.
    #         user 3: top [1, 2], target 0 excluded so never a hit; hit item 1 at rank 1 of 2.
    metrics = evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=2)
    ideal_two = 1.0 + D2
    recalls = [1 / 2, 1.0, 1 / 2]
    ndcgs = [D2 / ideal_two, 1.0, 1.0 / ideal_two]
    assert metrics["users"] == 3
    np.testing.assert_allclose(metrics["recall@2"], np.mean(recalls), rtol=1e-6)
    np.testing.assert_allclose(metrics["ndcg@2"], np.mean(ndcgs), rtol=1e-6)


def test_evaluate_topk_is_independent_of_the_user_batch_and_clips_k():
    whole = evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=2)
    assert evaluate_topk(USER_EMB, ITEM_EMB, UserItems.from_lists(EXCLUDE),
                         UserItems.from_lists(TARGET), k=2, batch_users=1) == whole
    # k = 20 > 5 items: every non-excluded target is found, an excluded one never is.
    clipped = evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=20)
    np.testing.assert_allclose(clipped["recall@20"], (1.0 + 1.0 + 0.5) / 3, rtol=1e-6)


def test_target_hits_golden_values_match_the_recall():
    # The pairs of TARGET in order: (0, 2) (0, 4) (1, 0) (3, 0) (3, 1); the tops as above.
    expected = [True, False, True, False, True]
    for batch_users in (1, 1024):
        hits = target_hits(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=2, batch_users=batch_users)
        assert hits.tolist() == expected
    users, _ = UserItems.from_lists(TARGET).pairs()
    per_user = np.bincount(users, hits) / np.maximum(np.bincount(users), 1)
    recall = evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=2)["recall@2"]
    np.testing.assert_allclose(per_user[[0, 1, 3]].mean(), recall, rtol=1e-6)
    assert target_hits(USER_EMB, ITEM_EMB, EXCLUDE, [[], [], [], []], k=2).shape == (0,)
    with pytest.raises(ValueError, match="k must be positive"):
        target_hits(USER_EMB, ITEM_EMB, EXCLUDE, TARGET, k=0)


def test_evaluate_topk_with_no_targets_and_bad_sizes():
    assert evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE, [[], [], [], []], k=2)["users"] == 0
    with pytest.raises(ValueError, match="all 4 users"):
        evaluate_topk(USER_EMB, ITEM_EMB, EXCLUDE[:3], TARGET[:3])


def test_user_items_sorts_merges_and_unions():
    table = UserItems.from_pairs(np.array([2, 0, 2, 2]), np.array([5, 1, 3, 5]), num_users=3)
    assert [table[u].tolist() for u in range(3)] == [[1], [], [3, 5]]
    rows, items = table.rows_of(np.array([2, 0]))
    assert rows.tolist() == [0, 0, 1] and items.tolist() == [3, 5, 1]
    union = table.union(UserItems.from_lists([[0], [4], [3]]))
    assert [union[u].tolist() for u in range(3)] == [[0, 1], [4], [3, 5]]


def test_load_topk_indexes_train_ids_and_drops_unseen(tmp_path):
    data = load_topk(_tiny_dataset(str(tmp_path)))
    # Ids ordered by (length, text): "9" < "10"; "a" < "b"; the label-0 row is no interaction.
    assert data.user_ids.tolist() == ["9", "10"] and data.item_ids.tolist() == ["a", "b"]
    assert (data.num_users, data.num_items) == (2, 2)
    assert data.train_pairs.tolist() == [[0, 0], [0, 1], [1, 1]]  # the duplicate merged
    assert [data.eval_items_by_user[u].tolist() for u in range(2)] == [[1], []]
    assert [data.test_items_by_user[u].tolist() for u in range(2)] == [[], [0, 1]]
    assert data.dropped == {"eval": 2, "test": 0}  # user "11" and item "c" are unseen


def test_load_topk_rejects_a_ctr_dataset(tmp_path):
    spec = FeatureSpec(label="label", categorical=("user", "item"))
    with pytest.raises(DatasetError, match="topk"):
        load_topk(PreparedDataset(name="ctr", directory=str(tmp_path), spec=spec))


def test_evaluate_split_can_also_exclude_eval_items_for_test():
    data = topk_data_from_interactions(([0, 1, 1, 1], [0, 1, 2, 3]), ([0], [1]),
                                       ([0, 0], [2, 3]))
    user_emb = np.ones((2, 1), np.float32)
    item_emb = np.array([[4.0], [3.0], [2.0], [1.0]], np.float32)  # ranks items 0 > 1 > 2 > 3
    # user 0 (train {0}, eval {1}, test {2, 3}): the top-1 is eval item 1 under the LightGCN++
    # protocol, and test item 2 once the eval items are excluded too.
    lightgcn = evaluate_split(data, user_emb, item_emb, "test", k=1)
    with_eval = evaluate_split(data, user_emb, item_emb, "test", k=1, exclude_eval=True)
    assert (lightgcn["recall@1"], with_eval["recall@1"]) == (0.0, 0.5)
    assert evaluate_split(data, user_emb, item_emb, "eval", k=1)["recall@1"] == 1.0
    with pytest.raises(ValueError, match="split"):
        evaluate_split(data, user_emb, item_emb, "train")
    metrics = ranked_test_metrics(data, user_emb, item_emb, k=1)
    assert metrics == {"recall@1": 0.0, "ndcg@1": 0.0, "recall@1_excluding_eval": 0.5,
                       "ndcg@1_excluding_eval": 1.0}


def test_sample_negatives_avoids_train_items():
    table = UserItems.from_lists([[0, 1, 2], [5], [0, 1, 2, 3, 4]])
    users = np.repeat(np.arange(3), 500)
    negatives = sample_negatives(table, users, num_items=6, rng=np.random.default_rng(0))
    for u in range(3):
        drawn = set(negatives[users == u].tolist())
        assert drawn == set(range(6)) - set(table[u].tolist())
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(UserItems.from_lists([[0, 1]]), np.array([0]), 2,
                         np.random.default_rng(0))


def _planted(seed: int = 0, clusters: int = 6, size: int = 10):
    """Users of cluster c like exactly the items of cluster c; each liked set split 6/2/2."""
    rng = np.random.default_rng(seed)
    splits: dict[str, tuple[list[int], list[int]]] = {s: ([], []) for s in ("tr", "ev", "te")}
    for c in range(clusters):
        for user in range(c * size, (c + 1) * size):
            items = rng.permutation(np.arange(c * size, (c + 1) * size))
            for name, part in (("tr", items[:6]), ("ev", items[6:8]), ("te", items[8:])):
                splits[name][0].extend([user] * len(part))
                splits[name][1].extend(part.tolist())
    return topk_data_from_interactions(splits["tr"], splits["ev"], splits["te"])


def test_train_bpr_learns_planted_clusters_and_keeps_the_best_weights():
    data = _planted()
    assert (data.num_users, data.num_items) == (60, 60)
    result = train_bpr(data, dim=16, learning_rate=0.05, batch_size=64, l2=0.0, max_epochs=30,
                       patience=30, seed=0, eval_every=3, k=5)
    # Random top-5 of the 54 unseen items finds 5/54 ~ 0.09 of the eval items.
    assert result.best_eval["recall@5"] > 0.6
    users, items = (t.numpy() for t in result.model.embedding_tables())
    restored = evaluate_split(data, users, items, "eval", k=5)
    assert restored["recall@5"] == pytest.approx(result.best_eval["recall@5"])
    assert evaluate_split(data, users, items, "test", k=5)["recall@5"] > 0.5
    assert result.history[-1]["epoch"] == 30 and result.stop_reason == "max_epochs"
    assert result.history[result.best_epoch - 1]["eval_recall@5"] == result.best_eval["recall@5"]
    assert result.embedding_params == (60 + 60) * 16
    assert result.train_seconds > 0 and result.examples_per_second > 0


def test_refit_trains_on_train_plus_eval_and_ranks_without_both():
    data = _planted()
    merged = with_eval_in_train(data)
    assert len(merged.train_pairs) == len(data.train_pairs) + 60 * 2  # 6 + 2 per user
    for user in (0, 17, 59):
        assert set(merged.train_items_by_user[user]) == (
            set(data.train_items_by_user[user]) | set(data.eval_items_by_user[user]))
    assert len(data.train_pairs) == 60 * 6  # the input is left as it was
    model, ranked_with, seconds = refit_bpr(data, 30, dim=16, learning_rate=0.05,
                                            batch_size=64, l2=0.0, seed=0)
    assert seconds > 0 and model.embedding_params() == (60 + 60) * 16
    users, items = (t.numpy() for t in model.embedding_tables())
    # Test items are the 2 of each user's 10 cluster items outside train + eval: with those 8
    # excluded, a model that learnt the clusters ranks them first (random: 2/52 ~ 0.04).
    assert evaluate_split(ranked_with, users, items, "test", k=2)["recall@2"] > 0.6
    with pytest.raises(ValueError, match="epochs must be positive"):
        refit_bpr(data, 0)


def test_train_bpr_with_a_learned_pointwise_loss_learns_planted_clusters():
    nodes = [("log", [0]), ("multiply", [1, 3]),  # 3: log ŷ, 4: y log ŷ
             ("negate", [0]), ("add", [5, 2]), ("log", [6]),  # 5: -ŷ, 6: 1 - ŷ, 7: log(1 - ŷ)
             ("negate", [1]), ("add", [8, 2]), ("multiply", [9, 7]),  # 10: (1 - y) log(1 - ŷ)
             ("add", [4, 10]), ("negate", [11])]  # 12: the logloss
    logloss = {"kind": "autolossgen", "clamp": None,
               "nodes": [{"op": op, "inputs": inputs} for op, inputs in nodes]}
    result = train_bpr(_planted(), dim=16, learning_rate=0.05, batch_size=64, l2=0.0,
                       max_epochs=30, patience=30, seed=0, eval_every=3, k=5, loss=logloss)
    assert result.best_eval["recall@5"] > 0.6  # random: ~0.09
    assert result.history[0]["loss"] > result.history[-1]["loss"] > 0


def test_train_bpr_stops_on_patience_and_on_time():
    data = _planted(clusters=2)
    by_patience = train_bpr(data, dim=4, learning_rate=0.0, batch_size=64, max_epochs=20,
                            patience=2, k=5, jit_compile=False)
    assert by_patience.stop_reason == "patience" and by_patience.best_epoch == 1
    assert len(by_patience.history) == 3
    by_time = train_bpr(data, dim=4, batch_size=64, max_epochs=20, max_seconds=0.0, k=5)
    assert by_time.stop_reason == "max_seconds" and len(by_time.history) == 1
    assert "eval_recall@5" in by_time.history[0]


def test_patience_does_not_stop_training_before_min_epochs():
    # learning rate 0: every evaluation ties the first, so patience 2 would stop at epoch 3
    result = train_bpr(_planted(clusters=2), dim=4, learning_rate=0.0, batch_size=64,
                       max_epochs=20, patience=2, k=5, jit_compile=False, min_epochs=6)
    assert result.stop_reason == "patience" and result.best_epoch == 1
    assert len(result.history) == 6


def test_train_bpr_needs_eval_interactions():
    data = topk_data_from_interactions(([0, 1], [0, 1]), ([], []), ([0], [1]))
    with pytest.raises(ValueError, match="eval"):
        train_bpr(data)


def test_a_search_past_the_memory_map_limit_is_warned_about(caplog):
    if not os.path.exists("/proc/sys/vm/max_map_count"):
        pytest.skip("no /proc/sys/vm/max_map_count")
    assert not warn_if_past_map_limit(0, "nothing")
    assert warn_if_past_map_limit(10**6, "A huge search")
    assert "A huge search plans up to 1000000 MF trainings" in caplog.text
    assert "vm.max_map_count" in caplog.text
