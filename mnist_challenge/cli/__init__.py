"""The kit's command-line layer: one module per command (``inspect``, ``train``, ``check``, ``report``,
``export_notebook``, ``bench``), their flags made from the settings dataclasses (``flags``), and the entry
points the console scripts name. Nothing in the library imports this package.
"""

from __future__ import annotations

from typing import NoReturn

from mnist_challenge.common.contract import run_main


def entry() -> NoReturn:
    """The ``mnist-challenge`` console script."""
    run_main("mnist_challenge.cli.main")


def bench_entry() -> NoReturn:
    """The ``mnist-challenge-bench`` console script (also ``python -m mnist_challenge.bench``)."""
    run_main("mnist_challenge.cli.bench")
