"""``mnist-search [COMMAND] ...``: the search (no command), or one of its commands.

mnist-search [--budget {assignment,compact,tiny,micro,nano,pico,demo}]  # staged: screen, promote, confirm
mnist-search --single-stage [--study NAME] [--n-trials N] [--epochs 15] ...   # a plain single-stage search
mnist-search reproduce [--study NAME] [--seed S]        # retrain a study's best on all 60k images
mnist-search fidelity --budget tiny [--designs 20]      # how well short schedules rank designs
mnist-search digest [--study NAME]                      # what a staged search learned
mnist-search ablate --study NAME --change KEY=VALUE      # does a recipe change help the study's design?
mnist-search winner-rules                               # which winner rule picks designs that pass on every seed
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mnist_challenge.common.contract import run_cli

from . import ablate, digest, fidelity, reproduce, winner_rules
from . import run as search

# The search itself takes no command word (``mnist-search --budget tiny``), so the first argument names a
# command only when it is one of these.
COMMANDS = {
    "reproduce": reproduce,
    "fidelity": fidelity,
    "digest": digest,
    "ablate": ablate,
    "winner-rules": winner_rules,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    if command is not None:
        return run_cli(command.build_parser, argv[1:])
    return run_cli(search.build_parser, argv)
