import sys

from .errors import EXIT_INTERRUPTED, exit_with, install_stop_handlers

install_stop_handlers()  # before the imports below (torch takes seconds): a signal during them is exit 130 too
try:
    from .cli import main
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    exit_with(EXIT_INTERRUPTED)

exit_with(main())
