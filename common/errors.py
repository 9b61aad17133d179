"""The one exception type for problems the user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input, bad flags, or an environment problem (disk full, missing file): reported without a traceback."""


class DamagedModel(UserError):
    """The model computed numbers nothing can be sampled from (NaN or infinite logits): its file is damaged (or its
    weights overflow), whatever was asked. One line on the command line like any UserError; on the server a fault of
    the server's own (500, code model_damaged), not of the request, and the server stays up."""
