"""Per-field embeddings and first-order (linear) weights over Transform's features.

Every field ``f`` becomes one vector ``e_f`` of its own size ``d_f``:

* categorical ``f``:          ``e_f = E_f[f_id]``,          ``E_f`` of shape ``[vocab_f, d_f]``
* numerical ``f``, scaled:    ``e_f = f_z * v_f``,          ``v_f`` of shape ``[d_f]``
* numerical ``f``, bucket:    ``e_f = B_f[f_bucket]``,      ``B_f`` of shape ``[num_buckets, d_f]``
* numerical ``f``, autodis:   ``e_f = AutoDis(f_z)``,       ``H`` meta-embeddings ``[H, d_f]``
                              (``models.layers.autodis``)

The first-order term of LR and FM (Rendle, "Factorization Machines", ICDM 2010) is the same
construction with ``d_f = 1``, summed over fields: ``y_lin = b + sum_f e_f``; an AutoDis field
enters it as a scaled one.

A numerical field whose value can be absent (``Architecture.numeric_missing``) gets one more
learned vector ``u_f``, used instead of its encoding where Transform's ``f_missing`` is 1
(``MissingValueEmbedding``): ``e_f <- (1 - m_f) e_f + m_f u_f``. Without it an absent value
would share an encoding with a real value (the train mean, a z-score of 0).

Ids are looked up as given. Transform maps every value into ``[0, vocab + OOV)`` and every bucket
into ``[0, num_buckets)``; an id outside its table is a Transform bug, which ``tf.gather`` reports
on CPU (on GPU it yields zeros), so nothing here clips ids and hides it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from components.features import bucket_name, id_name, missing_name, scaled_name
from models.architecture import NUMERIC_ENCODINGS, check_id_l2
from models.layers.autodis import AutoDis
from models.layers.lambdaopt import IdL2Regularizer


def field_input_dtypes(categorical: Sequence[str], numerical: Sequence[str],
                       numeric_encoding: Mapping[str, str] | None = None,
                       numeric_missing: Sequence[str] = ()) -> dict[str, tf.DType]:
    """The transformed features the embedding layers read, by name, in field order.

    Args:
      categorical: categorical field names.
      numerical: numerical field names.
      numeric_encoding: per numerical field ``"scaled"``, ``"bucket"`` or ``"autodis"``;
        missing means scaled.
      numeric_missing: numerical fields that also read their ``f_missing`` indicator.

    Returns:
      ``{"f_id": int64}`` per categorical field, and per numerical field either
      ``{"f_z": float32}`` (scaled, autodis) or ``{"f_bucket": int64}`` (bucket), then
      ``{"f_missing": float32}`` per ``numeric_missing`` field.
    """
    encodings = numeric_encoding or {}
    dtypes = {id_name(f): tf.int64 for f in categorical}
    for f in numerical:
        if encodings.get(f, "scaled") == "bucket":
            dtypes[bucket_name(f)] = tf.int64
        else:
            dtypes[scaled_name(f)] = tf.float32
    dtypes.update({missing_name(f): tf.float32 for f in numerical if f in set(numeric_missing)})
    return dtypes


def stack_embeddings(embeddings: Sequence[tf.Tensor]) -> tf.Tensor:
    """Stacks per-field embeddings ``F x [B, D]`` into ``[B, F, D]``; all ``D`` must agree."""
    dims = [int(e.shape[-1]) for e in embeddings]
    if not dims or len(set(dims)) != 1:
        raise ValueError(f"Stacking needs at least one field and one embedding dim for all fields. "
                         f"Received: dims={dims}")
    return tf.stack(list(embeddings), axis=1)


def concat_embeddings(embeddings: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates per-field embeddings ``[B, d_f]`` into ``[B, sum_f d_f]``."""
    if not embeddings:
        raise ValueError("Concatenation needs at least one field embedding. Received: []")
    return tf.concat(list(embeddings), axis=-1)


def _as_vector(feature: tf.Tensor, name: str) -> tf.Tensor:
    """Accepts a feature as ``[B]`` or ``[B, 1]`` and returns it as ``[B]``."""
    rank = feature.shape.rank
    if rank == 2 and feature.shape[-1] == 1:
        return tf.squeeze(feature, axis=-1)
    if rank not in (None, 1):
        raise ValueError(f"Feature {name!r} must have shape [B] or [B, 1]. "
                         f"Received: shape={feature.shape}")
    return feature


