"""The one exception type for user mistakes: its message is shown as a single line, no traceback."""


class UserError(Exception):
    """Bad input (config value, path, data or checkpoint) that the user can fix.

    The message names the key, path or value and says how to fix it; the CLI prints it as one
    line and exits with status 2.
    """


def first_line(error: Exception) -> str:
    """The start of an exception's message, to quote in a one-line UserError."""
    return (str(error).splitlines() or [type(error).__name__])[0][:160]
