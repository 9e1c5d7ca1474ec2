"""``TopkBlessing``: the top-k pipeline's stand-in for the Evaluator (TFMA cannot rank).

It reads the eval Recall@20 that the Trainer measured by full ranking (``training_report.json``
in the ModelRun artifact) and blesses the model when it reaches ``min_recall``. The blessing is
written the way TFX's Evaluator writes it (a ``BLESSED`` or ``NOT_BLESSED`` file and the custom
properties ``blessed``, ``current_model_uri`` and ``current_model_id``), so the stock Pusher and
``LatestBlessedModelStrategy`` accept it.
"""

import json
import logging
import os

from tfx import v1 as tfx

from components.topk_trainer import TRAINING_REPORT, K
from pipeline import storage

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
RECALL_KEY = f"eval_recall@{K}"


def eval_recall(model_run_uri: str) -> float:
    """The best eval Recall@20 recorded in the ModelRun's training report."""
    path = os.path.join(model_run_uri, TRAINING_REPORT)
    report = json.loads(storage.read_text(path))
    value = report.get(RECALL_KEY)
    if value is None:
        raise ValueError(f"{path} has no {RECALL_KEY}; was the model trained by the top-k "
                         f"Trainer?")
    return float(value)


@tfx.dsl.components.component
def TopkBlessing(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_run: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelRun],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    min_recall: tfx.dsl.components.Parameter[float],
) -> None:
    """Blesses ``model`` when its eval Recall@20 is at least ``min_recall``."""
    recall = eval_recall(model_run.uri)
    blessed = recall >= min_recall
    blessing.set_string_custom_property("current_model_uri", model.uri)
    if model.id:
        blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_float_custom_property(RECALL_KEY, recall)
    storage.write_text(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE),
                       "")
    blessing.set_int_custom_property("blessed", int(blessed))
    logging.info("TopkBlessing: eval %s = %.4f, threshold %.4f: %s.", RECALL_KEY, recall,
                 min_recall, "blessed" if blessed else "not blessed")
