"""AutoLossGen losses: a small DAG over ``(y_hat, y, 1)`` stored as JSON, run by an interpreter.

Reference: Zelong Li, Jianchao Ji, Yingqiang Ge, Yongfeng Zhang, "AutoLossGen: Automatic Loss
Function Generation for Recommender Systems", SIGIR 2022 (arXiv 2204.13160); official code
``rutgerswiselab/AutoLossGen`` (``src/models/LossFormula.py``).

A loss is data::

    {"kind": "autolossgen",
     "nodes": [{"op": "reciprocal", "inputs": [0]},       # node 3 = 1 / (y_hat + eps)
               {"op": "multiply", "inputs": [1, 3]}],     # node 4 = y * node 3  (the loss)
     "epsilon": 1e-6, "clamp": [1e-5, 1e5]}

Nodes 0, 1, 2 are the prediction ``y_hat`` (a probability), the label ``y`` and the constant 1;
node ``k >= 3`` is ``nodes[k - 3]``, an operator of ``OPERATORS`` applied to one (unary) or two
distinct (binary) earlier nodes, so a spec is acyclic by construction. The last node is the
per-example loss, averaged over the batch. As in the official code, every computed node is
clamped, ``v_k = clip(op(v_i[, v_j]), 1e-5, 1e5)``, so intermediate values stay positive and
finite (``"clamp": null`` switches that off, e.g. to write logloss as a DAG); the one exception is
``complement`` of the label, ``1 - y``, which stays exactly 0 or 1 (since session 14). The operators
(official ids 0-8, ``eps = 1e-6``)::

    add a + b    multiply a * b    max max(a, b)    min min(a, b)
    negate -a    identity a        log sign(a) log(|a| + eps)
    square a^2   reciprocal sign(a) / (|a| + eps)

and one of ours, ``complement`` ``1 - a`` (not searched: the fixed nodes of the ``"mirror"``
search space, ``models.search.autolossgen.layout``, write ``1 - y_hat`` and ``1 - y`` with it).

The spec is never run as code: ``validate`` checks it against this schema (operator names from a
fixed table, integer node indices, numbers) and the interpreter maps each name to a TF function.
A loss file (``load_loss_file``) holds a spec, or an Architecture JSON with one under ``"loss"``;
an optional ``"formula"`` text beside the spec is for people and is ignored.

Example:

>>> spec = {"kind": "autolossgen", "nodes": [{"op": "reciprocal", "inputs": [0]},
...                                          {"op": "multiply", "inputs": [1, 3]}]}
>>> describe(spec)
'y * 1/ŷ'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import ArchitectureError

KIND = "autolossgen"
INPUT_NAMES = ("ŷ", "y", "1")  # nodes 0, 1, 2
NUM_INPUTS = len(INPUT_NAMES)
EPSILON = 1e-6
CLAMP = (1e-5, 1e5)
MAX_NODES = 64
SPEC_KEYS = ("kind", "nodes", "epsilon", "clamp", "formula")

_UNARY: dict[str, Callable[[tf.Tensor, float], tf.Tensor]] = {
    "negate": lambda a, eps: -a,
    "identity": lambda a, eps: a,
    "log": lambda a, eps: tf.sign(a) * tf.math.log(tf.abs(a) + eps),
    "square": lambda a, eps: tf.square(a),
    "reciprocal": lambda a, eps: tf.sign(a) / (tf.abs(a) + eps),
    "complement": lambda a, eps: 1.0 - a,  # ours (not official): 1 - a
}
_BINARY: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "add": tf.add, "multiply": tf.multiply, "max": tf.maximum, "min": tf.minimum,
}
# Operator name -> arity, in the official id order (0-3 binary, 4-8 unary), then ours.
OPERATORS: dict[str, int] = {**dict.fromkeys(_BINARY, 2), **dict.fromkeys(_UNARY, 1)}
OFFICIAL_OPERATORS = tuple(op for op in OPERATORS if op != "complement")  # official ids 0-8


class LossFormulaError(ArchitectureError):
    """A loss spec or loss file that is not a valid AutoLossGen DAG; names the bad node."""


def validate(spec: Any) -> dict:
    """Checks ``spec`` against the schema and returns a canonical copy (defaults filled in,
    ``"formula"`` text dropped). Raises ``LossFormulaError`` naming the offending node or key."""
    if not isinstance(spec, dict):
        raise LossFormulaError(f"An AutoLossGen loss is a JSON object. Received: {spec!r:.120}")
    if spec.get("kind") != KIND:
        raise LossFormulaError(f"loss kind must be {KIND!r}. "
                               f"Received: kind={spec.get('kind')!r:.80}")
    unknown = sorted(str(k) for k in set(spec) - set(SPEC_KEYS))
    if unknown:
        raise LossFormulaError(f"loss has unknown keys {unknown}; known: {list(SPEC_KEYS)}.")
    nodes = spec.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise LossFormulaError(f"loss needs a non-empty list 'nodes'. Received: {nodes!r:.120}")
    if len(nodes) > MAX_NODES:
        raise LossFormulaError(f"loss has {len(nodes)} nodes; at most {MAX_NODES}.")
    canonical = []
    for position, node in enumerate(nodes):
        index = NUM_INPUTS + position
        if not isinstance(node, dict) or set(node) != {"op", "inputs"}:
            raise LossFormulaError(f"node {index}: a node is {{'op': NAME, 'inputs': [i, ...]}}. "
                                   f"Received: {node!r:.120}")
        op, inputs = node["op"], node["inputs"]
        if not isinstance(op, str) or op not in OPERATORS:
            raise LossFormulaError(f"node {index}: unknown operator {op!r:.80}; known: "
                                   f"{list(OPERATORS)}.")
        arity = OPERATORS[op]
        if (not isinstance(inputs, list) or len(inputs) != arity
                or not all(type(i) is int for i in inputs)):
            raise LossFormulaError(f"node {index}: operator {op!r} takes {arity} node index(es). "
                                   f"Received: inputs={inputs!r:.80}")
        bad = [i for i in inputs if not 0 <= i < index]
        if bad:
            raise LossFormulaError(f"node {index} ({op}): inputs {bad} are not earlier nodes; "
                                   f"inputs must be in [0, {index}) (a loss DAG has no cycles).")
        if arity == 2 and inputs[0] == inputs[1]:
            raise LossFormulaError(f"node {index} ({op}): a binary operator takes two distinct "
                                   f"nodes. Received: inputs={inputs}")
        canonical.append({"op": op, "inputs": list(inputs)})
    epsilon = spec.get("epsilon", EPSILON)
    if not _number(epsilon) or not 0 < epsilon < 1:
        raise LossFormulaError(f"loss epsilon must be a number in (0, 1). "
                               f"Received: {epsilon!r:.40}")
    clamp = spec.get("clamp", list(CLAMP))
    if clamp is not None and (not isinstance(clamp, list) or len(clamp) != 2
                              or not all(_number(c) for c in clamp) or not clamp[0] < clamp[1]):
        raise LossFormulaError(f"loss clamp must be null or [low, high] with low < high. "
                               f"Received: {clamp!r:.60}")
    return {"kind": KIND, "nodes": canonical, "epsilon": float(epsilon),
            "clamp": None if clamp is None else [float(c) for c in clamp]}


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def reachable(spec: dict) -> list[int]:
    """Indices of the nodes the output (the last node) depends on, in increasing order."""
    nodes = spec["nodes"]
    seen, todo = set(), [NUM_INPUTS + len(nodes) - 1]
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        if index >= NUM_INPUTS:
            todo.extend(nodes[index - NUM_INPUTS]["inputs"])
    return sorted(seen)


def evaluate(spec: dict, y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """The last node's value per element of ``y_pred`` (same shape): the unreduced loss."""
    spec = validate(spec)
    y_pred = tf.convert_to_tensor(y_pred)
    values: dict[int, tf.Tensor] = {0: y_pred, 1: tf.cast(y_true, y_pred.dtype),
                                    2: tf.ones_like(y_pred)}
    epsilon, clamp = spec["epsilon"], spec["clamp"]
    for index in reachable(spec):
        if index < NUM_INPUTS:
            continue
        node = spec["nodes"][index - NUM_INPUTS]
        args = [values[i] for i in node["inputs"]]
        if OPERATORS[node["op"]] == 2:
            out = _BINARY[node["op"]](*args)
        else:
            out = _UNARY[node["op"]](args[0], epsilon)
        exact = clamp is None or _is_label_complement(node)
        values[index] = out if exact else tf.clip_by_value(out, clamp[0], clamp[1])
    return values[NUM_INPUTS + len(spec["nodes"]) - 1]


