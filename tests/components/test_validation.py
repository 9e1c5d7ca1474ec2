"""AnomaliesGate stops the run on anomalies, tolerates unseen categories, passes the schema."""

import os

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.validation import DataAnomaliesError, anomaly_messages


def _write_anomalies(root, split: str, anomalies: anomalies_pb2.Anomalies) -> None:
    directory = os.path.join(root, f"Split-{split}")
    os.makedirs(directory)
    with open(os.path.join(directory, "SchemaDiff.pb"), "wb") as f:
        f.write(anomalies.SerializeToString())


def _anomaly(kind: str, short: str) -> anomalies_pb2.AnomalyInfo:
    info = anomalies_pb2.AnomalyInfo(short_description=short, description=short + " (long)")
    info.reason.add(type=anomalies_pb2.AnomalyInfo.Type.Value(kind))
    return info


def test_clean_anomalies_give_no_messages(tmp_path):
    _write_anomalies(tmp_path, "train", anomalies_pb2.Anomalies())
    _write_anomalies(tmp_path, "eval", anomalies_pb2.Anomalies())
    assert anomaly_messages(str(tmp_path)) == []


def test_unseen_categories_are_tolerated_other_anomalies_are_named(tmp_path):
    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_info["city"].CopyFrom(
        _anomaly("ENUM_TYPE_UNEXPECTED_STRING_VALUES", "Unexpected string values"))
    anomalies.anomaly_info["price"].CopyFrom(
        _anomaly("FEATURE_TYPE_LOW_FRACTION_PRESENT", "Column dropped"))
    _write_anomalies(tmp_path, "eval", anomalies)
    messages = anomaly_messages(str(tmp_path))
    assert messages == ["split 'eval', feature 'price': Column dropped (Column dropped (long))"]


def test_gate_raises_naming_split_and_feature(tmp_path):
    from components.validation import AnomaliesGate

    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_info["label"].CopyFrom(_anomaly("SCHEMA_NEW_COLUMN", "New column"))
    _write_anomalies(tmp_path / "anomalies", "train", anomalies)

    class _Artifact:
        def __init__(self, uri):
            self.uri = str(uri)

    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "schema.pbtxt").write_text("")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataAnomaliesError, match="split 'train', feature 'label': New column"):
        AnomaliesGate.test_call(anomalies=_Artifact(tmp_path / "anomalies"),
                                schema=_Artifact(tmp_path / "schema"),
                                validated_schema=_Artifact(tmp_path / "out"))
    assert not (tmp_path / "out" / "schema.pbtxt").exists()
