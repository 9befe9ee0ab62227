"""The end of the demo budget (``mnist-search --budget demo``): the winner's submission notebook, exported from its
full-fidelity run, executed here, and graded as ``check-notebook`` would grade it — the whole job a user does
after a real search (``search reproduce``, ``export-notebook --execute``, ``check-notebook``), in minutes."""

from __future__ import annotations

from pathlib import Path

from mnist_challenge.common.errors import EXIT_FAIL, EXIT_OK


def winner_notebook(run_dir: str, out: Path, rules: str, data_dir: str | None) -> int:
    """Export, execute and grade the winner's notebook; exit 0 when it passes the budget's rules, 1 when not."""
    from mnist_challenge.engine.data import resolve_data_dir
    from mnist_challenge.export.notebook import execute_notebook, export_notebook
    from mnist_challenge.grading.grade import check_notebook
    from mnist_challenge.runs.budgets import rules_named

    nb = export_notebook(run_dir, out, rules_named(rules).limits)
    print(f"winner's notebook: {out}; executing it (plain PyTorch, all 60,000 training images) ...", flush=True)
    execute_notebook(nb, out, resolve_data_dir(data_dir), threads=None)
    grade = check_notebook(out, rules=rules)
    print(grade.format())
    return EXIT_OK if grade.verdict == "PASS" else EXIT_FAIL
