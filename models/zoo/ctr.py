"""CTR models (LR, FM, DeepFM, DNN, DCN) assembled from shared layers, built from an Architecture.

Every model reads a dict of Transform's features keyed by name (``model_input_names``), sums
the logits of its parts into the layer named ``logit`` and returns ``sigmoid(logit)`` as
``[B, 1]`` probabilities from the layer named ``probability``::

    lr:     y = b + sum_f w_f(x)
    fm:     y = lr + sum_{(i, j) kept} <e_i, e_j>                      (Rendle, ICDM 2010)
            (gated_interactions: <e_i, e_j> -> alpha_ij BN(<e_i, e_j>); Liu et al., KDD 2020)
    deepfm: y = fm + w^T MLP([e_1; ...; e_F])                          (Guo et al., IJCAI 2017)
    dnn:    y = w^T MLP([e_1; ...; e_F]) + b
    dcn:    y = w^T [Cross^L(x_0); MLP(x_0)] + b,  x_0 = [e_1; ...; e_F]  (Wang et al., WWW 2021)
    autoctr: y = lr + w^T AutoCTRNet([e_1; ...; e_F], x_dense)  (Song et al., KDD 2020; the
            DAG of blocks in arch.autoctr, found by the autoctr search)
    autogroup: y = lr + w^T MLP([g_j (order 1); I^(p)_j (orders >= 2)])  (Liu et al., SIGIR
            2020; the feature sets in arch.feature_groups, found by the autogroup search)

Example:

>>> arch = Architecture.uniform("deepfm", ["user", "item"], ["price"],
...                             {"user": 100, "item": 50}, embedding_dim=8, hidden_units=[16])
>>> model = build_ctr_model(arch)
>>> model_input_names(arch)
['user_id', 'item_id', 'price_z']
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from models.architecture import Architecture, ArchitectureError
from models.layers.autoctr import AutoCTRNet
from models.layers.autofis import GatedInteraction
from models.layers.embeddings import (
    FieldEmbedding,
    FieldLinear,
    concat_embeddings,
    field_input_dtypes,
    fill_missing,
    stack_embeddings,
)
from models.layers.esapn import ESAPNFieldEmbedding
from models.layers.interactions import FMInteraction
from models.layers.mlp import MLP
from models.layers.multisize import MultiSizeFieldEmbedding
from models.layers.projection import FieldProjection
from models.zoo.autogroup import autogroup_parts

LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"
FM_INTERACTION_LAYER = "fm_interaction"  # FM's pairwise term, plain or AutoFIS-gated
FIELD_EMBEDDING_LAYER = "field_embedding"  # the per-field tables (``_field_embedding``)


def model_input_dtypes(arch: Architecture) -> dict[str, tf.DType]:
    """The transformed features the model for ``arch`` reads, by name, with their dtypes."""
    return field_input_dtypes(arch.categorical, arch.numerical, arch.numeric_encoding,
                              arch.numeric_missing)


def model_input_names(arch: Architecture) -> list[str]:
    """Names of the model's inputs: ``f_id`` per categorical field, ``f_z`` or ``f_bucket``
    per numerical field (by its encoding), in field order, then ``f_missing`` per
    ``arch.numeric_missing`` field."""
    return list(model_input_dtypes(arch))


def model_input_specs(arch: Architecture) -> dict[str, tf.TensorSpec]:
    """``[B]`` tensor specs of the model's inputs, e.g. for a serving signature."""
    return {name: tf.TensorSpec([None], dtype, name=name)
            for name, dtype in model_input_dtypes(arch).items()}


def build_ctr_model(arch: Architecture,
                    field_embedding: keras.layers.Layer | None = None) -> keras.Model:
    """Builds the functional Keras model that ``arch`` describes.

    Args:
      arch: the architecture; ``arch.model`` picks the family.
      field_embedding: a layer that replaces the per-field tables (default: ``FieldEmbedding``
        of ``arch``), mapping the inputs dict to one ``[B, D]`` tensor per field in
        ``arch.fields`` order; a search plugs its searching layer in here (e.g.
        ``models.layers.autodim.AutoDimEmbedding``).

    Returns:
      A model named ``arch.model`` taking a dict of ``[B]`` tensors keyed by
      ``model_input_names(arch)`` (int64 ids and buckets, float32 scaled values) and returning
      ``[B, 1]`` click probabilities. Its layer ``logit`` holds the pre-sigmoid score.

    Raises:
      ArchitectureError: when the family cannot be built from ``arch`` (FM-based models need one
        embedding dim for all fields, or ``unified_dim``; ``cross_layers`` must be >= 0).
    """
    inputs = {name: keras.Input(shape=(), dtype=dtype, name=name)
              for name, dtype in model_input_dtypes(arch).items()}
    parts = _LOGIT_PARTS[arch.model](arch, inputs, field_embedding or _field_embedding(arch))
    summed = parts[0] if len(parts) == 1 else keras.layers.Add(name="logit_sum")(parts)
    logit = keras.layers.Identity(name=LOGIT_LAYER)(summed)
    probability = keras.layers.Activation("sigmoid", dtype="float32",
                                          name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs=inputs, outputs=probability, name=arch.model)


