"""``python -m search``: the search's command (``search.commands.main``), the same as ``mnist-search``."""

from mnist_challenge.common.contract import run_main

run_main(f"{__package__}.commands.main")  # search.commands.main, or mnist_search.commands.main installed
