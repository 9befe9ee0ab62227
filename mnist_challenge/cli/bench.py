"""Benchmark: the kit's engine against the course pipeline, same spec, same batch size, one process.

    python -m mnist_challenge.bench [--spec classic] [--steps 150] [--warmup 20] [--data-dir D] [--layouts]

Both sides run the same number of optimizer steps after the same warm-up on real MNIST images; the
kit's side is the real ``train_model`` loop (one epoch over exactly that many batches), so what is
timed is what a run or a search trial runs. The last line is the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mnist_challenge.architecture.model import build_model
from mnist_challenge.architecture.spec import load_spec
from mnist_challenge.bench.grouped import time_grouped
from mnist_challenge.bench.measure import TRICKS, ablate, compare_layouts, peak_rss_mib, profile_step
from mnist_challenge.bench.reference import time_reference_steps
from mnist_challenge.bench.suite import engine_seconds, run_suite
from mnist_challenge.cli.flags import add_data_flags
from mnist_challenge.common.contract import Parser, run_cli
from mnist_challenge.common.errors import UserError
from mnist_challenge.common.validate import int_flag, make_dir
from mnist_challenge.engine.data import load_mnist
from mnist_challenge.engine.train import TrainConfig, evaluate, prepare_model, resolve_device, use_bf16


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, argv)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m mnist_challenge.bench", description="kit engine vs the course pipeline: images/s and ratio"
    )
    p.add_argument(
        "--spec", default=None, help="spec file or preset (default classic; with --suite: one more spec to time)"
    )
    p.add_argument(
        "--steps", type=int_flag(1, 100_000), default=150, help="timed optimizer steps per side (default 150)"
    )
    p.add_argument("--warmup", type=int_flag(1, 100_000), default=20, help="untimed steps first (default 20)")
    p.add_argument(
        "--repeats",
        type=int_flag(1, 100),
        default=3,
        help="alternating engine/reference measurements; medians reported (default 3)",
    )
    p.add_argument("--batch-size", type=int_flag(2, 4096), default=128)
    p.add_argument(
        "--threads", type=int_flag(1, 1024), default=None, help="torch threads for both sides (default: torch's)"
    )
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    p.add_argument(
        "--channels-last", choices=("auto", "on", "off"), default="auto", help="engine layout (default auto)"
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="time classic, compact, the tiny and micro winners and any --spec against the course pipeline and "
        "an expert's plain loop, at 1 and 2 threads (ignores --threads and the trick flags)",
    )
    for trick, flag in TRICKS.items():
        p.add_argument(flag, dest=trick, action="store_false")
    p.add_argument("--skip-reference", action="store_true", help="time only the kit's engine (no ratio)")
    p.add_argument(
        "--ablate", action="store_true", help="also time the engine with each speed trick turned off in turn"
    )
    p.add_argument(
        "--layouts", action="store_true", help="also compare one 2-thread process with two 1-thread processes"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="only print where a training step of the engine spends its time (torch.profiler, shares by kind of op)",
    )
    p.add_argument(
        "--grouped",
        type=int_flag(2, 16),
        default=None,
        metavar="K",
        help="only time K seeds of --spec trained as one grouped network against K separate nets and the engine, "
        "at 1 and 2 threads (a measurement: the engine trains one seed per run)",
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    add_data_flags(p)
    p.set_defaults(handler=run_bench)
    return p


def write_json(path: Path, figures: dict) -> None:
    """The figures as JSON; a path that cannot be written is the user's ``--json`` error."""
    make_dir(path.resolve().parent, "--json")
    try:
        path.write_text(json.dumps(figures, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"--json {path}: cannot write it ({exc.strerror or exc})") from None


def run_bench(args: argparse.Namespace) -> int:
    if args.json:  # checked now, not after minutes of timing
        write_json(Path(args.json), {})
    if args.suite:
        return run_bench_suite(args)
    if args.profile:
        return run_profile(args)
    if args.grouped:
        return run_grouped(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec or "classic")
    needed = (args.steps + args.warmup) * args.batch_size
    cfg = TrainConfig(
        epochs=1,
        batch_size=args.batch_size,
        bf16=args.bf16,
        channels_last={"auto": "auto", "on": True, "off": False}[args.channels_last],
        threads=args.threads,
        **{trick: getattr(args, trick) for trick in TRICKS},
        val_size=0,
        device="cpu",
    )
    data = load_mnist(args.data_dir, val_size=0, train_subset=needed, allow_download=args.download)
    threads = torch.get_num_threads()
    print(
        f"spec {spec.name} | batch {args.batch_size} | {args.steps} timed steps after {args.warmup} warm-up | "
        f"torch {torch.__version__}, {threads} threads"
    )
    figures: dict = {
        "spec": spec.name,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": threads,
        "torch": torch.__version__,
    }

    timed_images = args.steps * args.batch_size
    if not args.skip_reference:
        raw = torch.randperm(len(data.train))  # any order: the loader shuffles anyway
        images = ((data.train.images[raw, 0] * 0.3081 + 0.1307) * 255).round().clamp(0, 255).to(torch.uint8)
    engine_runs, reference_runs = [], []
    # Engine and reference alternate, so a slow spell of a shared machine hits both; medians are reported.
    for _ in range(args.repeats):
        seconds, settings = engine_seconds(spec, data, cfg, args.steps, args.warmup)
        engine_runs.append(timed_images / seconds)
        if not args.skip_reference:
            ref_seconds = time_reference_steps(
                build_model(spec), images, data.train.labels[raw], args.steps, args.warmup, args.batch_size
            )
            reference_runs.append(timed_images / ref_seconds)
    engine_ips = statistics.median(engine_runs)
    figures.update(engine_images_per_s=engine_ips, engine_runs=engine_runs, engine_settings=settings)
    print(
        f"kit engine        : {engine_ips:8.0f} img/s  (median of {_runs(engine_runs)}; "
        f"bf16={settings['bf16_autocast']}, swapped {settings['swapped_layers']}, "
        f"channels_last={settings['channels_last']})"
    )

    model, device = build_model(spec), resolve_device("cpu")
    cfg = cfg.resolved(device)
    prepare_model(model, cfg, device)  # evaluated as the engine evaluates: its layers, its batch size
    autocast = use_bf16(cfg, device)
    evaluate(model, data.test, cfg.eval_batch_size, autocast, cfg.channels_last)  # warm-up
    start = time.perf_counter()
    evaluate(model, data.test, cfg.eval_batch_size, autocast, cfg.channels_last)
    eval_s = time.perf_counter() - start
    figures["eval_test_10k_seconds"] = eval_s
    print(
        f"evaluate 10k test : {eval_s:8.2f} s  "
        f"(the engine's layers, batches of {cfg.eval_batch_size}, after one untimed pass)"
    )
    figures["peak_rss_mib_engine"] = peak_rss_mib()

    if reference_runs:
        ref_ips = statistics.median(reference_runs)
        figures.update(reference_images_per_s=ref_ips, reference_runs=reference_runs, ratio=engine_ips / ref_ips)
        print(
            f"course pipeline   : {ref_ips:8.0f} img/s  (median of {_runs(reference_runs)}; "
            "PIL RandomRotation + DataLoader(num_workers=2), fp32, nn.Dropout)"
        )
    figures["peak_rss_mib"] = peak_rss_mib()
    figures["peak_rss_mib_workers"] = peak_rss_mib(resource.RUSAGE_CHILDREN)
    print(
        f"peak RSS          : {figures['peak_rss_mib_engine']:.0f} MiB after the engine, "
        f"{figures['peak_rss_mib']:.0f} MiB overall (+ {figures['peak_rss_mib_workers']:.0f} MiB largest loader worker)"
    )
    if args.ablate:
        runs = ablate(spec, data, cfg, args.steps, args.warmup, args.repeats)
        figures["ablation_images_per_s"] = {trick: statistics.median(r) for trick, r in runs.items()}
        for trick, flag in TRICKS.items():
            ips = figures["ablation_images_per_s"][trick]
            print(
                f"engine {flag:<20}: {ips:8.0f} img/s  (median of {_runs(runs[trick])}; "
                f"the default engine is {engine_ips / ips:.2f}x this)"
            )
    if args.layouts:
        layouts = compare_layouts(args.spec or "classic", args.data_dir, args.steps, args.warmup)
        figures["layouts_images_per_s"] = layouts
        for label, ips in layouts.items():
            print(f"{label:<26}: {ips:8.0f} img/s in total")
    if args.json:
        write_json(Path(args.json), figures)
    if "ratio" in figures:
        print(f"RATIO engine / course pipeline: {figures['ratio']:.2f}x")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Self time of ``--steps`` engine steps (after ``--warmup``) by kind of op, as shares of the step."""
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec or "classic")
    data = load_mnist(args.data_dir, val_size=0, train_subset=args.batch_size, allow_download=args.download)
    kinds = profile_step(spec, data, args.batch_size, args.steps, args.warmup)
    total = sum(kinds.values()) or 1.0
    print(
        f"spec {spec.name} | batch {args.batch_size} | {args.steps} profiled steps | {torch.get_num_threads()} threads"
    )
    for kind, micros in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<16} {100 * micros / total:5.1f} %  ({micros / args.steps / 1000:.1f} ms per step)")
    return 0


def run_grouped(args: argparse.Namespace) -> int:
    """K seeds as one grouped network vs K separate ones vs the engine, at 1 and 2 threads (seed-images/s)."""
    spec = load_spec(args.spec or "classic")
    k = args.grouped
    needed = (args.steps + args.warmup) * args.batch_size
    data = load_mnist(args.data_dir, val_size=0, train_subset=needed, allow_download=args.download)
    print(
        f"grouped | spec {spec.name} | {k} seeds | batch {args.batch_size} per seed | {args.steps} timed steps after "
        f"{args.warmup} warm-up, {args.repeats} alternating repeats (medians) | torch {torch.__version__}"
    )
    print("seed-images/s: images trained per second summed over the seeds; stock = build_model's nn layers")
    rows = []
    for threads in (1, 2):
        row = time_grouped(spec, data, k, threads, args.steps, args.warmup, args.repeats, args.batch_size)
        rows.append(row)
        m = row["medians"]
        print(
            f"{threads} thread(s): stock separate {row['separate']:.0f} (nchw {m['separate_nchw']:.0f}, cl "
            f"{m['separate_channels_last']:.0f}), stock grouped {row['grouped']:.0f} (nchw {m['grouped_nchw']:.0f}, "
            f"cl {m['grouped_channels_last']:.0f}), engine {row['engine']:.0f}",
            flush=True,
        )
    for row in rows:
        print(
            f"GROUPED {spec.name} k={k} {row['threads']} thr: grouped = {row['grouped_vs_separate']:.2f}x stock "
            f"separate, {row['grouped_vs_engine']:.2f}x the engine"
        )
    if args.json:
        write_json(Path(args.json), {"spec": spec.name, "k": k, "batch_size": args.batch_size, "rows": rows})
    return 0


def run_bench_suite(args: argparse.Namespace) -> int:
    needed = (args.steps + args.warmup) * args.batch_size
    data = load_mnist(args.data_dir, val_size=0, train_subset=needed, allow_download=args.download)
    print(
        f"suite | batch {args.batch_size} | {args.steps} timed steps after {args.warmup} warm-up, "
        f"{args.repeats} alternating repeats (medians) | torch {torch.__version__}"
    )
    figures = run_suite(data, [args.spec] if args.spec else [], args.steps, args.warmup, args.repeats, args.batch_size)
    if args.json:
        write_json(Path(args.json), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