def _clone_initializer(initializer: keras.initializers.Initializer
                       ) -> keras.initializers.Initializer:
    """A fresh initializer per table, so unseeded random tables do not share values."""
    return initializer.__class__.from_config(initializer.get_config())


@keras.utils.register_keras_serializable(package="autorec")
class FieldEmbedding(keras.layers.Layer):
    """One embedding vector per field, from a dict of Transform's features.

    Equations (per field ``f``, see the module docstring)::

        categorical:      e_f = E_f[f_id]            E_f in R^{vocab_f x d_f}
        numerical scaled: e_f = f_z * v_f            v_f in R^{d_f}
        numerical bucket: e_f = B_f[f_bucket]        B_f in R^{num_buckets x d_f}
        numerical autodis: e_f = AutoDis(f_z)_f      H meta-embeddings in R^{H x d_f}

    The scaled encoding is the "field embedding" of numerical features used by AutoInt and
    AutoDis (Guo et al., "An Embedding Learning Framework for Numerical Features in CTR
    Prediction", KDD 2021, Sec. 2.2); the bucket one is their "discretization".

    Example:

    >>> layer = FieldEmbedding(categorical=["user"], numerical=["age"],
    ...                        vocab_sizes={"user": 10}, embedding_dims={"user": 4, "age": 4})
    >>> out = layer({"user_id": tf.constant([1, 2], tf.int64), "age_z": tf.constant([0.5, -1.0])})
    >>> [tuple(e.shape) for e in out], tuple(stack_embeddings(out).shape)
    ([(2, 4), (2, 4)], (2, 2, 4))

    Args:
      categorical: categorical field names, in output order (first).
      numerical: numerical field names, in output order (after the categorical ones).
      vocab_sizes: per categorical field, the number of ids (vocabulary plus OOV buckets).
      embedding_dims: per field, its embedding size ``d_f``.
      numeric_encoding: per numerical field ``"scaled"``, ``"bucket"`` or ``"autodis"``;
        missing means scaled.
      num_buckets: rows of a bucket-encoded field's table.
      l2: L2 strength on every table, field vector and meta-embedding; 0 adds no loss.
      embeddings_initializer: initializer of the tables, field vectors and meta-embeddings.
      autodis: settings of the one ``AutoDis`` sub-layer over all ``"autodis"`` fields (its
        arguments but the dims, l2 and initializer; missing ones take its defaults).
      id_l2: λOpt's fixed per-id L2 strengths (``Architecture.id_l2``): per categorical field,
        one ``Λ[id] >= 0`` per id. In training (``training=True``) such a field adds
        ``1/2 · sum_b Λ[id_b] · |e_b|^2 / B`` over the batch's rows as a loss
        (``IdL2Regularizer.penalty``, non-trainable ``Λ``) instead of ``l2`` on its table.
      table_l2: ``False`` leaves the tables and field vectors without ``l2`` here because a
        ``FieldProjection`` that follows penalises them projected (``add_table_l2``,
        ``Architecture.projected_l2``); AutoDis meta-embeddings keep ``l2``.

    Input shape:
      A dict holding, per field, the features named by ``field_input_dtypes``, each ``[B]`` or
      ``[B, 1]``. Extra keys are ignored.

    Output shape:
      A list with one ``[B, d_f]`` tensor per field, categorical fields first; combine it with
      ``stack_embeddings`` (``[B, F, D]``) or ``concat_embeddings`` (``[B, sum_f d_f]``).
    """

    def __init__(self, categorical: Sequence[str], numerical: Sequence[str],
                 vocab_sizes: Mapping[str, int], embedding_dims: Mapping[str, int],
                 numeric_encoding: Mapping[str, str] | None = None, num_buckets: int = 20,
                 l2: float = 0.0, embeddings_initializer: Any = "truncated_normal",
                 autodis: Mapping[str, Any] | None = None,
                 id_l2: Mapping[str, Sequence[float]] | None = None, table_l2: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_l2 = bool(table_l2)
        self.categorical = list(categorical)
        self.numerical = list(numerical)
        fields = self.categorical + self.numerical
        if not fields:
            raise ValueError("FieldEmbedding needs at least one field. "
                             "Received: categorical=[], numerical=[]")
        if len(set(fields)) != len(fields):
            raise ValueError(f"Field names must be unique. Received: fields={fields}")
        self.vocab_sizes = {f: int(vocab_sizes.get(f, 0)) for f in self.categorical}
        for f, size in self.vocab_sizes.items():
            if size < 1:
                raise ValueError(f"Field {f!r} needs a vocab size >= 1. "
                                 f"Received: vocab_sizes={dict(vocab_sizes)}")
        self.embedding_dims = {f: int(embedding_dims.get(f, 0)) for f in fields}
        for f, dim in self.embedding_dims.items():
            if dim < 1:
                raise ValueError(f"Field {f!r} needs an embedding dim >= 1. "
                                 f"Received: embedding_dims={dict(embedding_dims)}")
        encodings = dict(numeric_encoding or {})
        unknown = sorted(set(encodings) - set(self.numerical))
        if unknown:
            raise ValueError(f"numeric_encoding names fields that are not numerical: {unknown}. "
                             f"Received: numerical={self.numerical}")
        self.numeric_encoding = {f: encodings.get(f, "scaled") for f in self.numerical}
        for f, encoding in self.numeric_encoding.items():
            if encoding not in NUMERIC_ENCODINGS:
                raise ValueError(f"Field {f!r}: numeric encoding must be one of "
                                 f"{NUMERIC_ENCODINGS}. Received: {encoding!r}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1. Received: num_buckets={num_buckets}")
        self.num_buckets = int(num_buckets)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self._tables: dict[str, tf.Variable] = {}
        self.autodis = dict(autodis or {})
        self.autodis_fields = [f for f in self.numerical if self.numeric_encoding[f] == "autodis"]
        self.autodis_layer: AutoDis | None = None
        if self.autodis_fields:
            self.autodis_layer = AutoDis(
                [self.embedding_dims[f] for f in self.autodis_fields], **self.autodis, l2=self.l2,
                embeddings_initializer=_clone_initializer(self.embeddings_initializer),
                name="autodis")
        self.id_l2 = {f: [float(x) for x in values] for f, values in (id_l2 or {}).items()}
        check_id_l2(self.id_l2, self.vocab_sizes)
        self.id_l2_regularizers = {
            f: IdL2Regularizer(self.vocab_sizes[f], self.embedding_dims[f], initial_value=values,
                               trainable=False, name=f"{f}_id_l2")
            for f, values in self.id_l2.items()}
        self._substitutes: dict[str, tf.Tensor] = {}

    @property
    def tables(self) -> dict[str, tf.Variable]:
        """The built tables and field vectors by field (AutoDis fields have none)."""
        return dict(self._tables)

    @contextlib.contextmanager
    def substituted_tables(self, tables: Mapping[str, tf.Tensor]) -> Iterator[None]:
        """Within the block, categorical field ``f`` looks its ids up in ``tables[f]`` (a tensor
        of its table's shape) instead of its variable, so gradients flow into ``tables[f]``:
        how λOpt's look-ahead runs the model at simulated next-step tables
        (``models.search.lambdaopt_ctr``). Python state: call (or trace) the model inside."""
        for f, table in tables.items():
            if f not in self.vocab_sizes or tuple(table.shape) != tuple(self._tables[f].shape):
                raise ValueError(f"substituted_tables takes built categorical tables of their "
                                 f"shape. Received: {f!r} of shape {tuple(table.shape)}")
        previous, self._substitutes = self._substitutes, dict(tables)
        try:
            yield
        finally:
            self._substitutes = previous

    @property
    def fields(self) -> list[str]:
        """All field names in output order: categorical, then numerical."""
        return self.categorical + self.numerical

    def input_dtypes(self) -> dict[str, tf.DType]:
        """The features this layer reads, by name (see ``field_input_dtypes``)."""
        return field_input_dtypes(self.categorical, self.numerical, self.numeric_encoding)

    def build(self, input_shape: Any) -> None:
        l2 = keras.regularizers.L2(self.l2) if self.l2 > 0 and self.table_l2 else None
        if self.autodis_layer is not None:
            self.autodis_layer.build((None, len(self.autodis_fields)))
        for regularizer in self.id_l2_regularizers.values():
            with tf.name_scope(regularizer.name):  # one weight name per field
                regularizer.build()
        for f in self.fields:
            if f in self.autodis_fields:
                continue
            if f in self.vocab_sizes:
                shape, name = (self.vocab_sizes[f], self.embedding_dims[f]), f"{f}_embedding"
            elif self.numeric_encoding[f] == "bucket":
                shape, name = (self.num_buckets, self.embedding_dims[f]), f"{f}_bucket_embedding"
            else:
                shape, name = (self.embedding_dims[f],), f"{f}_field_vector"
            self._tables[f] = self.add_weight(
                name=name, shape=shape, initializer=_clone_initializer(self.embeddings_initializer),
                regularizer=None if f in self.id_l2 else l2, trainable=True)
        super().build(input_shape)

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None
             ) -> list[tf.Tensor]:
        missing = sorted(set(self.input_dtypes()) - set(inputs))
        if missing:
            raise ValueError(f"FieldEmbedding is missing input features {missing}. "
                             f"Received: keys={sorted(inputs)}")
        embeddings = []
        autodis = {}
        if self.autodis_layer is not None:
            values = tf.stack([_as_vector(inputs[scaled_name(f)], scaled_name(f))
                               for f in self.autodis_fields], axis=1)
            autodis = dict(zip(self.autodis_fields, self.autodis_layer(values), strict=True))
        for f in self.fields:
            if f in autodis:
                embeddings.append(tf.cast(autodis[f], self.compute_dtype))
                continue
            table = self._tables[f]
            if f in self.vocab_sizes:
                ids = _as_vector(inputs[id_name(f)], id_name(f))
                embedding = tf.gather(self._substitutes.get(f, table), ids)
                if training and f in self.id_l2_regularizers:
                    self.add_loss(self.id_l2_regularizers[f].penalty(ids, embedding,
                                                                     tf.shape(ids)[0]))
            elif self.numeric_encoding[f] == "bucket":
                embedding = tf.gather(table, _as_vector(inputs[bucket_name(f)], bucket_name(f)))
            else:
                value = tf.cast(_as_vector(inputs[scaled_name(f)], scaled_name(f)),
                                self.compute_dtype)
                embedding = value[:, tf.newaxis] * tf.cast(table, self.compute_dtype)
            embeddings.append(tf.cast(embedding, self.compute_dtype))
        return embeddings

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **_field_settings_config(self),
                "id_l2": {f: list(values) for f, values in self.id_l2.items()},
                "table_l2": self.table_l2}


