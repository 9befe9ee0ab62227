"""One exception type for everything a user can get wrong.

The CLI turns a ``UserError`` into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input: a malformed spec, an impossible architecture, missing data, a bad flag."""
