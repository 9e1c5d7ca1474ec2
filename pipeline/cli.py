"""The ``autorecsys`` command line: demo, run, predict, bench, data.

Every failure caused by input (data, config, names) prints one ``autorecsys: error: ...`` line
naming the file, row or field, and exits with status 2; nothing is pushed or published then.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from models.search import with_family_method  # noqa: E402
from pipeline.configs import ConfigError, PipelineConfig  # noqa: E402
from pipeline.datasets.base import DatasetError  # noqa: E402


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_run_options(parser: argparse.ArgumentParser, default_dir: str) -> None:
    parser.add_argument("--config", help="JSON file with a PipelineConfig; flags override it")
    parser.add_argument("--output-dir", default=None, help=f"run directory (default {default_dir})")
    parser.add_argument("--artifact-root", default=None, metavar="URI",
                        help="examples, pipeline root and serving dir here instead of under "
                        "--output-dir (e.g. gs://bucket/path for Dataflow's workers)")
    parser.add_argument("--data-dir", default=None,
                        help="public datasets root (default: $AUTORECSYS_DATA_DIR, "
                        "else ../shared/data)")
    parser.add_argument("--model", default=None, help="lr, fm, deepfm, dcn, dnn")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--runner", default=None, help="Beam runner for the components")
    parser.add_argument("--search", default=None,
                        help="search strategy: none, or methods joined by + (e.g. autodis+autofis)")
    parser.add_argument("--loss-from", default=None, metavar="FILE",
                        help="train with the loss in FILE (AutoLossGen loss JSON, e.g. a "
                        "search's autolossgen_loss.json) instead of logloss")


def _config_from_args(args: argparse.Namespace, default_dir: str) -> PipelineConfig:
    config = PipelineConfig.from_json_file(args.config) if args.config else PipelineConfig()
    config.output_dir = args.output_dir or (config.output_dir if args.config else default_dir)
    if os.path.exists(config.output_dir) and not os.path.isdir(config.output_dir):
        raise ConfigError(f"output_dir {config.output_dir}: exists and is not a directory.")
    if args.artifact_root is not None:
        config.artifact_root = args.artifact_root
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.model:
        config.train.model = args.model
    if args.seed is not None:
        config.seed = config.train.seed = args.seed
    if args.max_epochs is not None:
        config.train.max_epochs = args.max_epochs
    if args.runner:
        config.runner = args.runner
    if args.search:
        config.search_strategy = args.search
    if args.loss_from:
        config.loss_from = os.path.abspath(args.loss_from)
    # autogroup / autoctr are found by their own search: --model alone runs it.
    config.search_strategy = with_family_method(config.train.model, config.search_strategy)
    config.validate()
    return config


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Bring-your-own CSV data: the flags of ``run``, and of ``bench`` (dataset ``csv``)."""
    parser.add_argument("--data", help="one CSV file, split by the seed (CTR data 8:1:1; an "
                        "interaction log per user)")
    parser.add_argument("--train", help="train CSV (with --eval and --test instead of --data)")
    parser.add_argument("--eval", help="eval CSV")
    parser.add_argument("--test", help="test CSV")
    parser.add_argument("--label", help="label column (0/1)")
    parser.add_argument("--categorical", type=_csv_list, default=None)
    parser.add_argument("--numerical", type=_csv_list, default=None)
    parser.add_argument("--optional-numerical", type=_csv_list, default=None,
                        help="numerical columns whose cells may be empty (missing values)")
    parser.add_argument("--user", help="top-k data: the user id column of an interaction log "
                        "(with --item; --label then optional, its 0 rows dropped)")
    parser.add_argument("--item", help="top-k data: the item id column")


DATA_OPTIONS = ("data", "train", "eval", "test", "label", "categorical", "numerical",
                "optional_numerical", "user", "item")


