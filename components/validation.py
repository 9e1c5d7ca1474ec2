"""A gate after ExampleValidator: anomalies stop the pipeline before Transform and training.

ExampleValidator only records anomalies; nothing downstream looks at them. ``AnomaliesGate`` fails
the run when any split has an anomaly, naming the split, the feature and TFDV's description. The one
tolerated kind is an unseen categorical value (Transform maps it to an OOV id by design). Transform
and the Trainer read the gate's copy of the schema, so they cannot run before it passes.
"""


import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx

SCHEMA_FILE = "schema.pbtxt"
TOLERATED = {"ENUM_TYPE_UNEXPECTED_STRING_VALUES"}


class DataAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies in the data."""


def anomaly_messages(anomalies_uri: str) -> list[str]:
    """Human-readable anomalies per split, tolerated kinds left out."""
    messages = []
    for split_dir in sorted(d.rstrip("/") for d in tf.io.gfile.listdir(anomalies_uri)):
        path = os.path.join(anomalies_uri, split_dir, "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        split = split_dir.removeprefix("Split-")
        for feature, info in sorted(anomalies.anomaly_info.items()):
            names = {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason}
            if names <= TOLERATED:
                continue
            messages.append(f"split '{split}', feature '{feature}': "
                            f"{info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            messages.append(f"split '{split}': {info.short_description} ({info.description})")
    return messages


@tfx.dsl.components.component
def AnomaliesGate(
    anomalies: tfx.dsl.components.InputArtifact[
        tfx.types.standard_artifacts.ExampleAnomalies],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    validated_schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
) -> None:
    """Raises ``DataAnomaliesError`` on anomalies, else passes the schema on."""
    messages = anomaly_messages(anomalies.uri)
    if messages:
        raise DataAnomaliesError("ExampleValidator found anomalies; stopping before training:\n  "
                                 + "\n  ".join(messages))
    tf.io.gfile.copy(os.path.join(schema.uri, SCHEMA_FILE),
                     os.path.join(validated_schema.uri, SCHEMA_FILE), overwrite=True)
