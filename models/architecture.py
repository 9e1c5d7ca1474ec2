"""The Architecture: the one object that crosses from search to retrain to export to report.

A search stage writes it (JSON); the retrain stage builds the model from it alone; the export keeps
it as an asset; reports show it. Everything in it is plain data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from models.autoctr_dag import check_dag

ARCHITECTURE_VERSION = 1
# Pointwise click models (models.zoo.ctr).
CTR_MODELS = ("lr", "fm", "deepfm", "dcn", "dnn", "autoctr", "autogroup")
TOPK_MODELS = ("mf",)  # user-item retrieval models (models.zoo.mf), trained with BPR
MODELS = CTR_MODELS + TOPK_MODELS
NUMERIC_ENCODINGS = ("scaled", "bucket", "autodis")
FIRST_ORDER_MODELS = ("lr", "fm", "deepfm", "autoctr",  # models with a per-field LR term
                      "autogroup")
# AutoDis settings (``models.layers.autodis.AutoDis`` arguments) and their defaults: H = 20
# meta-embeddings (the paper's Criteo setting), tau = 0.1 and alpha = 0.8 (EasyRec's
# temperature and keep_prob); top-3-sum beat the weighted average, max-pooling and tau 0.001,
# 0.01, 1 on criteo10k's validation AUC (README, "AutoDis").
# Learned training losses (``Architecture.loss["kind"]``; modules in ``models.losses``).
LOSS_KINDS = ("autoloss", "autolossgen")
AUTODIS_AGGREGATIONS = ("weighted_average", "max_pooling", "top_k_sum")
AUTODIS_DEFAULTS = {"num_meta_embeddings": 20, "temperature": 0.1, "skip_factor": 0.8,
                    "aggregation": "top_k_sum", "top_k": 3, "centres": True}
# Models whose categorical vector tables are ``FieldEmbedding``'s, which applies ``id_l2``.
# ``mf`` applies it to its user and item tables (``models.zoo.mf``).
ID_L2_MODELS = ("fm", "deepfm", "dnn", "dcn", "autoctr", "mf")


def id_dims_chain(id_dims: list[int], output_dim: int) -> list[int]:
    """ESAPN's chain of sizes for per-id sizes ``id_dims``: the distinct sizes used, then
    ``output_dim`` (the retrain maps each used size up through the larger ones)."""
    return sorted({*(int(d) for d in id_dims), int(output_dim)})


def id_dims_params(id_dims: list[int], chain: list[int], use_bias: bool = True) -> int:
    """``sum_i d_i`` plus a ``(d_k + bias) x d_{k+1}`` map per step of ``chain`` from the
    smallest size used (``models.layers.esapn.ESAPNEmbedding``'s stored parameters)."""
    chain = list(chain)
    used = chain[chain.index(min(id_dims)):]
    return int(sum(id_dims)) + sum((d + int(use_bias)) * e for d, e in pairwise(used))


BLOCK_PROJECTIONS = ("learned", "pad")  # how a NIS block of size d_v < D reaches D


def multisize_params(blocks: list[list[int]], output_dim: int,
                     projection: str = "learned") -> int:
    """NIS multi-size embedding of blocks ``[[n_v, d_v], ...]``: ``sum_v n_v d_v``, plus a
    ``d_v x output_dim`` projection per block with ``0 < d_v < output_dim`` when ``projection``
    is ``"learned"`` (``"pad"`` zero-pads and stores none;
    ``models.layers.multisize.MultiSizeEmbedding``'s parameters)."""
    learned = projection == "learned"
    return sum(n * d + (d * output_dim if learned and 0 < d < output_dim else 0)
               for n, d in blocks)


class ArchitectureError(ValueError):
    """An Architecture that cannot be built; the message names the offending field."""


def check_id_l2(id_l2: Mapping[str, Sequence[float]], vocab_sizes: Mapping[str, int]) -> None:
    """Raises ``ArchitectureError`` naming the field unless every ``id_l2[f]`` belongs to a
    categorical field of ``vocab_sizes`` and holds one finite strength ``>= 0`` per id."""
    for name, strengths in id_l2.items():
        if name not in vocab_sizes:
            raise ArchitectureError(f"id_l2 names {name!r}, which is not a categorical field. "
                                    f"Received: categorical={list(vocab_sizes)}")
        if len(strengths) != vocab_sizes[name]:
            raise ArchitectureError(f"id_l2[{name!r}] needs one strength per id "
                                    f"({vocab_sizes[name]} ids). Received: {len(strengths)}")
        bad = next((i for i, x in enumerate(strengths) if not (math.isfinite(x) and x >= 0)), None)
        if bad is not None:
            raise ArchitectureError(f"id_l2[{name!r}] strengths must be finite and >= 0. "
                                    f"Received: {strengths[bad]} at id {bad}")


@dataclass
class Architecture:
    """A complete, buildable model description.

    Attributes:
      model: model family, one of ``MODELS``; ``mf`` (top-k) has two categorical fields, the
        user then the item, whose tables hold ``vocab_sizes[f] x embedding_dims[f]`` parameters.
      categorical: categorical field names (raw names), in input order.
      numerical: numerical field names (raw names), in input order.
      vocab_sizes: per categorical field, the id range including OOV buckets.
      num_buckets: number of quantile buckets per numerical field.
      embedding_dims: per field (categorical and numerical), its embedding size.
      numeric_encoding: per numerical field, ``"scaled"`` (value times a field embedding),
        ``"bucket"`` (embedding of its quantile bucket) or ``"autodis"`` (AutoDis: a learned
        soft discretisation over meta-embeddings, ``models.layers.autodis``).
      autodis: AutoDis settings of ``"autodis"``-encoded fields (see ``models.layers.autodis``).
      numeric_missing: numerical fields whose value can be absent (Transform found absent
        values in the train split); each gets a learned vector (and first-order weight) used
        instead of its encoding where its ``f_missing`` input is 1
        (``models.layers.embeddings.MissingValueEmbedding``).
      hidden_units: MLP widths for deep models.
      dropout: MLP dropout rate.
      batch_norm: batch normalisation in the MLP blocks.
      l2: L2 strength on embedding tables (and first-order weights).
      net_l2: L2 strength on MLP, cross and output kernels.
      embedding_init_std: standard deviation of the normal initialisation of embeddings (small,
        so that rarely seen ids stay near zero instead of adding noise).
      cross_layers: number of DCN cross layers.
      kept_interactions: pairs of fields whose FM interaction is kept; ``None`` keeps all pairs.
      gated_interactions: FM pairs pass through AutoFIS gates (batch-norm without affine, then a
        trainable scalar gate per kept pair; ``models.layers.autofis``) instead of being summed.
      unified_dim: when set, every field embedding of its own size ``d_f`` is projected to this
        common size before the interaction and MLP parts (AutoDim's dimension unification);
        FM-based models then accept mixed ``embedding_dims``.
      embedding_blocks: NIS multi-size embeddings: per categorical field, ``[[num_ids, dim],
        ...]`` blocks in id order (ids are sorted by train frequency, so the first block holds
        the most frequent ids); the counts sum to the field's vocab size. Fields absent use
        ``embedding_dims``.
      block_projection: how a NIS block of size ``d_v`` below the field's size reaches it:
        ``"learned"``, a trainable ``d_v x D`` projection (the paper's), or ``"pad"``,
        zero-padding (what the NIS search's weight-sharing super-table trains; no parameters).
      projected_l2: where ``l2`` applies when a learned projection follows a table (the
        ``unified_dim`` maps of AutoDim, NIS's ``block_projection="learned"``): ``True``, on the
        projected embedding ``E P`` that the model uses (the whole table, like the baseline's
        L2 on its tables), so that the projection cannot undo the penalty by shrinking ``E``
        and growing ``P``; ``False``, on ``E`` alone (``net_l2`` on ``P``), as before session 10.
        Chosen on frappe86k's validation AUC (README, NIS and AutoDim).
      id_dims: ESAPN per-value sizes: per categorical field, one embedding size per id (id
        order). Fields absent use ``embedding_dims``.
      id_l2: λOpt's fixed per-id L2 strengths: per categorical field, one ``Λ[id] >= 0`` per id
        (``vocab_sizes[f]`` values, OOV ids included), written by the ``lambdaopt`` search. Such a
        field's table gets ``1/2 · sum_{rows r of the batch} Λ[r] · |e_r|^2 / batch_size``
        (``models.layers.lambdaopt``) instead of ``l2``; training only. Fields absent keep
        ``l2``. Models in ``ID_L2_MODELS`` only, without ``id_dims`` or ``embedding_blocks``.
      autoctr: the ``autoctr`` family's DAG of virtual blocks (plain JSON, schema in
        ``models.autoctr_dag``), written by the ``autoctr`` search; ``None`` before it (an
        ``autoctr`` model cannot be built without one).
      feature_groups: the ``autogroup`` family's feature sets: per interaction order ``p``
        (key ``str(p)``), a list of sets of field names whose order-``p`` interaction the model
        builds (``models.layers.autogroup``); written by the ``autogroup`` search, empty before
        it (an ``autogroup`` model cannot be built without sets).
      group_dims: per order of ``feature_groups``, the embedding size of that order's own
        tables (one table per field that appears in a set of that order).
      group_logit: the ``autogroup`` family's set interactions of order >= 2 also reach the
        logit through a linear layer, beside the MLP (as DeepFM adds its FM term).
      loss: the training loss: ``None`` is logloss (BPR for ``mf``); otherwise a learned loss
        ``{"kind": one of LOSS_KINDS, ...}`` (plain JSON; ``models.losses`` builds it). Training
        only: serving is the same whatever the loss.
      lambdaopt: λOpt's joint training (top-k ``mf`` only): the settings of
        ``models.search.lambdaopt`` (``variant``, ``lambda_learning_rate``, ...). The retrain
        then learns per-user and per-item ``Λ`` jointly with the model, from ``Λ₀``, as the paper
        does, instead of a fixed ``l2``. Written by the top-k ``lambdaopt`` strategy.
      search: what produced this architecture (strategy name and its own report).
      version: schema version of this JSON.
    """

    model: str
    categorical: list[str]
    numerical: list[str]
    vocab_sizes: dict[str, int]
    num_buckets: int = 20
    embedding_dims: dict[str, int] = field(default_factory=dict)
    numeric_encoding: dict[str, str] = field(default_factory=dict)
    numeric_missing: list[str] = field(default_factory=list)
    hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.0
    batch_norm: bool = False
    l2: float = 0.0
    net_l2: float = 0.0
    embedding_init_std: float = 1e-4
    cross_layers: int = 3
    kept_interactions: list[list[str]] | None = None
    gated_interactions: bool = False
    autodis: dict = field(default_factory=dict)
    unified_dim: int | None = None
    embedding_blocks: dict[str, list[list[int]]] = field(default_factory=dict)
    block_projection: str = "learned"
    projected_l2: bool = True
    id_dims: dict[str, list[int]] = field(default_factory=dict)
    id_l2: dict[str, list[float]] = field(default_factory=dict)
    autoctr: dict | None = None
    feature_groups: dict[str, list[list[str]]] = field(default_factory=dict)
    group_dims: dict[str, int] = field(default_factory=dict)
    group_logit: bool = False
    loss: dict | None = None
    lambdaopt: dict | None = None
    search: dict = field(default_factory=lambda: {"strategy": "none"})
    version: int = ARCHITECTURE_VERSION

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ArchitectureError(f"Unknown model {self.model!r}; expected one of {MODELS}.")
        for name in self.categorical:
            if self.vocab_sizes.get(name, 0) < 1:
                raise ArchitectureError(f"Field {name!r} has no vocab size. Received: "
                                        f"vocab_sizes={self.vocab_sizes}")
        for name in [*self.categorical, *self.numerical]:
            dim = self.embedding_dims.get(name)
            if dim is None or dim < 1:
                raise ArchitectureError(f"Field {name!r} needs an embedding dim >= 1. Received: "
                                        f"{dim}")
        for name in self.numerical:
            encoding = self.numeric_encoding.setdefault(name, "scaled")
            if encoding not in NUMERIC_ENCODINGS:
                raise ArchitectureError(f"Field {name!r}: unknown numeric encoding {encoding!r}; "
                                        f"expected one of {NUMERIC_ENCODINGS}.")
        if not set(self.numeric_missing) <= set(self.numerical):
            raise ArchitectureError(f"numeric_missing names fields that are not numerical: "
                                    f"{sorted(set(self.numeric_missing) - set(self.numerical))}. "
                                    f"Received: numerical={self.numerical}")
        if not 0.0 <= self.dropout < 1.0:
            raise ArchitectureError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        for key in ("l2", "net_l2"):
            if getattr(self, key) < 0:
                raise ArchitectureError(f"{key} must be >= 0. Received: {key}={getattr(self, key)}")
        unknown_autodis = sorted(set(self.autodis) - set(AUTODIS_DEFAULTS))
        if unknown_autodis:
            raise ArchitectureError(f"autodis has unknown settings {unknown_autodis}; expected "
                                    f"some of {sorted(AUTODIS_DEFAULTS)}. "
                                    f"Received: autodis={self.autodis}")
        if self.unified_dim is not None and self.unified_dim < 1:
            raise ArchitectureError(f"unified_dim must be >= 1 or None. "
                                    f"Received: unified_dim={self.unified_dim}")
        for name, dims in self.id_dims.items():
            limit = self.embedding_dims.get(name, 0)
            if name not in self.categorical or len(dims) != self.vocab_sizes[name] or not all(
                    1 <= d <= limit for d in dims):
                raise ArchitectureError(f"id_dims[{name!r}] needs one size in [1, {limit}] per id "
                                        f"of a categorical field ({self.vocab_sizes.get(name)} "
                                        f"ids). Received: {len(dims)} sizes in "
                                        f"[{min(dims, default=None)}, {max(dims, default=None)}]")
        for name, blocks in self.embedding_blocks.items():
            limit = self.embedding_dims.get(name, 0)
            if name not in self.categorical or name in self.id_dims or not blocks or any(
                    len(b) != 2 or b[0] < 1 or not 0 <= b[1] <= limit for b in blocks) or sum(
                    b[0] for b in blocks) != self.vocab_sizes[name]:
                raise ArchitectureError(
                    f"embedding_blocks[{name!r}] needs [num_ids >= 1, dim in [0, {limit}]] blocks "
                    f"of a categorical field without id_dims, summing to its vocab size "
                    f"{self.vocab_sizes.get(name)}. Received: {blocks}")
        if self.block_projection not in BLOCK_PROJECTIONS:
            raise ArchitectureError(f"block_projection must be one of {BLOCK_PROJECTIONS}. "
                                    f"Received: block_projection={self.block_projection!r}")
        if not isinstance(self.projected_l2, bool):
            raise ArchitectureError(f"projected_l2 must be true or false. "
                                    f"Received: projected_l2={self.projected_l2!r}")
        self._check_id_l2()
        if self.lambdaopt is not None and (self.model not in TOPK_MODELS or not isinstance(
                self.lambdaopt, dict) or self.id_dims or self.id_l2):
            raise ArchitectureError(f"lambdaopt (joint λOpt training settings, a dict) applies to "
                                    f"{TOPK_MODELS} without id_dims or id_l2. Received: "
                                    f"model={self.model!r}, lambdaopt={self.lambdaopt!r:.200}")
        if self.autoctr is not None:
            try:
                check_dag(self.autoctr, has_dense=any(
                    self.numeric_encoding[f] != "bucket" for f in self.numerical))
            except ValueError as e:
                raise ArchitectureError(f"autoctr: {e}") from e
        self._check_feature_groups()
        if self.loss is not None and (not isinstance(self.loss, dict)
                                      or self.loss.get("kind") not in LOSS_KINDS):
            raise ArchitectureError(f"loss must be None or a dict whose 'kind' is one of "
                                    f"{LOSS_KINDS}. Received: loss={self.loss!r:.200}")
        fields = set(self.categorical) | set(self.numerical)
        for pair in self.kept_interactions or []:
            if len(pair) != 2 or not set(pair) <= fields:
                raise ArchitectureError(f"kept_interactions names an unknown pair {pair}.")

    def _check_id_l2(self) -> None:
        check_id_l2(self.id_l2, {f: self.vocab_sizes[f] for f in self.categorical})
        if self.id_l2 and self.model not in ID_L2_MODELS:
            raise ArchitectureError(f"id_l2 applies to models {ID_L2_MODELS}. "
                                    f"Received: model={self.model!r}")
        if self.id_l2 and (self.id_dims or self.embedding_blocks):
            raise ArchitectureError(f"id_l2 cannot be combined with id_dims or embedding_blocks "
                                    f"(their layers do not apply it). Received: id_l2 fields "
                                    f"{sorted(self.id_l2)}, id_dims fields {sorted(self.id_dims)}, "
                                    f"embedding_blocks fields {sorted(self.embedding_blocks)}")

    def _check_feature_groups(self) -> None:
        if self.group_logit and self.model != "autogroup":
            raise ArchitectureError(f"group_logit applies to model 'autogroup' only. "
                                    f"Received: model={self.model!r}")
        if self.feature_groups and self.model != "autogroup":
            raise ArchitectureError(f"feature_groups applies to model 'autogroup' only. "
                                    f"Received: model={self.model!r}")
        if sorted(self.group_dims) != sorted(self.feature_groups) or any(
                int(d) < 1 for d in self.group_dims.values()):
            raise ArchitectureError(f"group_dims needs one dim >= 1 per order of feature_groups "
                                    f"{sorted(self.feature_groups)}. "
                                    f"Received: group_dims={self.group_dims}")
        fields = set(self.fields)
        for order, groups in self.feature_groups.items():
            if not str(order).isdigit() or int(order) < 1:
                raise ArchitectureError(f"feature_groups keys are orders '1', '2', ... "
                                        f"Received: key {order!r}")
            smallest = 1 if int(order) == 1 else 2
            for group in groups:
                if len(group) < smallest or len(set(group)) != len(group) or not set(
                        group) <= fields:
                    raise ArchitectureError(
                        f"feature_groups[{order!r}] needs sets of at least {smallest} distinct "
                        f"known fields. Received: {group}")
        if self.feature_groups and not any(self.feature_groups.values()):
            raise ArchitectureError(f"feature_groups holds no set. "
                                    f"Received: feature_groups={self.feature_groups}")

    def group_fields(self, order: str) -> list[str]:
        """The fields in any set of ``feature_groups[order]``, in field order."""
        used = {f for group in self.feature_groups[order] for f in group}
        return [f for f in self.fields if f in used]

    @property
    def fields(self) -> list[str]:
        return [*self.categorical, *self.numerical]

    def embedding_params(self) -> int:
        """Parameters in the embedding tables the model builds: per-field vector tables (all
        models but ``lr``) plus one-dimensional first-order tables (``lr``, ``fm``, ``deepfm``).
        An AutoDis field holds ``H x d_f`` meta-embeddings and one first-order scalar. With
        ``unified_dim`` (AutoDim), each field's projection ``(d_f + 1) x unified_dim`` counts too:
        it is the price of storing fields at their own sizes. A NIS field (``embedding_blocks``)
        holds its block tables plus their learned projections, if any (``multisize_params``).
        A ``numeric_missing`` field adds its missing-value vector and first-order weight.
        An ``autogroup`` field holds one ``vocab x group_dims[p]`` table per order ``p`` whose
        sets use it."""
        vector = {f: 0 if self.model == "lr" else self.embedding_dims[f] for f in self.fields}
        if self.model == "autogroup":  # a table per order for the fields of its sets
            vector = {f: sum(self.group_dims[p] for p in self.feature_groups
                             if f in self.group_fields(p)) for f in self.fields}
        scalar = 1 if self.model in FIRST_ORDER_MODELS else 0
        total = sum(self.vocab_sizes[f] * (vector[f] + scalar) for f in self.categorical)
        vector_rows = {"scaled": 1, "bucket": self.num_buckets,
                       "autodis": self.autodis_settings()["num_meta_embeddings"]}
        for f in self.numerical:
            encoding = self.numeric_encoding[f]
            scalar_rows = self.num_buckets if encoding == "bucket" else 1
            total += vector_rows[encoding] * vector[f] + scalar_rows * scalar
        total += sum(vector[f] + scalar for f in self.numeric_missing)
        if self.unified_dim is not None and self.model != "lr":
            total += sum((vector[f] + 1) * self.unified_dim for f in self.fields)
        if self.model != "lr":  # ESAPN fields store sum_i d_i plus their maps, not vocab x d_f
            for f, dims in self.id_dims.items():
                total += id_dims_params(dims, id_dims_chain(dims, vector[f]),
                                        use_bias=self.model not in TOPK_MODELS)
                total -= self.vocab_sizes[f] * vector[f]
            for f, blocks in self.embedding_blocks.items():  # NIS: blocks plus projections
                total += (multisize_params(blocks, vector[f], self.block_projection)
                          - self.vocab_sizes[f] * vector[f])
        return total

    def autodis_settings(self) -> dict:
        """``autodis`` completed with ``AUTODIS_DEFAULTS``: the ``AutoDis`` layer's arguments."""
        return {**AUTODIS_DEFAULTS, **self.autodis}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        data = json.loads(text)
        version = data.get("version")
        if version != ARCHITECTURE_VERSION:
            raise ArchitectureError(f"Architecture version {version} is not supported "
                                    f"(expected {ARCHITECTURE_VERSION}).")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchitectureError(f"Architecture JSON has unknown keys {unknown}.")
        return cls(**data)

    @classmethod
    def uniform(cls, model: str, categorical: list[str], numerical: list[str],
                vocab_sizes: dict[str, int], embedding_dim: int, **kwargs) -> Architecture:
        """The fixed (search strategy ``none``) architecture: one embedding size for all fields."""
        dims = {f: embedding_dim for f in [*categorical, *numerical]}
        return cls(model=model, categorical=list(categorical), numerical=list(numerical),
                   vocab_sizes=dict(vocab_sizes), embedding_dims=dims, **kwargs)
