"""Configuration of the ShelfSight services (pydantic-settings).

Sources, highest priority first: explicit arguments, environment variables (`SHELFSIGHT_` prefix, `__`
between nested names, e.g. `SHELFSIGHT_KAFKA__BOOTSTRAP_SERVERS`), a TOML file named by
`SHELFSIGHT_CONFIG`, then the defaults below. With no configuration at all the daemon runs the embedded
default: a local SQLite file and a local directory of JSON event files, so a newcomer needs nothing else.

This is the only module that reads configuration; everything below `daemon/` takes explicit arguments.
Secrets (database password, tokens) are `SecretStr` or redacted before they are printed or logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

HOME = Path(os.environ.get("SHELFSIGHT_HOME", ".shelfsight"))


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "products.new"
    dead_letter_topic: str = "products.new.dlq"
    group_id: str = "shelfsight-enricher"
    client_id: str = "shelfsight"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_poll_records: int = 100


class LocalSourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events_dir: Path = HOME / "events"
    stdin: bool = False  # read JSON lines from standard input instead of the directory
    exit_when_idle: bool = False  # stop once every event has been processed (demo, batch jobs)


class FetchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 20.0
    max_bytes: int = 20_000_000
    max_redirects: int = 3
    concurrency: int = 16
    allow_private_networks: bool = False
    allowed_networks: list[str] = Field(default_factory=list)  # CIDRs allowed even when private (internal CDN)
    file_root: Path | None = None  # file:// URLs are accepted only inside this directory
    attempts: int = 3  # per image, for transient failures (timeouts, 5xx) before the event is dead-lettered


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_images: int = 32  # dynamic batching: a batch closes at this many images ...
    max_delay_ms: int = 25  # ... or this long after its first image arrived, whichever comes first
    max_in_flight_events: int = 256  # backpressure: partitions pause above this
    decode_workers: int = 4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHELFSIGHT_", env_nested_delimiter="__", extra="forbid", protected_namespaces=()
    )

    source: Literal["local", "kafka"] = "local"
    model_path: Path = HOME / "models" / "champion.safetensors"
    database_url: str = f"sqlite:///{HOME / 'shelfsight.db'}"
    device: str = "auto"
    max_pixels: int = 40_000_000
    http_host: str = "127.0.0.1"
    http_port: int = 9108  # /healthz, /readyz, /metrics; 0 disables the endpoint
    shutdown_timeout_s: float = 30.0
    log_level: str = "INFO"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    local: LocalSourceSettings = Field(default_factory=LocalSourceSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = os.environ.get("SHELFSIGHT_CONFIG")
        if toml:
            if not Path(toml).is_file():
                raise FileNotFoundError(f"SHELFSIGHT_CONFIG names {toml}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml)))
        return tuple(sources)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