def _field_settings_config(layer: Any) -> dict[str, Any]:
    """The field settings ``FieldEmbedding`` and ``PerFieldEmbedding`` share, as config."""
    return {
            "categorical": list(layer.categorical),
            "numerical": list(layer.numerical),
            "vocab_sizes": dict(layer.vocab_sizes),
            "embedding_dims": dict(layer.embedding_dims),
            "numeric_encoding": dict(layer.numeric_encoding),
            "num_buckets": layer.num_buckets,
            "l2": layer.l2,
            "embeddings_initializer": keras.initializers.serialize(layer.embeddings_initializer),
            "autodis": dict(layer.autodis),
        }

class PerFieldEmbedding(keras.layers.Layer):
    """Base of the field embeddings where some categorical fields have their own layer.

    Subclasses set ``self.special`` (field -> a layer mapping ``[B]`` ids to ``[B, d_f]``) and call
    ``_init_plain``; every other field goes through a plain ``FieldEmbedding`` named
    ``plain_embedding``. The output is ``FieldEmbedding``'s: one ``[B, d_f]`` tensor per field,
    categorical fields first. Used by NIS (``models.layers.multisize``) and ESAPN
    (``models.layers.esapn``).
    """

    special: dict[str, keras.layers.Layer]

    def _init_plain(self, categorical: Sequence[str], numerical: Sequence[str],
                    vocab_sizes: Mapping[str, int], embedding_dims: Mapping[str, int],
                    numeric_encoding: Mapping[str, str] | None, num_buckets: int, l2: float,
                    embeddings_initializer: Any,
                    autodis: Mapping[str, Any] | None = None) -> None:
        """Stores the shared settings and builds the plain ``FieldEmbedding`` of the fields
        outside ``self.special``."""
        self.categorical = list(categorical)
        self.numerical = list(numerical)
        self.vocab_sizes = {f: int(vocab_sizes[f]) for f in self.categorical}
        self.embedding_dims = {f: int(embedding_dims[f]) for f in self.fields}
        self.numeric_encoding = dict(numeric_encoding or {})
        self.num_buckets = int(num_buckets)
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.autodis = dict(autodis or {})

    def _build_plain(self) -> None:
        rest = [f for f in self.categorical if f not in self.special]
        self.plain = None
        if rest or self.numerical:
            self.plain = FieldEmbedding(
                rest, self.numerical, {f: self.vocab_sizes[f] for f in rest},
                {f: self.embedding_dims[f] for f in rest + self.numerical},
                numeric_encoding=self.numeric_encoding, num_buckets=self.num_buckets, l2=self.l2,
                embeddings_initializer=_clone_initializer(self.embeddings_initializer),
                autodis=self.autodis, name="plain_embedding")

    @property
    def fields(self) -> list[str]:
        return self.categorical + self.numerical

    def build(self, input_shape: Any) -> None:
        for layer in self.special.values():
            layer.build((None,))
        if self.plain is not None:
            self.plain.build(input_shape)
        super().build(input_shape)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> list[tf.Tensor]:
        plain = dict(zip([f for f in self.fields if f not in self.special],
                         self.plain(inputs) if self.plain is not None else [], strict=True))
        return [tf.cast(self.special[f](_as_vector(inputs[id_name(f)], id_name(f))),
                        self.compute_dtype) if f in self.special else plain[f]
                for f in self.fields]

    def _shared_config(self) -> dict[str, Any]:
        return {**super().get_config(), **_field_settings_config(self)}


