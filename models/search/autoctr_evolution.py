"""AutoCTR's evolution: random DAGs, mutation, the pairwise ranker and multi-objective aging
evolution with tournament selection, resumable from a JSON state file. No TensorFlow here: a
trial is scored by the ``score(dag) -> (reward, cost)`` function the caller passes.

Song et al., KDD 2020 (arXiv 2007.06434), Sec. 3.3-3.4; official ``nasrec/
evolutionary_controller.py`` and ``scripts/search.py`` (``--survival-type comb``):

* the population is the ``P`` archs with the smallest ``0.1 rank(reward) + 1.0 age +
  0.1 rank(cost)`` among the ``2P`` most recent (ranks and age 0 = best / newest);
* a parent is the best of ``C`` population members drawn at random (tournament);
* a child is the parent with one token resampled (block type, one input edge, MLP widths, FM
  output, or a block added / removed); ``num_mutants`` distinct unseen children are made and
  the ranker's favourite is scored.

The first trials can be given (``initial``, e.g. the baseline DeepFM written as a DAG; as
keras-tuner's first trial uses the default hyper-parameters); random DAGs fill the rest of the
first population.

The ranker is a pairwise learning-to-rank model: scikit-learn's ``GradientBoostingClassifier``
on feature differences ``phi(a) - phi(b)`` labelled ``reward(a) > reward(b)`` (RankNet-style
pairs; the official code uses LightGBM LambdaRank, which is not installed here). A child's
score is its mean predicted win probability against the archs scored so far.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.autoctr_dag import BLOCK_TYPES, FM_OUTPUTS, MAX_MLP_LAYERS, MLP_UNITS, check_dag, sinks

STATE_FILE = "autoctr_state.json"
STATE_VERSION = 1
FEATURES_PER_BLOCK = 11


def canonical(dag: dict) -> str:
    return json.dumps(dag, sort_keys=True)


def random_block(rng: np.random.Generator, index: int, raw: list[str]) -> dict:
    """A random block at position ``index`` reading 1-2 of the raw inputs and earlier blocks."""
    sources: list[Any] = [*raw, *range(index)]
    count = 1 + int(rng.random() < 0.5 and len(sources) > 1)
    chosen = [sources[i] for i in sorted(rng.choice(len(sources), count, replace=False))]
    return _with_type({"inputs": chosen}, str(rng.choice(BLOCK_TYPES)), rng)


def _with_type(block: dict, kind: str, rng: np.random.Generator) -> dict:
    block = {"type": kind, "inputs": block["inputs"]}
    if kind == "mlp":
        block["units"] = _random_units(rng)
    elif kind == "fm":
        block["output"] = str(rng.choice(FM_OUTPUTS))
    return block


def _random_units(rng: np.random.Generator) -> list[int]:
    widths = sorted(rng.choice(MLP_UNITS, int(rng.integers(1, MAX_MLP_LAYERS + 1))), reverse=True)
    return [int(w) for w in widths]


def random_dag(rng: np.random.Generator, raw: list[str], max_blocks: int) -> dict:
    """1 to ``min(3, max_blocks)`` random blocks, repaired into a valid DAG."""
    count = int(rng.integers(1, min(3, max_blocks) + 1))
    return repair({"blocks": [random_block(rng, i, raw) for i in range(count)]})


def repair(dag: dict) -> dict:
    """Makes every block valid: no duplicate inputs, and an FM / dot block that would see a
    single vector also reads ``"sparse"``."""
    for block in dag["blocks"]:
        unique: list[Any] = []
        for source in block["inputs"]:
            if source not in unique:
                unique.append(source)
        block["inputs"] = unique or ["sparse"]
        if block["type"] != "mlp" and block["inputs"] == [block["inputs"][0]] != ["sparse"]:
            block["inputs"].insert(0, "sparse")
    return dag


def remove_block(dag: dict, index: int) -> dict:
    """``dag`` without block ``index``; edges to it are dropped and later indices shift."""
    blocks = []
    for position, block in enumerate(dag["blocks"]):
        if position == index:
            continue
        inputs = [s if not isinstance(s, int) or s < index else s - 1
                  for s in block["inputs"] if s != index]
        blocks.append({**block, "inputs": inputs})
    return repair({"blocks": blocks})


def mutate(dag: dict, rng: np.random.Generator, raw: list[str], max_blocks: int) -> dict:
    """One token of a random block resampled (the official ``mutate``), or a block added /
    removed. The result is repaired into a valid DAG."""
    child = json.loads(canonical(dag))
    blocks = child["blocks"]
    index = int(rng.integers(len(blocks)))
    block = blocks[index]
    tokens = ["type", "edge", "edge"]
    tokens += ["units"] if block["type"] == "mlp" else ["output"] if block["type"] == "fm" else []
    tokens += ["add"] if len(blocks) < max_blocks else []
    tokens += ["remove"] if len(blocks) > 1 else []
    token = str(rng.choice(tokens))
    if token == "type":
        blocks[index] = _with_type(block, str(rng.choice(
            [t for t in BLOCK_TYPES if t != block["type"]])), rng)
    elif token == "edge":
        source = [*raw, *range(index)][int(rng.integers(len(raw) + index))]
        if source in block["inputs"] and len(block["inputs"]) > 1:
            block["inputs"].remove(source)
        elif source not in block["inputs"]:
            block["inputs"].append(source)
    elif token == "units":
        block["units"] = _random_units(rng)
    elif token == "output":
        block["output"] = "vector" if block["output"] == "scalar" else "scalar"
    elif token == "add":
        blocks.append(random_block(rng, len(blocks), raw))
    else:
        return remove_block(child, index)
    return repair(child)


def features(dag: dict, max_blocks: int) -> np.ndarray:
    """Fixed-length encoding for the ranker: per block slot (type one-hot, raw inputs read,
    block inputs, MLP depth and log-width, FM output, sink), then block counts."""
    out = np.zeros(FEATURES_PER_BLOCK * max_blocks + 5)
    ends = set(sinks(dag))
    for i, block in enumerate(dag["blocks"][:max_blocks]):
        units = block.get("units", [])
        out[i * FEATURES_PER_BLOCK:(i + 1) * FEATURES_PER_BLOCK] = [
            1.0, *(block["type"] == t for t in BLOCK_TYPES), "sparse" in block["inputs"],
            "dense" in block["inputs"], sum(isinstance(s, int) for s in block["inputs"]),
            len(units), np.log2(sum(units)) if units else 0.0,
            block.get("output") == "vector", i in ends]
    base = FEATURES_PER_BLOCK * max_blocks
    out[base:] = [len(dag["blocks"]), *(sum(b["type"] == t for b in dag["blocks"])
                                        for t in BLOCK_TYPES), len(ends)]
    return out


class PairwiseRanker:
    """Gradient-boosted pairwise ranker (module docstring): ``fit(X, rewards)``, then
    ``score(candidates, reference)`` = mean ``P(candidate beats r)`` over the reference rows."""

    def __init__(self, seed: int, max_pairs: int = 4000) -> None:
        from sklearn.ensemble import GradientBoostingClassifier  # noqa: PLC0415

        self.model = GradientBoostingClassifier(n_estimators=100, max_depth=3,
                                                learning_rate=0.1, subsample=0.8,
                                                random_state=seed)
        self.max_pairs = max_pairs
        self.rng = np.random.default_rng(seed)

    def fit(self, x: np.ndarray, rewards: np.ndarray) -> PairwiseRanker:
        left, right = np.triu_indices(len(rewards), k=1)
        keep = rewards[left] != rewards[right]
        left, right = left[keep], right[keep]
        if len(left) > self.max_pairs:
            chosen = self.rng.choice(len(left), self.max_pairs, replace=False)
            left, right = left[chosen], right[chosen]
        diffs = np.concatenate([x[left] - x[right], x[right] - x[left]])
        wins = rewards[left] > rewards[right]
        self.model.fit(diffs, np.concatenate([wins, ~wins]).astype(int))
        return self

    def score(self, candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
        diffs = (candidates[:, None, :] - reference[None, :, :]).reshape(-1, candidates.shape[1])
        wins = self.model.predict_proba(diffs)[:, 1]
        return wins.reshape(len(candidates), len(reference)).mean(axis=1)


def population(trials: list[dict], size: int, weights: tuple[float, float, float]) -> list[int]:
    """Indices into ``trials`` of the population: the ``size`` smallest ``w_fit rank(reward)
    + w_age age + w_cost rank(cost)`` among the ``2 size`` most recent trials."""
    recent = list(range(max(0, len(trials) - 2 * size), len(trials)))
    rewards = np.array([trials[i]["reward"] for i in recent])
    costs = np.array([trials[i]["cost"] for i in recent])
    reward_rank = np.argsort(np.argsort(-rewards, kind="stable"), kind="stable")
    cost_rank = np.argsort(np.argsort(costs, kind="stable"), kind="stable")
    age = np.arange(len(recent))[::-1]
    weight = weights[0] * reward_rank + weights[1] * age + weights[2] * cost_rank
    return [recent[i] for i in sorted(np.argsort(weight, kind="stable")[:size])]


def tournament(trials: list[dict], members: list[int], size: int,
               rng: np.random.Generator) -> int:
    """The best-reward member among ``size`` drawn at random without replacement."""
    drawn = rng.choice(members, min(size, len(members)), replace=False)
    return int(max(drawn, key=lambda i: trials[int(i)]["reward"]))


def load_state(path: str | None, fingerprint: dict) -> dict | None:
    """The saved state at ``path`` when it exists and was made with ``fingerprint``."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    if state.get("version") != STATE_VERSION or state.get("fingerprint") != fingerprint:
        logging.warning("autoctr: %s was made with other settings; starting a new search.", path)
        return None
    return state


