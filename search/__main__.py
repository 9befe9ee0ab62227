"""``python -m search``: the search's command (``search.commands.main``), the same as ``mnist-search``."""

from mnist_challenge.common.contract import run_main

run_main("search.commands.main")
