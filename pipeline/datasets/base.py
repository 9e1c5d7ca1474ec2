"""What every dataset adapter produces: raw CSV splits plus a declared feature spec.

An adapter turns a public raw format (or the synthetic generator) into a directory holding
``train.csv``, ``eval.csv`` and ``test.csv`` (header row, the dataset's raw columns, label included)
and ``feature_spec.json``. Everything downstream (ExampleGen, Transform, the bench) reads only that.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

SPLITS = ("train", "eval", "test")
TASKS = ("ctr", "topk")


class DatasetError(ValueError):
    """Bad or missing input data; the message names the dataset, file, row or field."""


@dataclass(frozen=True)
class FeatureSpec:
    """The declared columns of a prepared dataset.

    Attributes:
      label: name of the 0/1 label column.
      categorical: categorical fields, read as strings (ids are kept as their text).
      numerical: numerical fields, read as float32.
      optional_numerical: the numerical fields whose cells may be empty (a value absent from
        that row: written as an absent feature, and given its own "missing" embedding by the
        models); in the others an empty cell is an error.
      task: ``"ctr"`` (pointwise click prediction) or ``"topk"`` (user-item retrieval).
      user: the user column, for top-k datasets.
      item: the item column, for top-k datasets.
    """

    label: str
    categorical: tuple[str, ...]
    numerical: tuple[str, ...] = ()
    optional_numerical: tuple[str, ...] = ()
    task: str = "ctr"
    user: str | None = None
    item: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "numerical", tuple(self.numerical))
        object.__setattr__(self, "optional_numerical", tuple(self.optional_numerical))
        unknown = sorted(set(self.optional_numerical) - set(self.numerical))
        if unknown:
            raise DatasetError(f"optional_numerical names columns that are not numerical: "
                               f"{unknown}. Received: numerical={list(self.numerical)}")
        if self.task not in TASKS:
            raise DatasetError(f"Unknown task {self.task!r}; expected one of {TASKS}.")
        names = [self.label, *self.categorical, *self.numerical]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DatasetError(f"Feature spec names columns more than once: {duplicated}.")
        if not self.categorical and not self.numerical:
            raise DatasetError("Feature spec has no categorical and no numerical fields.")

    @property
    def columns(self) -> tuple[str, ...]:
        """All raw columns in a stable order: label, categorical, numerical."""
        return (self.label, *self.categorical, *self.numerical)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def component_spec(self) -> dict:
        """The dict the components read as ``custom_config["spec"]`` (Transform, Trainer,
        search): the columns, and for a top-k dataset its task and user/item columns."""
        spec = {"label": self.label, "categorical": list(self.categorical),
                "numerical": list(self.numerical),
                "optional_numerical": list(self.optional_numerical)}
        if self.task == "topk":
            spec.update(task=self.task, user=self.user, item=self.item)
        return spec

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(**data)


@dataclass
class PreparedDataset:
    """A dataset laid out as ``directory/{train,eval,test}.csv`` plus ``feature_spec.json``."""

    name: str
    directory: str
    spec: FeatureSpec
    metadata: dict = field(default_factory=dict)

    def split_path(self, split: str) -> str:
        if split not in SPLITS:
            raise DatasetError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        return os.path.join(self.directory, f"{split}.csv")

    def write_manifest(self) -> None:
        manifest = {"name": self.name, "spec": self.spec.to_dict(), "metadata": self.metadata}
        with open(os.path.join(self.directory, "feature_spec.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> PreparedDataset:
        path = os.path.join(directory, "feature_spec.json")
        if not os.path.exists(path):
            raise DatasetError(f"{path}: no feature_spec.json; is {directory} a prepared dataset?")
        with open(path) as f:
            manifest = json.load(f)
        return cls(
            name=manifest["name"],
            directory=directory,
            spec=FeatureSpec.from_dict(manifest["spec"]),
            metadata=manifest.get("metadata", {}),
        )
