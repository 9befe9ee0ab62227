"""``mnist-challenge export-notebook RUN_DIR``: a self-contained submission notebook for a run's spec and
recipe, optionally executed here with its logs."""

from __future__ import annotations

import argparse
import os

from mnist_challenge.cli.flags import add_data_flags, add_limit_flags, limits_from_args
from mnist_challenge.common.validate import int_flag


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-notebook",
        help="a self-contained submission notebook (plain PyTorch, no kit import) for a run's spec and recipe",
    )
    p.add_argument("run_dir", help="a run directory (spec.json and config.json)")
    p.add_argument("-o", "--out", default=None, help="notebook file (default submission_<spec name>.ipynb)")
    p.add_argument(
        "--execute", action="store_true", help="also run it here (nbclient) and save it with its outputs and logs"
    )
    p.add_argument(
        "--threads", type=int_flag(1, 1024), default=None, help="with --execute: torch threads in the kernel"
    )
    add_limit_flags(p)
    add_data_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.engine.data import load_raw, resolve_data_dir
    from mnist_challenge.export.notebook import (
        SMOKE_ENV,
        execute_notebook,
        export_notebook,
        notebook_path,
        outputs_text,
        read_run,
    )

    spec, _ = read_run(args.run_dir)
    out = notebook_path(args.out, spec.name)
    _, limits = limits_from_args(args)
    if args.execute:
        load_raw(args.data_dir, allow_download=args.download)  # fail on missing data before writing anything
    nb = export_notebook(args.run_dir, out, limits)
    print(f"wrote {out}")
    if args.execute:
        smoke = os.environ.get(SMOKE_ENV) == "1"
        what = f"{SMOKE_ENV}=1: one epoch on 2,000 images" if smoke else "every epoch on all 60,000 training images"
        print(f"executing it ({what}) ...", flush=True)
        execute_notebook(nb, out, resolve_data_dir(args.data_dir), args.threads)
        verdict = [line for line in outputs_text(nb).splitlines() if line.startswith("VERDICT:")]
        print(f"executed {out}: {verdict[-1] if verdict else 'no verdict printed'}")
    return 0
