"""The benchmark suite (``python -m mnist_challenge.bench --suite``): every net the kit trains, three ways, one run.

For each spec (the ``classic`` and ``compact`` presets, the committed tiny and micro search winners, and any
``--spec`` given) and each thread count (1 and 2), in one process, alternating and reporting medians:

* the kit's engine: ``train_model`` with its defaults (the layout ``auto`` picks), and once more with the other
  layout forced, so the table shows what the choice buys;
* the course pipeline (``reference.time_reference_steps``): PIL transforms, a two-worker DataLoader;
* an expert's plain in-memory loop (``reference.time_expert_steps``), NCHW and channels-last, the faster counted;
* evaluation of the 10k test images as the engine evaluates (BN folded, its layout, its batch size);
* the share of the compute limit: training images/s against peak fp32 FLOP/s, measured here as the best of a
  few 1024x1024 matrix products at that thread count, over 6 FLOPs per forward MAC (the inspector's MACs; a
  training step is one forward and a backward of twice its work).

The last lines, one per spec, are the headline: engine / course and engine / expert at 1 and 2 threads.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mnist_challenge.architecture.inspector import inspect_module
from mnist_challenge.architecture.model import build_model
from mnist_challenge.architecture.spec import ArchSpec, load_spec
from mnist_challenge.bench.reference import time_expert_steps, time_reference_steps
from mnist_challenge.engine.data import MnistData, Split
from mnist_challenge.engine.train import TrainConfig, evaluate, fit, prepare_model, resolve_device

ROOT = Path(__file__).resolve().parents[2]
# The suite's fixed specs: the presets, and the winners the search committed (read from the repository's logs).
SUITE_SPECS = {
    "classic": "classic",
    "compact": "compact",
    "tiny-winner": str(ROOT / "logs" / "search" / "budget-tiny" / "best_spec.json"),
    "micro-winner": str(ROOT / "logs" / "search" / "budget-micro-v3" / "best_spec.json"),
    "nano-winner": str(ROOT / "logs" / "search" / "budget-nano-v5" / "best_spec.json"),
}
THREADS = (1, 2)


def engine_seconds(spec: ArchSpec, data: MnistData, cfg: TrainConfig, steps: int, warmup: int) -> tuple[float, dict]:
    """Seconds of ``steps`` training steps through ``fit`` (evaluation excluded), after warm-up."""

    def subset(n_steps: int) -> MnistData:
        n = n_steps * cfg.batch_size
        return MnistData(
            Split(data.train.images[:n], data.train.labels[:n]),
            None,
            Split(data.test.images[:256], data.test.labels[:256]),
        )

    fit(build_model(spec), subset(warmup), dataclasses.replace(cfg, epochs=1), progress=False)
    result = fit(build_model(spec), subset(steps), dataclasses.replace(cfg, epochs=1), progress=False)
    return result.epochs[0]["seconds"], result.settings


def peak_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 rate at ``threads`` threads: the best of ``repeats`` timed ``size``-square products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def suite_specs(extra: list[str]) -> dict[str, ArchSpec]:
    """The suite's specs by label; a winner whose file is not in this checkout is left out with a note."""
    specs = {}
    for label, where in SUITE_SPECS.items():
        if Path(where).suffix == ".json" and not Path(where).is_file():
            print(f"note: {label} left out: {where} is not in this checkout")
            continue
        specs[label] = load_spec(where)
    for where in extra:
        spec = load_spec(where)
        specs[spec.name] = spec
    return specs


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_spec(
    spec: ArchSpec,
    data: MnistData,
    raw_images: torch.Tensor,
    threads: int,
    steps: int,
    warmup: int,
    repeats: int,
    batch_size: int,
) -> dict[str, Any]:
    """One spec at one thread count: every side's images/s (medians of alternating runs) and evaluation time."""
    torch.set_num_threads(threads)
    device = resolve_device("cpu")
    cfg = TrainConfig(epochs=1, batch_size=batch_size, threads=threads, val_size=0, device="cpu")
    chosen = cfg.resolved(device)
    other = dataclasses.replace(chosen, channels_last=not chosen.channels_last)
    timed = steps * batch_size
    train = data.train
    sides = ("engine", "engine_other_layout", "course", "expert_nchw", "expert_channels_last")
    runs: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        runs["engine"].append(timed / engine_seconds(spec, data, chosen, steps, warmup)[0])
        runs["engine_other_layout"].append(timed / engine_seconds(spec, data, other, steps, warmup)[0])
        runs["course"].append(
            timed / time_reference_steps(build_model(spec), raw_images, train.labels, steps, warmup, batch_size)
        )
        for layout in ("nchw", "channels_last"):
            seconds = time_expert_steps(
                build_model(spec), train.images, train.labels, steps, warmup, batch_size, channels_last=layout != "nchw"
            )
            runs[f"expert_{layout}"].append(timed / seconds)
    medians = {side: _median(values) for side, values in runs.items()}
    expert_layout = max(("nchw", "channels_last"), key=lambda layout: medians[f"expert_{layout}"])
    model = build_model(spec)
    prepare_model(model, chosen, device)
    evaluate(model, data.test, chosen.eval_batch_size, False, chosen.channels_last)  # warm-up
    start = time.perf_counter()
    evaluate(model, data.test, chosen.eval_batch_size, False, chosen.channels_last)
    eval_seconds = time.perf_counter() - start
    return {
        "threads": threads,
        "layout": "channels_last" if chosen.channels_last else "nchw",
        "runs": runs,
        "medians": medians,
        "expert_layout": expert_layout,
        "expert": medians[f"expert_{expert_layout}"],
        "vs_course": medians["engine"] / medians["course"],
        "vs_expert": medians["engine"] / medians[f"expert_{expert_layout}"],
        "layout_gain": medians["engine"] / medians["engine_other_layout"],
        "eval_seconds": eval_seconds,
        "eval_images_per_s": len(data.test) / eval_seconds,
    }


