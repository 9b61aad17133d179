"""The one exception type for problems the user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input, bad flags, or an environment problem (disk full, missing file): reported without a traceback."""