def _field_linear(arch: Architecture) -> FieldLinear:
    return FieldLinear(arch.categorical, arch.numerical, arch.vocab_sizes,
                       numeric_encoding=arch.numeric_encoding, num_buckets=arch.num_buckets,
                       l2=arch.l2, numeric_missing=arch.numeric_missing, name="field_linear")


def _field_embedding(arch: Architecture) -> FieldEmbedding:
    if arch.id_dims:  # ESAPN: per-id sizes of the fields it searched
        return ESAPNFieldEmbedding(
            arch.categorical, arch.numerical, arch.vocab_sizes, arch.embedding_dims,
            id_dims=arch.id_dims, numeric_encoding=arch.numeric_encoding,
            num_buckets=arch.num_buckets, l2=arch.l2, name=FIELD_EMBEDDING_LAYER,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std))
    if arch.embedding_blocks:  # NIS: multi-size blocks of the fields it searched
        return MultiSizeFieldEmbedding(
            arch.categorical, arch.numerical, arch.vocab_sizes, arch.embedding_dims,
            embedding_blocks=arch.embedding_blocks, block_projection=arch.block_projection,
            projected_l2=arch.projected_l2, numeric_encoding=arch.numeric_encoding,
            num_buckets=arch.num_buckets, l2=arch.l2, autodis=arch.autodis,
            name=FIELD_EMBEDDING_LAYER,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std))
    return FieldEmbedding(arch.categorical, arch.numerical, arch.vocab_sizes,
                          arch.embedding_dims, numeric_encoding=arch.numeric_encoding,
                          num_buckets=arch.num_buckets, l2=arch.l2,
                          embeddings_initializer=keras.initializers.RandomNormal(
                              stddev=arch.embedding_init_std),
                          autodis=arch.autodis, id_l2=arch.id_l2,
                          table_l2=not _projected_l2(arch), name=FIELD_EMBEDDING_LAYER)


def _projected_l2(arch: Architecture) -> bool:
    """Whether the plain tables' L2 moves onto their ``unified_dim`` projections."""
    return arch.unified_dim is not None and arch.projected_l2 and arch.l2 > 0


def _embeddings(arch: Architecture, layer: keras.layers.Layer,
                inputs: dict[str, tf.Tensor]) -> list[tf.Tensor]:
    """Per-field embeddings; with ``arch.unified_dim`` each ``[B, d_f]`` is projected to
    ``[B, unified_dim]`` (``FieldProjection``) before the interaction and MLP parts. A
    ``numeric_missing`` field's absent values get its learned vector first."""
    embeddings = fill_missing(
        layer(inputs), arch.fields, inputs, arch.numeric_missing, l2=arch.l2,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std),
        prefix="")
    if arch.unified_dim is None:
        return embeddings
    projection = FieldProjection(arch.fields, arch.embedding_dims, arch.unified_dim,
                                 l2=arch.net_l2, name="field_projection")
    projected = projection(embeddings)
    if isinstance(layer, FieldEmbedding) and not layer.table_l2:  # see _field_embedding
        projection.add_table_l2(layer.tables, arch.l2)
    return projected


def _mlp(arch: Architecture) -> MLP:
    return MLP(arch.hidden_units, dropout=arch.dropout, batch_norm=arch.batch_norm,
               l2=arch.net_l2, name="mlp")


def _dense_logit(arch: Architecture, name: str, use_bias: bool) -> keras.layers.Dense:
    regularizer = keras.regularizers.L2(arch.net_l2) if arch.net_l2 > 0 else None
    return keras.layers.Dense(1, use_bias=use_bias, kernel_regularizer=regularizer, name=name)


def _kept_pairs(arch: Architecture) -> list[tuple[int, int]] | None:
    """``arch.kept_interactions`` as field index pairs (field order: categorical, numerical)."""
    if arch.kept_interactions is None:
        return None
    index = {f: i for i, f in enumerate(arch.fields)}
    return [(index[a], index[b]) for a, b in arch.kept_interactions]