@keras.utils.register_keras_serializable(package="autorec")
class MissingValueEmbedding(keras.layers.Layer):
    """A learned vector for a numerical field's absent value, used in place of its encoding.

    Equation (a missing-value indicator, learned as an embedding; its input ``m_f`` is
    Transform's ``f_missing``)::

        e_f' = (1 - m_f) * e_f + m_f * u_f,     m_f in {0, 1},  u_f in R^{d_f}

    Example:

    >>> layer = MissingValueEmbedding(2, embeddings_initializer="ones")
    >>> layer([tf.constant([[5.0, 5.0], [5.0, 5.0]]), tf.constant([0.0, 1.0])]).numpy().tolist()
    [[5.0, 5.0], [1.0, 1.0]]

    Args:
      dim: the size ``d_f`` of the field's embedding.
      l2: L2 strength on ``u_f``.
      embeddings_initializer: initializer of ``u_f``.

    Input shape: ``[e_f, m_f]``: ``[B, d_f]`` and ``[B]`` (or ``[B, 1]``).
    Output shape: ``[B, d_f]``.
    """

    def __init__(self, dim: int, l2: float = 0.0, embeddings_initializer: Any = "zeros",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1. Received: dim={dim}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.dim = int(dim)
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape: Any) -> None:
        self.vector = self.add_weight(
            name="missing_vector", shape=(self.dim,),
            initializer=_clone_initializer(self.embeddings_initializer),
            regularizer=keras.regularizers.L2(self.l2) if self.l2 > 0 else None, trainable=True)
        super().build(input_shape)

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        embedding, missing = inputs
        m = tf.cast(tf.reshape(missing, [-1, 1]), self.compute_dtype)
        return (1.0 - m) * embedding + m * tf.cast(self.vector, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "l2": self.l2,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer)}


