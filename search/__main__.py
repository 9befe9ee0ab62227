import sys

from mnist_challenge.errors import EXIT_INTERRUPTED, exit_with, install_stop_handlers

install_stop_handlers()  # before the imports below (torch, optuna): a signal during them is exit 130 too
try:
    from .cli import main
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    exit_with(EXIT_INTERRUPTED)

exit_with(main())
