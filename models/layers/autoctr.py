"""AutoCTR: virtual blocks (MLP, FM, dot product) wired as a DAG over grouped feature inputs.

Reference: Qingquan Song, Dehua Cheng, Hanning Zhou, Jiyan Yang, Yuandong Tian, Xia Hu,
"Towards Automated Neural Interaction Discovery for Click-Through Rate Prediction", KDD 2020
(arXiv 2007.06434), Sec. 3.1-3.2; official code ``facebookresearch/AutoCTR``
(``nasrec/blocks.py``). The DAG's JSON schema is in ``models.autoctr_dag``.

Every node has a dense view ``[B, k]`` and a sparse view ``[B, m, D]``::

    raw "sparse":  sparse = E = [e_1; ...; e_F]              dense = flatten(E)
    raw "dense":   sparse = (W x + b)  as one D-vector        dense = x (scaled numericals)
    block output:  sparse = (W h + b)  as one D-vector        dense = h

(the projection to ``D`` is the paper's ``comm_embed_dim``). A block reads the views its type
needs from all of its inputs, concatenated (dense) or stacked (sparse), and outputs ``h``:

    mlp:  h = MLP([dense views])                                           [B, units[-1]]
    fm:   v = 1/2 ((sum_i e_i)^2 - sum_i e_i^2)   (element-wise; NFM's bi-interaction)
          h = sum_d v_d ("scalar", [B, 1])  or  h = v ("vector", [B, D])
    dot:  h = [<e_i, e_j>]_{i<j}                                           [B, m(m-1)/2]

``AutoCTRNet`` returns the concatenation of the sinks' outputs (the blocks no block reads);
``models.zoo.ctr`` maps it to the logit with a dense layer and adds the first-order term.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import tensorflow as tf
import tf_keras as keras

from models.autoctr_dag import check_dag, sinks
from models.layers.mlp import MLP


@keras.utils.register_keras_serializable(package="autorec")
class FMBlock(keras.layers.Layer):
    """FM_EMB block: the factorisation machine's pairwise term over ``m`` vectors.

    ``v = 1/2 ((sum_i e_i)^2 - sum_i e_i^2)`` equals ``sum_{i<j} e_i * e_j`` (Rendle, ICDM
    2010, Lemma 3.1); ``output="scalar"`` sums it over ``d`` (FM), ``"vector"`` keeps it.

    Example:

    >>> FMBlock()(tf.constant([[[1.0, 2.0], [3.0, 4.0]]])).numpy().tolist()
    [[11.0]]

    Input shape: ``[B, m, D]``. Output shape: ``[B, 1]`` (scalar) or ``[B, D]`` (vector).
    """

    def __init__(self, output: str = "scalar", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if output not in ("scalar", "vector"):
            raise ValueError(f"output must be 'scalar' or 'vector'. Received: output={output!r}")
        self.output_kind = output

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        e = tf.cast(inputs, self.compute_dtype)
        v = 0.5 * (tf.square(tf.reduce_sum(e, axis=1)) - tf.reduce_sum(tf.square(e), axis=1))
        return tf.reduce_sum(v, axis=1, keepdims=True) if self.output_kind == "scalar" else v

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "output": self.output_kind}


@keras.utils.register_keras_serializable(package="autorec")
class DotBlock(keras.layers.Layer):
    """DOTPROCESSOR_EMB block: every pairwise inner product ``<e_i, e_j>``, ``i < j``, in
    ``itertools.combinations`` order (DLRM's dot interaction, Naumov et al. 2019).

    Example:

    >>> DotBlock()(tf.constant([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])).numpy().tolist()
    [[2.0, 0.0, 3.0]]

    Input shape: ``[B, m, D]`` with ``m >= 2`` known. Output shape: ``[B, m(m-1)/2]``.
    """

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 3 or shape[1] is None or shape[1] < 2:
            raise ValueError(f"DotBlock expects [B, m, D] inputs with a known m >= 2. "
                             f"Received: shape={shape}")
        pairs = list(itertools.combinations(range(int(shape[1])), 2))
        self._left = [i for i, _ in pairs]
        self._right = [j for _, j in pairs]
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        e = tf.cast(inputs, self.compute_dtype)
        left = tf.gather(e, self._left, axis=1)
        right = tf.gather(e, self._right, axis=1)
        return tf.reduce_sum(left * right, axis=2)


@keras.utils.register_keras_serializable(package="autorec")
class AutoCTRNet(keras.layers.Layer):
    """The DAG of virtual blocks (module docstring): ``[B, F, D]`` field embeddings and
    optional ``[B, n]`` dense values -> ``[B, K]``, the concatenated sinks.

    Example:

    >>> dag = {"blocks": [{"type": "fm", "inputs": ["sparse"], "output": "scalar"},
    ...                   {"type": "mlp", "inputs": ["sparse"], "units": [4]}]}
    >>> tuple(AutoCTRNet(dag)(tf.ones([2, 3, 5])).shape)
    (2, 5)

    Args:
      dag: the DAG JSON (``models.autoctr_dag``); validated here, errors name the block.
      has_dense: whether calls pass the ``dense`` input (needed when a block reads it).
      dropout, batch_norm, l2: the MLP blocks' settings (``models.layers.mlp.MLP``); ``l2``
        also applies to the projections' kernels.

    Call: ``layer(sparse)`` or ``layer(sparse, dense=x)``.
    """

    def __init__(self, dag: dict, has_dense: bool = False, dropout: float = 0.0,
                 batch_norm: bool = False, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_dag(dag, has_dense)
        self.dag = copy.deepcopy(dag)
        self.has_dense = bool(has_dense)
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.l2 = float(l2)
        self.sinks = sinks(self.dag)
        self.blocks: list[keras.layers.Layer] = []
        self.projections: dict[str, keras.layers.Layer] = {}  # made in build(): units = D
        for index, block in enumerate(self.dag["blocks"]):
            kind = block["type"]
            if kind == "mlp":
                self.blocks.append(MLP(block["units"], dropout=self.dropout,
                                       batch_norm=self.batch_norm, l2=self.l2,
                                       name=f"block_{index}_mlp"))
                continue
            self.blocks.append(FMBlock(block.get("output", "scalar"), name=f"block_{index}_fm")
                               if kind == "fm" else DotBlock(name=f"block_{index}_dot"))

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 3 or shape[1] is None or shape[2] is None:
            raise ValueError(f"AutoCTRNet expects [B, F, D] field embeddings. "
                             f"Received: shape={shape}")
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        for block in self.dag["blocks"]:
            for source in block["inputs"] if block["type"] != "mlp" else []:
                if source != "sparse" and str(source) not in self.projections:
                    self.projections[str(source)] = keras.layers.Dense(
                        int(shape[2]), kernel_regularizer=regularizer, name=f"project_{source}")
        super().build(input_shape)

    def call(self, sparse: tf.Tensor, dense: tf.Tensor | None = None,
             training: bool | None = None) -> tf.Tensor:
        sparse = tf.cast(sparse, self.compute_dtype)
        if dense is None and self.has_dense:
            raise ValueError("AutoCTRNet was built with has_dense=True; pass dense=.")
        num_vectors = sparse.shape[1] * sparse.shape[2]
        dense_views: dict[str, tf.Tensor] = {"sparse": tf.reshape(sparse, [-1, num_vectors])}
        if dense is not None:
            dense_views["dense"] = tf.cast(dense, self.compute_dtype)
        for index, (block, layer) in enumerate(zip(self.dag["blocks"], self.blocks,
                                                   strict=True)):
            if block["type"] == "mlp":
                views = [dense_views[str(s)] for s in block["inputs"]]
                merged = views[0] if len(views) == 1 else tf.concat(views, axis=1)
                dense_views[str(index)] = layer(merged, training=training)
                continue
            vectors = [sparse if s == "sparse" else
                       self.projections[str(s)](dense_views[str(s)])[:, None, :]
                       for s in block["inputs"]]
            stacked = vectors[0] if len(vectors) == 1 else tf.concat(vectors, axis=1)
            dense_views[str(index)] = layer(stacked)
        outputs = [dense_views[str(i)] for i in self.sinks]
        return outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dag": copy.deepcopy(self.dag),
                "has_dense": self.has_dense, "dropout": self.dropout,
                "batch_norm": self.batch_norm, "l2": self.l2}