def run_suite(
    data: MnistData, extra_specs: list[str], steps: int, warmup: int, repeats: int, batch_size: int
) -> dict[str, Any]:
    """Measure every suite spec at 1 and 2 threads; prints a table as it goes and the headline lines last."""
    raw = ((data.train.images[:, 0] * 0.3081 + 0.1307) * 255).round().clamp(0, 255).to(torch.uint8)
    peaks = {threads: peak_gflops(threads) for threads in THREADS}
    rates = ", ".join(f"{t} thread(s) {g:.0f} GFLOP/s" for t, g in peaks.items())
    print(f"peak fp32 rate (best 1024^3 matrix product): {rates}")
    results: dict[str, Any] = {"peak_gflops": peaks, "specs": {}}
    header = (
        f"{'spec':<14} {'params':>6} {'MACs':>9} {'thr':>3} {'layout':>7} {'engine':>7} {'other':>7} {'course':>7} "
        f"{'expert':>7} {'x course':>8} {'x expert':>8} {'eval 10k':>8} {'limit':>7} {'share':>6}"
    )
    print(header)
    for label, spec in suite_specs(extra_specs).items():
        report = inspect_module(build_model(spec), (spec.in_channels, spec.input_size, spec.input_size))
        rows = []
        for threads in THREADS:
            row = measure_spec(spec, data, raw, threads, steps, warmup, repeats, batch_size)
            row["compute_limit_images_per_s"] = peaks[threads] * 1e9 / (6 * report.macs)
            row["share_of_limit"] = row["medians"]["engine"] / row["compute_limit_images_per_s"]
            rows.append(row)
            m = row["medians"]
            print(
                f"{label:<14} {report.params:>6,} {report.macs:>9,} {threads:>3} {row['layout'][:7]:>7} "
                f"{m['engine']:>7.0f} {m['engine_other_layout']:>7.0f} {m['course']:>7.0f} {row['expert']:>7.0f} "
                f"{row['vs_course']:>7.2f}x {row['vs_expert']:>7.2f}x {row['eval_seconds']:>7.2f}s "
                f"{row['compute_limit_images_per_s']:>7.0f} {100 * row['share_of_limit']:>5.1f}%",
                flush=True,
            )
        results["specs"][label] = {"spec": spec.name, "params": report.params, "macs": report.macs, "threads": rows}
    print(
        "columns: images/s of training (engine: the kit's train_model, layout auto; other: the other layout forced; "
        "course: PIL + DataLoader; expert: plain in-memory loop, the faster layout); eval 10k: the engine's "
        "evaluation of the test set; limit: peak rate / (6 x MACs); share: engine / limit"
    )
    for label, entry in results["specs"].items():
        parts = [
            f"{r['threads']} thr {r['medians']['engine']:.0f} img/s = {r['vs_course']:.2f}x course, "
            f"{r['vs_expert']:.2f}x expert"
            for r in entry["threads"]
        ]
        one = entry["threads"][0]
        print(f"SUITE {label}: {'; '.join(parts)}; eval 10k {one['eval_seconds']:.2f} s (1 thr)")
    return results
