"""Serving latency of an exported SavedModel, measured in a fresh Python process.

``python -m benchmarks.serving --model-dir DIR --input FILE.csv`` loads the model cold, builds
serialized tf.Examples from the CSV and times ``serving_default`` at batch 1 and 256.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

BATCH_SIZES = (1, 256)
REPEATS = {1: 300, 256: 60}
WARMUP = 10


def measure(model_dir: str, csv_path: str) -> dict:
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from pipeline.predict import csv_examples, load_raw_spec  # noqa: PLC0415

    load_start = time.perf_counter()
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    load_seconds = time.perf_counter() - load_start
    spec = load_raw_spec(model_dir)
    examples = list(itertools.islice(csv_examples(csv_path, spec), max(BATCH_SIZES)))
    latency = {}
    for batch in BATCH_SIZES:
        inputs = tf.constant((examples * batch)[:batch])
        for _ in range(WARMUP):
            serve(examples=inputs)
        times = []
        for _ in range(REPEATS[batch]):
            start = time.perf_counter()
            serve(examples=inputs)["probability"].numpy()
            times.append((time.perf_counter() - start) * 1000.0)
        latency[str(batch)] = {"p50": float(np.percentile(times, 50)),
                               "p99": float(np.percentile(times, 99)), "n": len(times)}
    return {"load_seconds": load_seconds, "latency_ms": latency}


def measure_in_fresh_process(model_dir: str, csv_path: str) -> dict:
    """Runs ``measure`` in a new interpreter, so nothing is warm from training."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    out = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--model-dir", model_dir,
                          "--input", csv_path], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--input", required=True)
    args = parser.parse_args()
    print(json.dumps(measure(args.model_dir, args.input)))


if __name__ == "__main__":
    main()
