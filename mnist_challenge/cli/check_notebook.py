"""``mnist-challenge check-notebook FILE.ipynb...``: grade executed notebooks from their own outputs.

Exit 0 when every notebook passes, 1 when one fails or cannot be verified, 2 when a file is not a readable notebook
(the others are still graded, listed as ERROR rows and the table written), 3 when the kit met a bug on one (the
same), 130 when stopped (Ctrl-C, SIGTERM, SIGHUP: the model's sandbox and its temporary files go with it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from mnist_challenge.cli.flags import add_limit_flags, limits_from_args
from mnist_challenge.common.errors import EXIT_INTERNAL, UserError
from mnist_challenge.common.validate import float_flag

SUMMARY_COLUMNS = ("notebook", "verdict", "params", "params_claimed", "has_linear", "log_format", "epochs",
                   "last_acc", "flags")  # fmt: skip


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-notebook",
        help="grade executed .ipynb notebooks against the rules from their own outputs (exit 0 pass, 1 fail or "
        "unverifiable)",
    )
    p.add_argument("notebooks", nargs="+", metavar="FILE.ipynb[:NAME]", help="NAME picks the model (class or variable)")
    add_limit_flags(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per notebook, instead of text")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the summary table as CSV to PATH")
    p.add_argument(
        "--timeout", type=float_flag(1, 3600), default=120.0, help="seconds to build each model (default 120)"
    )
    p.set_defaults(handler=run)


def summary_row(grade) -> dict:
    return {
        "notebook": grade.path,
        "verdict": grade.verdict,
        "params": grade.params,
        "params_claimed": grade.params_claimed,
        "has_linear": grade.has_linear,
        "log_format": grade.log_format,
        "epochs": grade.epochs,
        "last_acc": f"{grade.test_acc[-1]:.2f}" if grade.test_acc else None,
        "flags": len(grade.flags),
    }


def summary_table(rows: list[dict]) -> str:
    cells = [[("" if row[c] is None else str(row[c])) for c in SUMMARY_COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(SUMMARY_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _csv_target(path: str, notebooks: list[str]) -> Path:
    """The ``--csv`` path, refused before any grading when writing it would overwrite an input or another file
    (``--csv a.ipynb b.ipynb`` with the CSV's name forgotten), or when it is a folder."""
    from mnist_challenge.grading.build import split_target

    target = Path(path)
    inputs = {split_target(n)[0].resolve() for n in notebooks}
    if target.is_dir():
        raise UserError(f"--csv {path}: is a folder; name a .csv file to write the table to")
    if target.suffix.lower() == ".ipynb" or target.resolve() in inputs:
        raise UserError(f"--csv {path}: is a notebook (did you forget the CSV's name?); nothing was graded or written")
    if target.exists() and target.suffix.lower() != ".csv":
        raise UserError(f"--csv {path}: exists and is not a .csv file; the grader does not overwrite other files")
    return target


def run(args: argparse.Namespace) -> int:
    from mnist_challenge.common.errors import record_internal_error
    from mnist_challenge.common.files import write_text_atomic
    from mnist_challenge.common.validate import make_dir
    from mnist_challenge.grading.grade import PASS, Grade, grade_notebook

    rules, limits = limits_from_args(args)
    csv_path = _csv_target(args.csv, args.notebooks) if args.csv else None
    if csv_path is not None:
        make_dir(csv_path.resolve().parent, "--csv")
    grades, internal = [], False
    for target in args.notebooks:
        try:
            grade = grade_notebook(target, limits, rules.requires, args.timeout)
        except Exception as exc:  # a bug met on one notebook: it is an ERROR row, the batch goes on
            line = record_internal_error(exc).replace("internal error:", f"internal error grading {target}:", 1)
            grade, internal = Grade(target, error=line), True
        grades.append(grade)
        if not args.json:
            print(grade.format() + "\n", flush=True)
    rows = [summary_row(g) for g in grades]
    if args.json:
        print(json.dumps([g.as_dict() for g in grades], indent=2))
    elif len(grades) > 1:
        print(summary_table(rows))
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(csv_path, buffer.getvalue())
    for grade in grades:
        if grade.error:
            print(
                f"error: {grade.error}" if not grade.error.startswith("internal error") else grade.error,
                file=sys.stderr,
            )
    if internal:
        return EXIT_INTERNAL
    if any(g.error for g in grades):
        return 2
    return 0 if all(g.verdict == PASS for g in grades) else 1
