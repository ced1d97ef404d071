"""The one exception type that reaches the user as a message instead of a traceback."""


class TokprobError(Exception):
    """A problem with the user's input or environment.

    The message is a complete paragraph: what was wrong, what was expected, and what to
    do about it. The command line prints it and exits with status 2.
    """
