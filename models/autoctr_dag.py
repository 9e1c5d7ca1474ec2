"""AutoCTR's architecture as plain JSON: a DAG of virtual blocks over grouped feature inputs.

Song et al., "Towards Automated Neural Interaction Discovery for Click-Through Rate Prediction",
KDD 2020 (arXiv 2007.06434), Sec. 3 (search space); official code ``facebookresearch/AutoCTR``
(``nasrec``), input groups as in its ``macro_space_type = 2``. A DAG is::

    {"blocks": [{"type": "mlp", "inputs": ["sparse"], "units": [256, 128]},
                {"type": "fm", "inputs": ["sparse"], "output": "scalar"},
                {"type": "dot", "inputs": ["sparse", 0]}]}

* ``inputs`` name the grouped raw features, ``"sparse"`` (the ``[B, F, D]`` field embeddings)
  and ``"dense"`` (the ``[B, n]`` scaled numerical values; only when the data has some), or
  earlier blocks by index. Edges only point backwards, so every DAG is acyclic.
* Every block outputs a dense ``[B, k]`` vector. The blocks that no other block reads (the
  sinks) are concatenated into the logit's input, so every block reaches the output. The model
  adds the fields' first-order (LR) term to the logit, as DeepFM does.

Block types and their hyper-parameters (``BLOCK_TYPES``):

* ``mlp`` (MLP_DENSE): ``units``, 1 to ``MAX_MLP_LAYERS`` widths from ``MLP_UNITS``.
* ``fm`` (FM_EMB): ``output`` ``"scalar"`` (the FM sum) or ``"vector"`` (the ``[B, D]``
  bi-interaction before the sum).
* ``dot`` (DOTPROCESSOR_EMB): no hyper-parameter (all pairwise inner products).

Pure Python (no TensorFlow), so ``models.architecture`` validates DAGs without loading Keras.
"""

from __future__ import annotations

from typing import Any

RAW_INPUTS = ("sparse", "dense")
BLOCK_TYPES = ("mlp", "fm", "dot")
MLP_UNITS = (32, 64, 128, 256, 512, 1024)  # the official micro space (``micro_mlp``)
MAX_MLP_LAYERS = 3
FM_OUTPUTS = ("scalar", "vector")
BLOCK_KEYS = {"mlp": {"type", "inputs", "units"}, "fm": {"type", "inputs", "output"},
              "dot": {"type", "inputs"}}


def check_dag(dag: Any, has_dense: bool) -> None:
    """Raises ``ValueError`` naming the offending block when ``dag`` is not a buildable DAG.

    Args:
      dag: the JSON DAG (see the module docstring).
      has_dense: whether the ``"dense"`` raw input exists (the data has scaled numericals).
    """
    if not isinstance(dag, dict) or not isinstance(dag.get("blocks"), list) or not dag["blocks"]:
        raise ValueError(f"An AutoCTR DAG is a dict with a non-empty 'blocks' list. "
                         f"Received: {dag!r:.200}")
    unknown = sorted(set(dag) - {"blocks"})
    if unknown:
        raise ValueError(f"AutoCTR DAG has unknown keys {unknown}; expected 'blocks' only.")
    for index, block in enumerate(dag["blocks"]):
        _check_block(index, block, has_dense)


def _check_block(index: int, block: Any, has_dense: bool) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    where = f"AutoCTR block {index} ({kind})"
    if kind not in BLOCK_TYPES:
        raise ValueError(f"AutoCTR block {index}: type must be one of {BLOCK_TYPES}. "
                         f"Received: {block!r:.200}")
    extra = sorted(set(block) - BLOCK_KEYS[kind])
    if extra:
        raise ValueError(f"{where}: unknown keys {extra}; expected {sorted(BLOCK_KEYS[kind])}.")
    inputs = block.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValueError(f"{where}: needs a non-empty 'inputs' list. Received: {inputs!r}")
    for source in inputs:
        if isinstance(source, bool) or not (
                source in RAW_INPUTS or (isinstance(source, int) and 0 <= source < index)):
            raise ValueError(f"{where}: input {source!r} is neither 'sparse', 'dense' nor an "
                             f"earlier block (0..{index - 1}); edges point backwards only.")
        if source == "dense" and not has_dense:
            raise ValueError(f"{where}: reads 'dense', but the data has no scaled numerical "
                             f"fields.")
    if len(set(map(str, inputs))) != len(inputs):
        raise ValueError(f"{where}: an input is listed twice. Received: inputs={inputs}")
    if kind in ("fm", "dot") and inputs == [inputs[0]] and inputs[0] != "sparse":
        raise ValueError(f"{where}: interacts vectors, but its one input {inputs[0]!r} gives a "
                         f"single vector; add 'sparse' or another input.")
    if kind == "mlp":
        units = block.get("units")
        if not isinstance(units, list) or not 1 <= len(units) <= MAX_MLP_LAYERS or any(
                isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
            raise ValueError(f"{where}: 'units' must be 1 to {MAX_MLP_LAYERS} widths >= 1. "
                             f"Received: units={units!r}")
    if kind == "fm" and block.get("output", "scalar") not in FM_OUTPUTS:
        raise ValueError(f"{where}: 'output' must be one of {FM_OUTPUTS}. "
                         f"Received: output={block.get('output')!r}")


def sinks(dag: dict) -> list[int]:
    """Indices of the blocks no other block reads: their outputs feed the logit."""
    read = {s for block in dag["blocks"] for s in block["inputs"] if isinstance(s, int)}
    return [i for i in range(len(dag["blocks"])) if i not in read]


def describe(dag: dict) -> str:
    """One line per block, e.g. ``2 dot <- sparse, 0``; then the sinks."""
    lines = []
    for index, block in enumerate(dag["blocks"]):
        detail = {"mlp": f" {block.get('units')}", "fm": f" {block.get('output', 'scalar')}",
                  "dot": ""}[block["type"]]
        sources = ", ".join(str(s) for s in block["inputs"])
        lines.append(f"{index} {block['type']}{detail} <- {sources}")
    lines.append(f"logit <- {sinks(dag)} + linear")
    return "\n".join(lines)
