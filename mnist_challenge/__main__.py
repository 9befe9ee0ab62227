"""``python -m mnist_challenge``: the kit's command (``mnist_challenge.cli.main``), the same as ``mnist-challenge``."""

from mnist_challenge.common.contract import run_main

run_main("mnist_challenge.cli.main")
