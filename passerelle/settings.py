"""Typed settings read from ``PASSERELLE_*`` environment variables.

Every process builds one settings object. A ``PASSERELLE_`` variable that no
settings class knows is rejected: a typo in a deployment manifest must fail at
start-up, not silently fall back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from passerelle.errors import PasserelleError

ENV_PREFIX = "PASSERELLE_"


class PasserelleSettings(BaseSettings):
    """Settings every passerelle process shares: where Kafka and the registry are."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False)

    bootstrap_servers: str = Field(
        default="", description="Kafka bootstrap servers (host:port,...); default: the local stack"
    )
    schema_registry_url: str = Field(
        default="", description="Confluent-compatible schema registry URL; default: the local registry"
    )
    state_dir: Path = Field(
        default=Path(".passerelle"),
        description="Folder holding the local stack's data, logs and pid files",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "passerelle",
        description="Folder caching the Kafka jars fetched with Maven (kept by `down --purge`)",
    )
    kafka_port: int = Field(default=9092, description="Local broker's client port")
    controller_port: int = Field(default=9093, description="Local broker's KRaft controller port")
    registry_port: int = Field(default=8081, description="Embedded schema registry's HTTP port")
    registry_host: str = Field(default="127.0.0.1", description="Address the embedded registry binds")
    schemas_topic: str = Field(default="_schemas", description="Compacted topic storing the registry")
    catalog: Path | None = Field(
        default=None, description="Topic catalog file (default: schemas/catalog.toml shipped with the code)"
    )

    @model_validator(mode="after")
    def _default_endpoints(self) -> PasserelleSettings:
        # Clients follow the local stack's ports unless pointed elsewhere.
        if not self.bootstrap_servers:
            self.bootstrap_servers = f"127.0.0.1:{self.kafka_port}"
        if not self.schema_registry_url:
            self.schema_registry_url = f"http://127.0.0.1:{self.registry_port}"
        return self


def _known_fields(cls: type[BaseSettings]) -> set[str]:
    names = {name.upper() for name in cls.model_fields}
    for sub in cls.__subclasses__():
        names |= _known_fields(sub)
    return names


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Fail on ``PASSERELLE_*`` variables that no settings class declares."""
    env = os.environ if environ is None else environ
    known = _known_fields(PasserelleSettings)
    unknown = sorted(
        key for key in env if key.upper().startswith(ENV_PREFIX) and key.upper()[len(ENV_PREFIX) :] not in known
    )
    if unknown:
        raise PasserelleError(
            f"unknown setting(s) {', '.join(unknown)}; known: " + ", ".join(sorted(ENV_PREFIX + k for k in known))
        )


def load(cls: type[PasserelleSettings] = PasserelleSettings, **overrides: Any) -> PasserelleSettings:
    """Build a settings object, turning validation errors into one readable line."""
    check_environment()
    try:
        return cls(**overrides)
    except Exception as exc:  # pydantic.ValidationError, but keep the message short
        raise PasserelleError(f"invalid settings: {exc}".replace("\n", " ")) from exc
