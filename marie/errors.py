"""The one exception type the CLI turns into a clear one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or an impossible request: the message says what is wrong and what to do."""
