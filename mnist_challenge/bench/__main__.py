"""``python -m mnist_challenge.bench``: the benchmark command (``mnist_challenge.cli.bench``)."""

from mnist_challenge.common.contract import run_main

run_main("mnist_challenge.cli.bench")
