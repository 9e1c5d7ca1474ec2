"""Beam runner choice as data: ``--runner NAME`` -> the components' ``beam_pipeline_args``.

The pipeline never branches on the runner. ``flink`` and ``spark`` run the Python side of every Beam
job in this process (``LOOPBACK``; the cluster's workers reach it at ``localhost``), so they need
the cluster on this machine. Workers elsewhere (Dataflow, or a remote cluster through extra
``--environment_type`` flags) import our code and TensorFlow themselves: they run from an image
with the autorecsys wheel installed and ``TF_USE_LEGACY_KERAS=1`` set (``--sdk_container_image``;
Dataflow has no flag that sets a worker's environment, and the Evaluator loads the Keras model on
the workers).
"""

from __future__ import annotations

import os

# Beam >= 2.68's DirectRunner first tries Prism, which downloads a binary at run time; the
# FnApiRunner (the DirectRunner's own engine) runs in-process or multi-process without it.
_FN_API_RUNNER = "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"

BEAM_ARGS_BY_RUNNER: dict[str, list[str]] = {
    "direct": [_FN_API_RUNNER, "--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "direct-multiprocess": [_FN_API_RUNNER, "--direct_running_mode=multi_processing",
                            "--direct_num_workers=2"],
    "flink": ["--runner=FlinkRunner", "--flink_master={flink_master}", "--flink_submit_uber_jar",
              "--environment_type=LOOPBACK", "--parallelism={parallelism}",
              "--sdk_worker_parallelism={parallelism}", "--environment_cache_millis=1000000",
              "--experiments=pre_optimize=all"],
    "spark": ["--runner=SparkRunner", "--spark_submit_uber_jar",
              "--spark_rest_url={spark_rest_url}", "--environment_type=LOOPBACK",
              "--environment_cache_millis=1000000", "--experiments=pre_optimize=all"],
    "dataflow": ["--runner=DataflowRunner", "--project={gcp_project}", "--region={gcp_region}",
                 "--temp_location={temp_location}", "--experiments=use_runner_v2",
                 "--sdk_container_image={sdk_container_image}"],
}

RUNNER_NAMES = tuple(BEAM_ARGS_BY_RUNNER)

# Placeholders of the remote runners and the environment variables that fill them.
_PLACEHOLDER_ENV = {
    "flink_master": ("AUTORECSYS_FLINK_MASTER", "localhost:8081"),
    "parallelism": ("AUTORECSYS_PARALLELISM", "2"),
    "spark_rest_url": ("AUTORECSYS_SPARK_REST_URL", "http://localhost:6066"),
    "gcp_project": ("AUTORECSYS_GCP_PROJECT", None),
    "gcp_region": ("AUTORECSYS_GCP_REGION", None),
    "temp_location": ("AUTORECSYS_TEMP_LOCATION", None),
    "sdk_container_image": ("AUTORECSYS_SDK_CONTAINER_IMAGE", None),
}


def beam_pipeline_args(runner: str, extra: list[str] | None = None) -> list[str]:
    """The runner's flags with placeholders filled from the environment, then ``extra``.

    Raises:
      ValueError: unknown runner, or a remote runner whose required variable is unset.
    """
    if runner not in BEAM_ARGS_BY_RUNNER:
        raise ValueError(f"Unknown runner {runner!r}; known: {sorted(BEAM_ARGS_BY_RUNNER)}.")
    values = {}
    for key, (env, default) in _PLACEHOLDER_ENV.items():
        values[key] = os.environ.get(env, default)
    args = []
    for arg in BEAM_ARGS_BY_RUNNER[runner]:
        for key, value in values.items():
            if "{" + key + "}" in arg:
                if value is None:
                    raise ValueError(f"Runner {runner!r} needs {_PLACEHOLDER_ENV[key][0]} set "
                                     f"(for {arg.split('=')[0]}).")
                arg = arg.replace("{" + key + "}", value)
        args.append(arg)
    return args + list(extra or [])
