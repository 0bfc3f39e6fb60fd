"""Errors about contracts (schemas, catalog, serde) that a user can act on.

``user_error = True`` tells the CLI to print the message as one line without a
traceback; ``schemas`` imports nothing of ours, so the CLI recognises user
errors by that attribute rather than by a shared base class.
"""


class ContractError(Exception):
    """A schema, catalog or registry problem with a cause the user can fix."""

    user_error = True
    exit_code = 1


class SerializationError(Exception):
    """A record that cannot be encoded or decoded; carries the stage for dead letters."""

    def __init__(self, message: str, stage: str = "deserialize") -> None:
        super().__init__(message)
        self.stage = stage


class RegistryUnavailableError(Exception):
    """The registry did not answer (connection refused, timeout, 5xx): retry later, the record is not poison.

    Only a definite "not found" makes a record undecodable; an outage must
    never send valid records to the dead-letter topic.
    """