def fill_missing(embeddings: Sequence[tf.Tensor], fields: Sequence[str],
                 inputs: Mapping[str, tf.Tensor], numeric_missing: Sequence[str], *,
                 l2: float, embeddings_initializer: Any, prefix: str) -> list[tf.Tensor]:
    """``embeddings`` (one per field of ``fields``) with each ``numeric_missing`` field's absent
    values replaced by its ``MissingValueEmbedding`` (a layer named
    ``{prefix}{f}_missing_embedding``)."""
    out = list(embeddings)
    for i, f in enumerate(fields):
        if f in numeric_missing:
            layer = MissingValueEmbedding(
                int(out[i].shape[-1]), l2=l2, name=f"{prefix}{f}_missing_embedding",
                embeddings_initializer=_clone_initializer(
                    keras.initializers.get(embeddings_initializer)))
            out[i] = layer([out[i], inputs[missing_name(f)]])
    return out


@keras.utils.register_keras_serializable(package="autorec")
class FieldLinear(keras.layers.Layer):
    """The first-order (LR) logit: a scalar weight per field value, summed over fields.

    Equation (Rendle, "Factorization Machines", ICDM 2010, Eq. 1, first two terms)::

        y_lin = b + sum_f w_f(x)
        w_f(x) = W_f[f_id]        (categorical, W_f in R^{vocab_f})
               = w_f * f_z        (numerical, scaled)
               = W_f[f_bucket]    (numerical, bucket, W_f in R^{num_buckets})

    AutoDis fields enter this term as scaled ones (one weight times ``f_z``): the first-order
    term stays a linear model, AutoDis only changes the field embeddings. A ``numeric_missing``
    field's ``w_f(x)`` is a learned scalar ``u_f`` where its value is absent
    (``MissingValueEmbedding`` with ``d_f = 1``).

    It is ``FieldEmbedding`` with every ``d_f = 1``, summed, plus an optional bias ``b``.

    Example:

    >>> layer = FieldLinear(categorical=["user"], numerical=["age"], vocab_sizes={"user": 10})
    >>> tuple(layer({"user_id": tf.constant([1, 2], tf.int64),
    ...              "age_z": tf.constant([0.5, -1.0])}).shape)
    (2, 1)

    Args:
      categorical, numerical, vocab_sizes, numeric_encoding, num_buckets, l2: as in
        ``FieldEmbedding``.
      use_bias: whether to add a learned bias ``b``.
      embeddings_initializer: initializer of the per-field weights (zeros by default, so the
        model starts at the bias).
      numeric_missing: numerical fields with a learned weight for an absent value (their
        ``f_missing`` is an input too).

    Input shape: as ``FieldEmbedding``.
    Output shape: ``[B, 1]``.
    """

    def __init__(self, categorical: Sequence[str], numerical: Sequence[str],
                 vocab_sizes: Mapping[str, int], numeric_encoding: Mapping[str, str] | None = None,
                 num_buckets: int = 20, l2: float = 0.0, use_bias: bool = True,
                 embeddings_initializer: Any = "zeros", numeric_missing: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.use_bias = bool(use_bias)
        unknown = sorted(set(numeric_missing) - set(numerical))
        if unknown:
            raise ValueError(f"numeric_missing names fields that are not numerical: {unknown}. "
                             f"Received: numerical={list(numerical)}")
        self.numeric_missing = [f for f in numerical if f in set(numeric_missing)]
        self.missing_weights = {f: MissingValueEmbedding(1, l2=l2, name=f"{f}_missing_weight")
                                for f in self.numeric_missing}
        linear_encoding = {f: "scaled" if encoding == "autodis" else encoding
                           for f, encoding in (numeric_encoding or {}).items()}
        self.weights_per_field = FieldEmbedding(
            categorical, numerical, vocab_sizes,
            embedding_dims={f: 1 for f in [*categorical, *numerical]},
            numeric_encoding=linear_encoding, num_buckets=num_buckets, l2=l2,
            embeddings_initializer=embeddings_initializer, name="weights_per_field")
        self.bias: tf.Variable | None = None

    def build(self, input_shape: Any) -> None:
        self.weights_per_field.build(input_shape)
        for layer in self.missing_weights.values():
            with tf.name_scope(layer.name):  # one weight name per field
                layer.build([(None, 1), (None,)])
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros",
                                        trainable=True)
        super().build(input_shape)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        weights = self.weights_per_field(inputs)
        if self.missing_weights:
            fields = self.weights_per_field.fields
            weights = [self.missing_weights[f]([w, inputs[missing_name(f)]])
                       if f in self.missing_weights else w
                       for f, w in zip(fields, weights, strict=True)]
        logit = tf.add_n(weights)
        if self.bias is not None:
            logit = logit + tf.cast(self.bias, self.compute_dtype)
        return logit

    def get_config(self) -> dict[str, Any]:
        inner = self.weights_per_field.get_config()
        return {
            **super().get_config(),
            **{key: inner[key] for key in ("categorical", "numerical", "vocab_sizes",
                                           "numeric_encoding", "num_buckets", "l2",
                                           "embeddings_initializer")},
            "use_bias": self.use_bias,
            "numeric_missing": list(self.numeric_missing),
        }