def _is_label_complement(node: dict) -> bool:
    """``1 - y``, the mirror space's fixed label node: exactly 0 or 1, so it is not clamped (the
    clamp would turn ``1 - y`` into 1e-5 for a positive example and add ``1e-5 f(1 - ŷ)``, with
    its gradient, to every positive's loss)."""
    return node["op"] == "complement" and node["inputs"] == [1]


@keras.utils.register_keras_serializable(package="autorec")
class FormulaLoss(keras.losses.Loss):
    """An AutoLossGen DAG as a tf_keras loss: per example, the DAG's output node.

    Args:
      spec: an AutoLossGen spec (validated here).

    Input shape: ``y_true`` and ``y_pred`` ``[B, 1]`` (labels and probabilities).
    Output shape: ``[B]`` (reduced by Keras, by default the batch mean as in the official code).
    """

    def __init__(self, spec: dict, name: str = "autolossgen", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.spec = validate(spec)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(evaluate(self.spec, y_pred, y_true), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec}


def keras_loss(spec: dict) -> keras.losses.Loss:
    return FormulaLoss(spec)


# Operator -> (template, precedence of the result, least precedence an operand keeps unwrapped).
_TEXT = {"add": ("{} + {}", 1, 1), "multiply": ("{} * {}", 2, 2), "max": ("max({}, {})", 4, 0),
         "min": ("min({}, {})", 4, 0), "negate": ("-{}", 3, 3), "identity": ("{}", None, 0),
         "log": ("log({})", 4, 0), "square": ("{}^2", 4, 4), "reciprocal": ("1/{}", 3, 4),
         "complement": ("1 - {}", 1, 2)}


def _text(spec: dict, index: int) -> tuple[str, int]:
    """The formula of node ``index`` and its precedence (4: an atom or a function call)."""
    if index < NUM_INPUTS:
        return INPUT_NAMES[index], 4
    node = spec["nodes"][index - NUM_INPUTS]
    template, precedence, operand_min = _TEXT[node["op"]]
    args = [_text(spec, i) for i in node["inputs"]]
    if precedence is None:  # identity
        return args[0]
    return template.format(*(t if p >= operand_min else f"({t})" for t, p in args)), precedence


def describe(spec: dict) -> str:
    """The loss as a readable formula (the clamp of every node is implied).

    >>> describe({"kind": "autolossgen", "nodes": [{"op": "add", "inputs": [0, 1]},
    ...                                            {"op": "square", "inputs": [3]}]})
    '(ŷ + y)^2'
    """
    spec = validate(spec)
    return _text(spec, NUM_INPUTS + len(spec["nodes"]) - 1)[0]


def canonical_key(spec: dict) -> str:
    """A string equal for specs that compute the same DAG (unused nodes dropped)."""
    spec = validate(spec)
    keep = [i for i in reachable(spec) if i >= NUM_INPUTS]
    renumber = {**{i: i for i in range(NUM_INPUTS)},
                **{old: NUM_INPUTS + new for new, old in enumerate(keep)}}
    nodes = [{"op": spec["nodes"][i - NUM_INPUTS]["op"],
              "inputs": [renumber[j] for j in spec["nodes"][i - NUM_INPUTS]["inputs"]]}
             for i in keep]
    return json.dumps({"nodes": nodes, "epsilon": spec["epsilon"], "clamp": spec["clamp"]},
                      sort_keys=True)


def pruned(spec: dict) -> dict:
    """``spec`` without the nodes its output does not use (same loss, shorter JSON)."""
    return {"kind": KIND, **json.loads(canonical_key(spec))}


def loss_gradient(spec: dict, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """``d mean(loss) / d y_hat`` at the given points (zeros where the loss ignores ``y_hat``)."""
    x = tf.Variable(np.asarray(y_pred, np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(evaluate(spec, x, tf.constant(np.asarray(y_true, np.float32))))
    grad = tape.gradient(loss, x)
    return np.zeros_like(x.numpy()) if grad is None else grad.numpy()


def direction_check(spec: dict, points: int = 1000, seed: int = 0,
                    epsilon: float = EPSILON) -> dict[str, Any]:
    """The official validity check (``loss_valid_check.py``): at ``points`` random
    ``y_hat in (eps, 1 - eps)``, count ``dL/dy_hat < -eps`` for ``y = 1`` and ``> eps`` for
    ``y = 0``; the loss is valid when more than 60% of the ``2 * points`` checks pass. Derivatives
    are taken by autodiff of the per-example loss (the official code uses finite differences)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(epsilon, 1.0 - epsilon, points).astype(np.float32)
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # The per-example derivative is points x the derivative of the mean.
    d1 = loss_gradient(spec, x, ones) * points
    d0 = loss_gradient(spec, x, zeros) * points
    correct = int(np.sum(d1 < -epsilon) + np.sum(d0 > epsilon))
    return {"correct": correct, "checks": 2 * points, "valid": correct > 1.2 * points}


def load_loss_file(path: str) -> dict:
    """The validated spec in a loss file (a spec, or any JSON object with the spec under
    ``"loss"``, such as an ``architecture.json``). Raises ``LossFormulaError`` for a file that
    is not JSON or not a valid spec, ``FileNotFoundError`` for a missing file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LossFormulaError(f"{path}: a loss file is JSON (an AutoLossGen spec); it is not "
                               f"({e}). Formulas are never read as code.") from e
    if isinstance(data, dict) and "kind" not in data and "loss" in data:
        data = data["loss"]
    try:
        return validate(data)
    except LossFormulaError as e:
        raise LossFormulaError(f"{path}: {e}") from e


def write_loss_file(spec: dict, path: str) -> None:
    """Writes ``spec`` with its readable ``"formula"`` (for people; ignored when loaded)."""
    spec = validate(spec)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**spec, "formula": describe(spec)}, f, indent=2, ensure_ascii=False)
        f.write("\n")


def draw_curves(spec: dict, path: str, title: str | None = None) -> None:
    """The loss over ``y_hat in (0, 1)`` for ``y = 0`` and ``y = 1`` (log scale), beside
    logloss."""
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    x = np.linspace(0.005, 0.995, 199).astype(np.float32)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, label in zip(axes, (0.0, 1.0), strict=True):
        loss = evaluate(spec, tf.constant(x), tf.fill(x.shape, label)).numpy()
        logloss = -np.log(x) if label else -np.log(1.0 - x)
        ax.plot(x, loss, label="found loss", color="tab:blue")
        ax.plot(x, logloss, label="logloss", color="tab:gray", linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("ŷ")
        ax.set_title(f"y = {int(label)}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss (log scale)")
    formula = describe(spec)
    fig.suptitle(f"{title or 'AutoLossGen loss'}\n{formula[:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
