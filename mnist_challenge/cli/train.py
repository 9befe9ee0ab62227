"""``mnist-challenge train``: train a spec on MNIST into a full run directory (flags from ``TrainConfig``)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from mnist_challenge.cli.flags import add_train_config_flags, settings_from_args
from mnist_challenge.common.errors import set_crash_log
from mnist_challenge.common.validate import check_name, check_writable_dir, name_flag


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a spec on MNIST and write a full run directory")
    p.add_argument("--spec", required=True, help="spec JSON file, or a preset name (classic, compact, tiny)")
    p.add_argument("--out", default="logs/runs", help="parent directory of the run directory (default logs/runs)")
    p.add_argument("--name", type=name_flag, default=None, help="run directory name (default: <spec name>-<timestamp>)")
    add_train_config_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.architecture.spec import load_spec
    from mnist_challenge.engine.train import TrainConfig, resolve_device
    from mnist_challenge.runs.experiment import load_data, require_mnist_shape, run_experiment
    from mnist_challenge.runs.runlog import check_new_run_dir

    # Everything is checked before the data is loaded or a file is written.
    spec = load_spec(args.spec)
    require_mnist_shape(spec)
    cfg = settings_from_args(TrainConfig, args)
    resolve_device(cfg.device)
    # The default name: the spec, the time and the process, so that commands started in the same second differ.
    stamp = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    name = args.name or check_name(stamp, "the run name (spec name + time + process id)")
    run_dir = check_new_run_dir(Path(check_writable_dir(args.out, "--out")) / name)
    data = load_data(cfg, args.data_dir, allow_download=args.download)
    print(f"run directory: {run_dir}")
    set_crash_log(run_dir / "train.log")
    run_experiment(spec, cfg, run_dir, data=data, data_dir=args.data_dir)
    return 0
