"""The search's command-line layer (``mnist-search``, ``python -m search``): one module per command, each with
``build_parser()`` and ``run(args)``; ``main`` picks the command. The work is in the ``search`` modules
(``plan``, ``runner``, ``stages``, ``digest``); the exit codes are the kit's contract
(``mnist_challenge.common.contract``).
"""

from __future__ import annotations

from typing import NoReturn

from mnist_challenge.common.contract import run_main


def entry() -> NoReturn:
    """The ``mnist-search`` console script."""
    run_main(f"{__name__}.main")  # mnist_search.commands.main when installed
