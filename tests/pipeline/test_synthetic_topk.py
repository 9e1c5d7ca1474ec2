"""The synthetic top-k generator: layout, per-user split, planted structure, registry."""

import csv
import os
from collections import defaultdict

import pytest

from pipeline.datasets import NEEDS_NO_DATA, DatasetError, PreparedDataset, prepare_dataset
from pipeline.datasets.synthetic_topk import generate_synthetic_topk


def _pairs(directory: str, split: str) -> list[tuple[str, str, str]]:
    with open(os.path.join(directory, f"{split}.csv"), newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["label", "user", "item"]
        return [tuple(row) for row in reader]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stk") / "o")
    return generate_synthetic_topk(out, seed=3, n_users=120, n_items=100)


def test_layout_and_spec(small):
    loaded = PreparedDataset.load(small.directory)
    assert loaded.spec.task == "topk" and (loaded.spec.user, loaded.spec.item) == ("user", "item")
    assert loaded.metadata["ground_truth"]["n_users"] == 120
    rows = {s: _pairs(small.directory, s) for s in ("train", "eval", "test")}
    assert {label for split in rows.values() for label, _, _ in split} == {"1"}
    assert small.metadata["rows"] == {s: len(r) for s, r in rows.items()}
    assert sum(len(r) for r in rows.values()) == small.metadata["ground_truth"]["interactions"]


def test_split_is_per_user_and_disjoint(small):
    by_user: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for split in ("train", "eval", "test"):
        for _, user, item in _pairs(small.directory, split):
            assert item not in by_user[user][split], "duplicate interaction"
            by_user[user][split].add(item)
    assert len(by_user) == 120
    for splits in by_user.values():
        assert splits["eval"] and splits["test"] and len(splits["train"]) >= 7
        assert not (splits["train"] & splits["eval"] or splits["train"] & splits["test"]
                    or splits["eval"] & splits["test"])


def test_planted_structure_beats_popularity_beats_random(small):
    truth = small.metadata["ground_truth"]
    oracle, popularity, random = (truth[f"{name}_test_recall@20"]
                                  for name in ("oracle", "popularity", "random"))
    assert oracle > popularity + 0.2 and popularity > random > 0
    assert len(truth["user_cluster"]) == 120 and len(truth["item_cluster"]) == 100


def test_deterministic_and_seeded(tmp_path):
    a = generate_synthetic_topk(str(tmp_path / "a"), seed=1, n_users=30, n_items=80)
    b = generate_synthetic_topk(str(tmp_path / "b"), seed=1, n_users=30, n_items=80)
    c = generate_synthetic_topk(str(tmp_path / "c"), seed=2, n_users=30, n_items=80)
    assert _pairs(a.directory, "train") == _pairs(b.directory, "train")
    assert _pairs(a.directory, "train") != _pairs(c.directory, "train")


def test_registry_entry_needs_no_data_dir(tmp_path):
    assert "synthetic_topk" in NEEDS_NO_DATA
    dataset = prepare_dataset("synthetic_topk", str(tmp_path / "o"), seed=4, n_users=20,
                              n_items=80)
    assert dataset.name == "synthetic_topk" and dataset.metadata["ground_truth"]["seed"] == 4


@pytest.mark.parametrize("options, needle", [
    ({"n_items": 20}, "n_items >= 80"),
    ({"n_clusters": 0}, "n_clusters"),
    ({"min_items": 2}, "min_items"),
    ({"eval_fraction": 0.6, "test_fraction": 0.5}, "fractions"),
])
def test_bad_options_name_the_dataset(tmp_path, options, needle):
    with pytest.raises(DatasetError, match=f"synthetic_topk: .*{needle}"):
        generate_synthetic_topk(str(tmp_path / "o"), **options)