def save_state(path: str | None, state: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump(state, f)
    os.replace(path + ".partial", path)


def evolve(score: Callable[[dict], tuple[float, float]], options: dict, raw: list[str],
           seed: int, fingerprint: dict, state_path: str | None = None,
           initial: list[dict] | None = None) -> dict:
    """Runs (or resumes) the evolution until ``max_trials`` trials or ``max_seconds`` seconds
    (a trial that started before the limit finishes); ``initial`` DAGs are the first trials
    (``how`` = ``"initial"``). Returns the state: ``trials`` (each with
    ``trial``, ``dag``, ``reward``, ``cost``, ``seconds``, ``how``, ``best_so_far``),
    ``seconds``, ``stopped_by``, ``resumed_at``."""
    state = load_state(state_path, fingerprint)
    resumed_at = len(state["trials"]) + 1 if state else None
    if state is None:
        state = {"version": STATE_VERSION, "fingerprint": fingerprint, "trials": [],
                 "seconds": 0.0, "rng": np.random.default_rng(seed).bit_generator.state}
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    trials: list[dict] = state["trials"]
    seen = {canonical(t["dag"]) for t in trials}
    max_blocks, size = int(options["max_blocks"]), int(options["population"])
    weights = (float(options["reward_weight"]), float(options["age_weight"]),
               float(options["cost_weight"]))
    start, before = time.perf_counter(), float(state["seconds"])
    stopped_by = "trials"
    while len(trials) < int(options["max_trials"]):
        if before + time.perf_counter() - start >= float(options["max_seconds"]):
            stopped_by = "seconds"
            break
        if len(trials) < len(initial or []):
            dag, how = initial[len(trials)], "initial"
        else:
            dag, how = _next_dag(trials, seen, rng, raw, options, seed, max_blocks, size,
                                 weights)
        check_dag(dag, has_dense="dense" in raw)
        trial_start = time.perf_counter()
        reward, cost = score(dag)
        best = max([reward, *(t["reward"] for t in trials)])
        trials.append({"trial": len(trials) + 1, "dag": dag, "reward": float(reward),
                       "cost": float(cost), "seconds": time.perf_counter() - trial_start,
                       "how": how, "best_so_far": float(best)})
        seen.add(canonical(dag))
        state["seconds"] = before + time.perf_counter() - start
        state["rng"] = rng.bit_generator.state
        save_state(state_path, state)
        logging.info("autoctr trial %d/%d (%s): val AUC %.4f, cost %d, best so far %.4f, "
                     "%.0f s", len(trials), int(options["max_trials"]), how, reward, cost, best,
                     state["seconds"])
    return {**state, "stopped_by": stopped_by, "resumed_at": resumed_at}


def _next_dag(trials: list[dict], seen: set[str], rng: np.random.Generator, raw: list[str],
              options: dict, seed: int, max_blocks: int, size: int,
              weights: tuple[float, float, float]) -> tuple[dict, str]:
    """A random DAG while the population fills, then the ranker's pick among mutants (the
    first mutant while every trial has scored the same: no pair to rank)."""
    if len(trials) < size:
        for _ in range(100):
            dag = random_dag(rng, raw, max_blocks)
            if canonical(dag) not in seen:
                return dag, "random"
        return dag, "random"
    parent = trials[tournament(trials, population(trials, size, weights),
                               int(options["tournament"]), rng)]["dag"]
    mutants: dict[str, dict] = {}
    for _ in range(20 * int(options["num_mutants"])):
        child = mutate(parent, rng, raw, max_blocks)
        if canonical(child) not in seen:
            mutants.setdefault(canonical(child), child)
        if len(mutants) >= int(options["num_mutants"]):
            break
    if not mutants:
        return random_dag(rng, raw, max_blocks), "random"
    children = list(mutants.values())
    rewards = np.array([t["reward"] for t in trials])
    if (len(trials) < int(options["ranker_min_trials"]) or len(children) == 1
            or np.all(rewards == rewards[0])):  # no pair to learn a ranking from
        return children[0], "mutant"
    x = np.stack([features(t["dag"], max_blocks) for t in trials])
    ranker = PairwiseRanker(seed + len(trials)).fit(x, rewards)
    scores = ranker.score(np.stack([features(c, max_blocks) for c in children]), x)
    return children[int(np.argmax(scores))], "ranked"