def _fm_term(arch: Architecture, embeddings: list[tf.Tensor]) -> tf.Tensor:
    dims = sorted({int(e.shape[-1]) for e in embeddings})
    if len(dims) != 1:
        raise ArchitectureError(f"Model {arch.model!r} needs one embedding dim for all fields "
                                f"or a unified_dim. Received: embedding_dims="
                                f"{arch.embedding_dims}, unified_dim={arch.unified_dim}")
    if arch.gated_interactions:
        interaction: keras.layers.Layer = GatedInteraction(interactions=_kept_pairs(arch),
                                                           name=FM_INTERACTION_LAYER)
    else:
        interaction = FMInteraction(pair_mask=_kept_pairs(arch), name=FM_INTERACTION_LAYER)
    return interaction(stack_embeddings(embeddings))


def _lr_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
              embedding: keras.layers.Layer) -> list[tf.Tensor]:
    return [_field_linear(arch)(inputs)]


def _fm_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
              embedding: keras.layers.Layer) -> list[tf.Tensor]:
    embeddings = _embeddings(arch, embedding, inputs)
    return [_field_linear(arch)(inputs), _fm_term(arch, embeddings)]


def _deepfm_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
                  embedding: keras.layers.Layer) -> list[tf.Tensor]:
    embeddings = _embeddings(arch, embedding, inputs)
    deep = _mlp(arch)(concat_embeddings(embeddings))
    return [_field_linear(arch)(inputs), _fm_term(arch, embeddings),
            _dense_logit(arch, "deep_logit", use_bias=False)(deep)]


def _dnn_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
               embedding: keras.layers.Layer) -> list[tf.Tensor]:
    embeddings = _embeddings(arch, embedding, inputs)
    deep = _mlp(arch)(concat_embeddings(embeddings))
    return [_dense_logit(arch, "deep_logit", use_bias=True)(deep)]


def _dcn_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
               embedding: keras.layers.Layer) -> list[tf.Tensor]:
    if arch.cross_layers < 0:
        raise ArchitectureError(f"cross_layers must be >= 0. "
                                f"Received: cross_layers={arch.cross_layers}")
    x0 = concat_embeddings(_embeddings(arch, embedding, inputs))
    regularizer = keras.regularizers.L2(arch.net_l2) if arch.net_l2 > 0 else None
    crossed = x0
    for index in range(arch.cross_layers):
        crossed = tfrs.layers.dcn.Cross(kernel_regularizer=regularizer,
                                        name=f"cross_{index}")(x0, crossed)
    deep = _mlp(arch)(x0)
    tower = keras.layers.Concatenate(name="cross_and_deep")([crossed, deep])
    return [_dense_logit(arch, "deep_logit", use_bias=True)(tower)]


def _autoctr_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
                   embedding: keras.layers.Layer) -> list[tf.Tensor]:
    """AutoCTR (Song et al., KDD 2020): ``w^T AutoCTRNet(E, x_dense) + lr``; the DAG is
    ``arch.autoctr`` (``models.layers.autoctr``), found by the ``autoctr`` search."""
    if arch.autoctr is None:
        raise ArchitectureError("Model 'autoctr' needs the DAG in architecture.autoctr, which "
                                "the 'autoctr' search writes (search_strategy 'autoctr').")
    embeddings = _embeddings(arch, embedding, inputs)
    dense_fields = [f for f in arch.numerical if arch.numeric_encoding[f] != "bucket"]
    dense = (tf.stack([inputs[f"{f}_z"] for f in dense_fields], axis=1)
             if dense_fields else None)
    net = AutoCTRNet(arch.autoctr, has_dense=dense is not None, dropout=arch.dropout,
                     batch_norm=arch.batch_norm, l2=arch.net_l2, name="autoctr")
    top = net(stack_embeddings(embeddings), dense=dense)
    return [_field_linear(arch)(inputs), _dense_logit(arch, "autoctr_logit", use_bias=False)(top)]


def _autogroup_parts(arch: Architecture, inputs: dict[str, tf.Tensor],
                     embedding: keras.layers.Layer) -> list[tf.Tensor]:
    """AutoGroup (Liu et al., SIGIR 2020): ``lr + w^T MLP(set interactions)`` over the sets
    in ``arch.feature_groups`` (``models.zoo.autogroup``); each order has its own tables."""
    return autogroup_parts(arch, inputs)


_LOGIT_PARTS: dict[str, Callable[[Architecture, dict[str, tf.Tensor], keras.layers.Layer],
                                  list[tf.Tensor]]] = {
    "lr": _lr_parts,
    "fm": _fm_parts,
    "deepfm": _deepfm_parts,
    "dnn": _dnn_parts,
    "dcn": _dcn_parts,
    "autoctr": _autoctr_parts,
    "autogroup": _autogroup_parts,
}