def data_options(args: argparse.Namespace, command: str,
                 base: dict | None = None) -> dict:
    """The bring-your-own dataset options of ``args`` over ``base`` (a config's
    ``dataset_options``), checked: one file or all three, a label and feature columns for CTR
    data, or a user and an item column (and no feature columns) for an interaction log.

    Raises:
      ConfigError: naming the flags to give or drop, prefixed with ``command``.
    """
    options = dict(base or {})
    for key in DATA_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if not options.get("data") and not all(options.get(k) for k in ("train", "eval", "test")):
        raise ConfigError(f"{command}: give --data FILE, or all of --train, --eval and --test.")
    if "user" in options or "item" in options:  # an interaction log: top-k
        if not (options.get("user") and options.get("item")):
            raise ConfigError(f"{command}: top-k data needs both --user and --item columns.")
        features = [k for k in ("categorical", "numerical", "optional_numerical")
                    if options.get(k)]
        if features:
            raise ConfigError(f"{command}: top-k data (--user/--item) takes no other feature "
                              f"columns; drop {['--' + k.replace('_', '-') for k in features]}.")
    else:
        if "label" not in options:
            raise ConfigError(f"{command}: --label is required (or --user and --item for an "
                              f"interaction log).")
        if not options.get("categorical") and not options.get("numerical"):
            raise ConfigError(f"{command}: give --categorical and/or --numerical columns.")
    return options


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from models.architecture import CTR_MODELS  # noqa: PLC0415
    from models.search import METHODS  # noqa: PLC0415
    from pipeline.datasets import DATASETS  # noqa: PLC0415

    parser.add_argument("--datasets", default=None,
                        help=f"comma-separated dataset names ({', '.join(DATASETS)}); with "
                        f"--data or --train/--eval/--test, your own CSV data is benchmarked too "
                        f"(as dataset 'csv')")
    _add_data_options(parser)
    parser.add_argument("--models", required=True,
                        help=f"comma-separated model names: a CTR family ({', '.join(CTR_MODELS)})"
                        f" with +buckets and/or +METHOD ({', '.join(sorted(METHODS))}), e.g. "
                        f"deepfm+autodis; on top-k data mf, mf+esapn, mf+autolossgen, "
                        f"mf+lambdaopt, mf+l2grid")
    parser.add_argument("--seeds", default="2021", help="comma-separated seeds")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work-dir", default=None, help="cache of prepared data (default: "
                        "next to --out)")
    parser.add_argument("--config", default=None, help="PipelineConfig JSON for train settings")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--serving", action="store_true",
                        help="also export each model and measure serving latency")
    parser.add_argument("--loss-from", default=None, metavar="FILE",
                        help="train every row with the loss in FILE (AutoLossGen loss JSON) "
                        "instead of logloss")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out (written with the same config and "
                        "data) and train only the missing ones")
    parser.add_argument("--refit", action="store_true",
                        help="top-k rows (mf, mf+esapn, mf+autolossgen): also retrain on train "
                        "+ eval for the early-stopped epoch count and report its test metrics "
                        "as *_refit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autorecsys", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the main job on a dataset (default synthetic)")
    demo.add_argument("--dataset", default=None)
    _add_run_options(demo, "runs/demo")

    run = commands.add_parser("run", help="run the pipeline on your own CSV data")
    _add_data_options(run)
    _add_run_options(run, "runs/csv")

    predict = commands.add_parser("predict", help="score a CSV with an exported model (top-k "
                                  "models: CSV user,items with the top-20 items)")
    predict.add_argument("--model-dir", required=True)
    predict.add_argument("--input", required=True, help="CSV with header; label optional")

    data = commands.add_parser("data", help="prepare a dataset's CSV splits")
    data.add_argument("--dataset", required=True)
    data.add_argument("--output-dir", required=True)
    data.add_argument("--data-dir", default=None)
    data.add_argument("--seed", type=int, default=2021)

    bench = commands.add_parser("bench", help="train and test (dataset, model, seed) rows")
    add_bench_arguments(bench)
    return parser


def _run_config(args: argparse.Namespace) -> PipelineConfig:
    config = _config_from_args(args, "runs/csv")
    config.dataset = "csv"
    config.dataset_options = data_options(args, "run", config.dataset_options)
    return config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("demo", "run"):
            from pipeline.datasets import prepare_run_dataset  # noqa: PLC0415

            if args.command == "demo":
                config = _config_from_args(args, "runs/demo")
                if args.dataset:
                    config.dataset = args.dataset
            else:
                config = _run_config(args)
            config.validate()
            config.check_storage()  # a bad artifact_root fails before anything is prepared
            dataset = prepare_run_dataset(config)  # bad input fails before TFX is imported
            config.check_task(dataset.name, dataset.spec.task)
            from pipeline.run import NotPushedError, run  # noqa: PLC0415

            try:
                summary = run(config, dataset=dataset)
            except NotPushedError as e:
                print(f"autorecsys: not pushed: {e}", file=sys.stderr)
                return 3
            print(json.dumps({k: summary[k] for k in ("dataset", "pushed_model_dir",
                                                      "raw_test_file", "metrics")}, indent=2))
            print(f"summary: {os.path.join(config.output_dir, 'summary.json')}")
        elif args.command == "predict":
            from pipeline.predict import (  # noqa: PLC0415
                is_topk_model,
                load_raw_spec,
                recommend_csv,
                score_csv,
            )

            if is_topk_model(args.model_dir):
                users, items = recommend_csv(args.model_dir, args.input)
                writer = csv.writer(sys.stdout, lineterminator="\n")
                # the model's user column ("user" for the bundled data; a log's own name)
                writer.writerow([load_raw_spec(args.model_dir).user, "items"])
                writer.writerows([u, " ".join(i)] for u, i in zip(users, items, strict=True))
            else:
                scores, _ = score_csv(args.model_dir, args.input)
                sys.stdout.write("probability\n")
                sys.stdout.writelines(f"{p:.6f}\n" for p in scores)
        elif args.command == "data":
            from pipeline.datasets import prepare_dataset  # noqa: PLC0415

            dataset = prepare_dataset(args.dataset, args.output_dir, data_dir=args.data_dir,
                                      seed=args.seed)
            print(json.dumps({"dataset": dataset.name, "directory": dataset.directory,
                              "spec": dataset.spec.to_dict()}, indent=2))
        elif args.command == "bench":
            from benchmarks.bench import run_bench  # noqa: PLC0415

            run_bench(args)
    except (DatasetError, ConfigError, FileNotFoundError) as e:
        print(f"autorecsys: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `autorecsys predict ... | head`: the reader has gone
        # Python flushes stdout again at exit; pointing it at devnull keeps that quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
