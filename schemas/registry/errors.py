"""Errors of the embedded registry: HTTP errors in Confluent's shape, and start-up failures.

``RegistryError`` carries the Confluent ``error_code`` because clients branch on
it (``SchemaRegistryError.error_code``), not on the message. Start-up failures
are ``ContractError``s so the CLI prints them as one line without a traceback.
"""

from __future__ import annotations

from passerelle.schemas.errors import ContractError


class RegistryError(Exception):
    """A request the registry refuses, answered as ``{"error_code", "message"}``."""

    def __init__(self, http_status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message


class RequestTooLargeError(RegistryError):
    """A body over the limit: answered 413 with ``Connection: close``, since the rest of it is never read."""


class RegistryStartupError(ContractError):
    """The registry cannot start for a reason the user can fix (port, broker, topic)."""


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: object) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryError:
    return RegistryError(404, 40403, detail)


def subject_soft_deleted(subject: str) -> RegistryError:
    return RegistryError(404, 40404, f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently")


def subject_not_soft_deleted(subject: str) -> RegistryError:
    return RegistryError(404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted")


def version_soft_deleted(subject: str, version: int) -> RegistryError:
    return RegistryError(
        404,
        40406,
        f"Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently",
    )


def version_not_soft_deleted(subject: str, version: int) -> RegistryError:
    return RegistryError(
        404, 40407, f"Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )


def subject_config_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")


def incompatible(subject: str, details: list[str]) -> RegistryError:
    return RegistryError(
        409,
        409,
        f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
        f"details: [{'; '.join(details)}]",
    )


def body_not_json(detail: str) -> RegistryError:
    return RegistryError(400, 400, f"Unrecognized request body, not JSON: {detail}")


def body_too_deep() -> RegistryError:
    return RegistryError(400, 400, "Unrecognized request body: JSON nested too deeply")


def body_too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        413, 41301, f"Request body too large: the registry reads at most {limit} bytes ({_size(limit)}) of a request"
    )


def schema_too_large(size: int, limit: int) -> RegistryError:
    return RegistryError(
        413,
        41302,
        f"Schema too large: it takes {size} bytes in its _schemas record (compact JSON, escaped), "
        f"over the maximum of {limit} bytes ({_size(limit)}) one Kafka record of the _schemas topic holds",
    )


def record_too_large(subject: str, size: int, limit: int) -> RegistryError:
    shown = subject if len(subject) <= 60 else subject[:57] + "..."
    return RegistryError(
        413,
        41302,
        f"Schema too large for subject '{shown}': its _schemas record (schema, subject name twice, version, id) "
        f"would take {size} bytes, over the {limit} bytes of one Kafka record; use a shorter subject name",
    )


def _size(limit: int) -> str:
    return f"{limit / 1024 / 1024:g} MiB" if limit >= 1024 * 1024 else f"{limit / 1024:g} KiB"


def invalid_schema(detail: str) -> RegistryError:
    return RegistryError(422, 42201, f"Invalid schema: {detail}")


def invalid_version(version: str) -> RegistryError:
    return RegistryError(
        422,
        42202,
        f"The specified version '{version}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def invalid_compatibility_level(level: object) -> RegistryError:
    return RegistryError(
        422,
        42203,
        f"Invalid compatibility level {level!r}. Valid values are none, backward, forward, full, "
        "backward_transitive, forward_transitive, and full_transitive",
    )


def store_error(detail: str) -> RegistryError:
    return RegistryError(500, 50001, f"Error in the backend data store: {detail}")


def store_timeout(detail: str) -> RegistryError:
    return RegistryError(500, 50002, f"Operation timed out: {detail}")
