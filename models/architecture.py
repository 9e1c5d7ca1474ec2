"""The Architecture: the one object that crosses from search to retrain to export to report.

A search stage writes it (JSON); the retrain stage builds the model from it alone; the export keeps
it as an asset; reports show it. Everything in it is plain data.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

ARCHITECTURE_VERSION = 1
CTR_MODELS = ("lr", "fm", "deepfm", "dcn", "dnn")  # pointwise click models (models.zoo.ctr)
TOPK_MODELS = ("mf",)  # user-item retrieval models (models.zoo.mf), trained with BPR
MODELS = CTR_MODELS + TOPK_MODELS
NUMERIC_ENCODINGS = ("scaled", "bucket", "autodis")
FIRST_ORDER_MODELS = ("lr", "fm", "deepfm")  # models with a per-field linear (LR) term


class ArchitectureError(ValueError):
    """An Architecture that cannot be built; the message names the offending field."""


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
        if not 0.0 <= self.dropout < 1.0:
            raise ArchitectureError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        for key in ("l2", "net_l2"):
            if getattr(self, key) < 0:
                raise ArchitectureError(f"{key} must be >= 0. Received: {key}={getattr(self, key)}")
        if self.unified_dim is not None and self.unified_dim < 1:
            raise ArchitectureError(f"unified_dim must be >= 1 or None. "
                                    f"Received: unified_dim={self.unified_dim}")
        fields = set(self.categorical) | set(self.numerical)
        for pair in self.kept_interactions or []:
            if len(pair) != 2 or not set(pair) <= fields:
                raise ArchitectureError(f"kept_interactions names an unknown pair {pair}.")

    @property
    def fields(self) -> list[str]:
        return [*self.categorical, *self.numerical]

    def embedding_params(self) -> int:
        """Parameters in the embedding tables the model builds: per-field vector tables (all
        models but ``lr``) plus one-dimensional first-order tables (``lr``, ``fm``, ``deepfm``)."""
        widths = {f: 0 for f in self.fields}
        if self.model != "lr":
            widths = dict(self.embedding_dims)
        if self.model in FIRST_ORDER_MODELS:
            widths = {f: widths[f] + 1 for f in self.fields}
        total = sum(self.vocab_sizes[f] * widths[f] for f in self.categorical)
        for f in self.numerical:
            rows = self.num_buckets if self.numeric_encoding[f] == "bucket" else 1
            total += rows * widths[f]
        return total

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
