"""Runs the autorecsys pipeline with TFX's BeamDagRunner.

The orchestrator runs each component as a step of one Beam pipeline; the components' own Beam
work (ExampleGen, StatisticsGen, Transform, Evaluator) runs on ``--runner``, mapped to
``beam_pipeline_args`` in ``pipeline/runners.py``. Example:

    ./scripts/in-env python beam_runner.py --dataset synthetic --runner direct-multiprocess
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from pipeline.configs import ConfigError, PipelineConfig  # noqa: E402
from pipeline.datasets.base import DatasetError  # noqa: E402
from pipeline.runners import RUNNER_NAMES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="PipelineConfig JSON")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--output-dir", default="runs/beam")
    parser.add_argument("--runner", choices=RUNNER_NAMES, default=None)
    parser.add_argument("--artifact-root", default=None, metavar="URI",
                        help="examples, pipeline root and serving dir here (e.g. gs://b/run)")
    args = parser.parse_args(argv)
    from pipeline.datasets import prepare_run_dataset  # noqa: PLC0415

    try:
        config = PipelineConfig.from_json_file(args.config) if args.config else PipelineConfig()
        config.output_dir = args.output_dir
        if args.dataset:
            config.dataset = args.dataset
        if args.runner:
            config.runner = args.runner
        if args.artifact_root is not None:
            config.artifact_root = args.artifact_root
        config.validate()
        config.check_storage()  # a bad artifact_root fails before anything is prepared
        dataset = prepare_run_dataset(config)  # bad input fails before TFX is imported
        config.check_task(dataset.name, dataset.spec.task)
    except (DatasetError, ConfigError) as e:
        print(f"beam_runner: error: {e}", file=sys.stderr)
        return 2
    from pipeline.run import NotPushedError, run  # noqa: PLC0415

    try:
        summary = run(config, orchestrator="beam", dataset=dataset)
    except (DatasetError, ConfigError) as e:
        print(f"beam_runner: error: {e}", file=sys.stderr)
        return 2
    except NotPushedError as e:
        print(f"beam_runner: not pushed: {e}", file=sys.stderr)
        return 3
    print(json.dumps(summary["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
