"""The AutoGroup model's logit parts, with fixed feature sets (retrain) or searched ones.

Liu et al., SIGIR 2020; Huawei Vega's ``AutoGroupModel``. Per interaction order ``p``, the
fields of that order's sets get their own embedding tables of size ``d_p``; a
``FeatureGroupInteraction`` turns them into ``G_p`` set interactions. The model is::

    y = lr + w^T MLP([g_1 .. g_{G_1} (order 1 set vectors); I^(2)_1 .. ; I^(P)_{G_P}])
          [+ v^T [I^(2)_1 .. ; I^(P)_{G_P}]   with ``arch.group_logit``, as DeepFM adds its FM]

(the LR term is ``FieldLinear``; the MLP is ``arch.hidden_units``, like DeepFM's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture, ArchitectureError
from models.layers.autogroup import FeatureGroupInteraction
from models.layers.embeddings import (
    FieldEmbedding,
    FieldLinear,
    fill_missing,
    stack_embeddings,
)
from models.layers.mlp import MLP


def order_layer_name(order: str) -> str:
    """Name of the ``FeatureGroupInteraction`` layer of interaction order ``order``."""
    return f"order{order}_groups"


@dataclass(frozen=True)
class GroupSearch:
    """The searching model's sets: per order ``str(p)``, ``num_groups[p]`` sets over every
    field, embedded at ``dims[p]``, sampled at Gumbel-softmax temperature ``temperature``."""

    num_groups: Mapping[str, int]
    dims: Mapping[str, int]
    temperature: float


def autogroup_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
                    search: GroupSearch | None = None) -> list[tf.Tensor]:
    """``[lr logit, deep logit]`` of the AutoGroup model over ``inputs``.

    Args:
      arch: the architecture; its ``feature_groups`` and ``group_dims`` give the fixed sets
        (ignored with ``search``).
      inputs: the model's ``keras.Input`` tensors keyed by ``model_input_names(arch)``.
      search: builds searching layers (every field in every order) instead of the fixed sets.

    Raises:
      ArchitectureError: without ``search``, when ``arch.feature_groups`` is empty.
    """
    if search is None and not arch.feature_groups:
        raise ArchitectureError("Model 'autogroup' needs its feature sets in "
                                "architecture.feature_groups, which the 'autogroup' search "
                                "writes (search_strategy 'autogroup').")
    orders = sorted(arch.feature_groups if search is None else search.num_groups, key=int)
    terms, scalars = [], []
    for order in orders:
        if search is None and not arch.feature_groups[order]:
            continue
        fields = arch.fields if search is not None else arch.group_fields(order)
        dim = int(search.dims[order] if search is not None else arch.group_dims[order])
        embedding = FieldEmbedding(
            [f for f in arch.categorical if f in fields],
            [f for f in arch.numerical if f in fields], arch.vocab_sizes,
            dict.fromkeys(fields, dim),
            numeric_encoding={f: arch.numeric_encoding[f] for f in arch.numerical if f in fields},
            num_buckets=arch.num_buckets, l2=arch.l2, autodis=arch.autodis,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std),
            name=f"order{order}_embedding")
        if search is not None:
            layer = FeatureGroupInteraction(int(order), num_groups=int(search.num_groups[order]),
                                            temperature=search.temperature,
                                            name=order_layer_name(order))
        else:
            index = {f: i for i, f in enumerate(fields)}
            layer = FeatureGroupInteraction(
                int(order), groups=[[index[f] for f in group]
                                    for group in arch.feature_groups[order]],
                name=order_layer_name(order))
        embeddings = fill_missing(
            embedding(inputs), embedding.fields, inputs, arch.numeric_missing, l2=arch.l2,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=arch.embedding_init_std), prefix=f"order{order}_")
        terms.append(layer(stack_embeddings(embeddings)))
        if order != "1":
            scalars.append(terms[-1])
    joined = terms[0] if len(terms) == 1 else keras.layers.Concatenate(name="group_terms")(terms)
    deep = MLP(arch.hidden_units, dropout=arch.dropout, batch_norm=arch.batch_norm,
               l2=arch.net_l2, name="mlp")(joined)
    regularizer = keras.regularizers.L2(arch.net_l2) if arch.net_l2 > 0 else None
    deep_logit = keras.layers.Dense(1, use_bias=False, kernel_regularizer=regularizer,
                                    name="deep_logit")(deep)
    linear = FieldLinear(arch.categorical, arch.numerical, arch.vocab_sizes,
                         numeric_encoding=arch.numeric_encoding, num_buckets=arch.num_buckets,
                         l2=arch.l2, numeric_missing=arch.numeric_missing,
                         name="field_linear")(inputs)
    if not arch.group_logit or not scalars:
        return [linear, deep_logit]
    joined_scalars = (scalars[0] if len(scalars) == 1
                      else keras.layers.Concatenate(name="group_scalars")(scalars))
    group_logit = keras.layers.Dense(1, use_bias=False, kernel_regularizer=regularizer,
                                     kernel_initializer="zeros", name="group_logit")(joined_scalars)
    return [linear, deep_logit, group_logit]
