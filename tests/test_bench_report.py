"""Smoke tests: the benchmark runs end to end on a tiny step count; the report builds its table."""

import json

from mnist_challenge import build_model, load_spec
from mnist_challenge.architecture.model import count_params
from mnist_challenge.cli.main import main as kit

from .conftest import ROOT, assert_one_error_line, call, run_cli
from .test_checker import GOOD, make_run


def test_benchmark_smoke(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        "mnist_challenge.bench",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--ablate",
        "--data-dir",
        str(mnist_dir),
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("RATIO engine / course pipeline:")
    figures = json.loads(out.read_text())
    assert (
        figures["engine_images_per_s"] > 0
        and figures["reference_images_per_s"] > 0
        and figures["eval_test_10k_seconds"] > 0
    )
    assert len(figures["engine_runs"]) == 2 and len(figures["reference_runs"]) == 2
    assert figures["engine_settings"]["swapped_layers"]["fused_tail"] == 8  # the C kernel was built and used
    assert set(figures["ablation_images_per_s"]) == {
        "fused_tail",
        "cl_weight_grad",
        "pooled_dropout",
        "fast_maxpool",
    }
    assert "--no-fused-tail" in result.stdout


def test_suite_measures_every_side_and_ends_with_one_line_per_spec(mnist_dir, monkeypatch, capsys):
    from mnist_challenge.bench import suite
    from mnist_challenge.engine.data import MnistData, Split, load_mnist

    monkeypatch.setattr(suite, "SUITE_SPECS", {"tiny-preset": "tiny", "missing": "/nonexistent/best_spec.json"})
    monkeypatch.setattr(suite, "THREADS", (1,))
    full = load_mnist(mnist_dir, val_size=0, train_subset=3 * 128)
    data = MnistData(full.train, None, Split(full.test.images[:500], full.test.labels[:500]))
    figures = suite.run_suite(data, ["classic"], steps=2, warmup=1, repeats=1, batch_size=128)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("SUITE tiny-preset: 1 thr") and lines[-1].startswith("SUITE classic: 1 thr")
    assert "note: missing left out" in "\n".join(lines)
    row = figures["specs"]["tiny-preset"]["threads"][0]
    assert row["layout"] == "channels_last"  # auto on a CPU
    for side in ("engine", "engine_other_layout", "course", "expert_nchw", "expert_channels_last"):
        assert row["medians"][side] > 0
    assert row["vs_course"] > 0 and row["vs_expert"] > 0 and 0 < row["share_of_limit"] < 1
    assert figures["peak_gflops"][1] > 0


def test_report_judges_each_budget_with_its_own_limits(tmp_path):
    classic, compact = load_spec("classic"), load_spec("compact")
    make_run(tmp_path / "assignment" / "seed1", build_model(classic), classic, GOOD)
    make_run(tmp_path / "compact" / "seed1", build_model(classic), classic, GOOD)  # 12.7k params: over the 8k budget
    make_run(tmp_path / "compact" / "seed2", build_model(compact), compact, GOOD)
    result = run_cli("mnist_challenge", "report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"| assignment | `{tmp_path / 'assignment' / 'seed1'}` | 12,738 |" in lines[2] and lines[2].endswith(
        "| PASS |"
    )
    assert "FAIL: parameters < 8,000" in lines[3]
    assert lines[4].endswith("| PASS |") and "99.41, 99.45, 99.43" in lines[4]


def test_report_summarises_each_seeded_design_with_its_misses_counted(tmp_path):
    spec = load_spec("tiny")
    missed = [98.0] * 12 + [99.30, 99.35, 99.40]
    for seed, accs in ((1, GOOD), (2, missed), (3, GOOD)):
        make_run(tmp_path / "tiny" / f"seed{seed}", build_model(spec), spec, accs)
    make_run(tmp_path / "single", build_model(spec), spec, GOOD)  # not a seed folder: no summary row
    result = run_cli("mnist_challenge", "report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = result.stdout.split("\n\n")[1].splitlines()
    assert len(summary) == 3  # header, rule, one design
    seed_means = [sum(GOOD[-3:]) / 3, sum(missed[-3:]) / 3, sum(GOOD[-3:]) / 3]
    mean = sum(seed_means) / 3
    std = (sum((m - mean) ** 2 for m in seed_means) / 2) ** 0.5  # sample std over the seeds
    assert summary[2] == (
        f"| tiny | `{tmp_path / 'tiny'}` | {count_params(build_model(spec)):,} | 3 | {mean:.2f} ± {std:.2f} | "
        "99.30 | 2 of 3 |"
    )


def test_report_updates_only_the_readme_block(tmp_path):
    spec = load_spec("compact")
    make_run(tmp_path / "runs" / "compact" / "seed1", build_model(spec), spec, GOOD)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\noutro\n")
    result = run_cli("mnist_challenge", "report", str(tmp_path / "runs"), "--update-readme", str(readme))
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "| compact |" in text
    assert run_cli("mnist_challenge", "report", str(tmp_path / "nothing")).returncode == 2


def test_report_writes_each_files_tables_and_nothing_when_one_file_cannot_take_them(tmp_path, monkeypatch):
    spec = load_spec("compact")
    for seed in (1, 2):
        make_run(tmp_path / "runs" / "compact" / f"seed{seed}", build_model(spec), spec, GOOD)
    monkeypatch.chdir(tmp_path)  # no notebooks/ here: the headline says so instead of linking one
    both = tmp_path / "both.md"
    both.write_text(
        "<!-- headline:start -->\n<!-- headline:end -->\nmid\n<!-- results:start -->\n<!-- results:end -->\n"
    )
    unmarked = tmp_path / "plain.md"
    unmarked.write_text("nothing to fill\n")
    before = both.read_text()
    code, _, err = call(kit, "report", "runs", "--update", str(both), "--update", str(unmarked))
    assert code == 2 and "none of the markers" in err and both.read_text() == before  # checked before any write
    code, out, err = call(kit, "report", "runs", "--update", str(both))
    assert code == 0, err
    text = both.read_text()
    headline = text.split("<!-- headline:start -->", 1)[1].split("<!-- headline:end -->", 1)[0]
    assert f"| compact: < 8,000 params, ≤ 15 epochs | {count_params(build_model(spec)):,} | 2 of 2 |" in headline
    assert "| none yet |" in headline and "| `runs/compact/seed1` |" in text.split("mid", 1)[1]


def test_search_benchmark_smoke(mnist_dir, tmp_path):
    out = tmp_path / "search_bench.json"
    result = run_cli(
        "search.bench",
        "--draws",
        "3",
        "--train-subset",
        "400",
        "--val-size",
        "200",
        "--data-dir",
        str(mnist_dir),
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("RATIO full-fidelity-equivalent trials/h")
    figures = json.loads(out.read_text())
    staged = figures["after (--budget, fitted space)"]
    assert staged["draws"] == 3 and staged["rejected"] == 0 and staged["epochs_trained"] > 0
    assert staged["full_fidelity_equivalent_trials_per_hour"] > 0


def test_library_never_imports_the_search_driver():
    import ast

    offenders = []
    for path in sorted((ROOT / "mnist_challenge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n == "search" or n.startswith("search.")]
    assert offenders == []


def test_the_results_tables_are_the_committed_runs_report(monkeypatch):
    """The journal's table and the README's are generated; regenerate them when runs change (`report logs/runs
    logs/submission --update README.md --update docs/results.md`)."""
    from mnist_challenge.runs import report as tables

    monkeypatch.chdir(ROOT)  # runs are named by their paths in the repository, as the command does
    fresh = tables.report(["logs/runs", "logs/submission"])
    for page, start, end, table in [
        ("docs/results.md", tables.START, tables.END, fresh.table),
        ("README.md", tables.HEADLINE_START, tables.HEADLINE_END, tables.headline_table(fresh.seeded)),
    ]:
        block = (ROOT / page).read_text(encoding="utf-8").split(start, 1)[1].split(end, 1)[0].strip().splitlines()
        assert "\n".join(block[1:]) == table, page  # block[0] is the generated-by marker


def test_profile_prints_each_kind_of_op_as_a_share(mnist_dir):
    from mnist_challenge.cli.bench import main

    from .conftest import call

    code, out, err = call(
        main, "--spec", "tiny", "--profile", "--steps", "2", "--warmup", "1", "--data-dir", str(mnist_dir)
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("spec tiny") and any(line.startswith("conv backward") for line in lines[1:])
    assert abs(sum(float(line.split("%")[0].split()[-1]) for line in lines[1:]) - 100) < 1


def test_frontier_draws_every_confirmed_and_retrained_design(tmp_path, monkeypatch):
    import statistics

    from mnist_challenge.runs.runlog import read_epochs

    monkeypatch.chdir(ROOT)  # the committed runs, named by their paths in the repository
    out = tmp_path / "plots" / "frontier.png"  # a folder that is not there yet is created, as for every output
    code, stdout, err = call(kit, "report", "logs/search", "logs/submission", "--frontier", str(out))
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = stdout.splitlines()
    tiny = [line for line in lines if "retrained: logs/submission/tiny" in line]
    runs = sorted((ROOT / "logs" / "submission" / "tiny").glob("seed*"))
    seeds = [statistics.fmean(r["test_acc"] for r in read_epochs(run)[-3:]) for run in runs]
    assert tiny and f"{statistics.fmean(seeds):.2f} ± {statistics.stdev(seeds):.2f} % over 3 seed(s)" in tiny[0]
    assert any("search winner: budget-tiny trial 52" in line for line in lines)  # from the study's summary.json
    # Superseded results are kept and drawn as history: a v<N> submission folder, a study with a later -v<N> beside it.
    assert any("retrained (history): logs/submission/micro/v1" in line for line in lines)
    assert any("search winner (history): budget-micro trial 46" in line for line in lines)
    assert not any("(history)" in line for line in lines if "budget-micro-v3" in line or "budget-tiny" in line)
    assert_one_error_line(call(kit, "report", "logs/submission", "--frontier", str(tmp_path / "f.txt")), ".png")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert_one_error_line(call(kit, "report", "logs/submission", "--frontier", str(blocked / "f.png")), "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(call(kit, "report", str(empty), "--frontier", str(out)), "no confirmed search designs")
