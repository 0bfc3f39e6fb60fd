"""The exception type for failures a user can fix.

The CLI prints any exception whose class has ``user_error = True`` as a single
``error: ...`` line without a traceback (unless ``--debug``); ``schemas`` and
``deploy`` define their own such classes because they import nothing of ours.
"""


class PasserelleError(Exception):
    """A failure with a cause the user can act on; ``exit_code`` is the CLI's exit status."""

    user_error = True

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
