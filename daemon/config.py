"""Configuration of the ShelfSight services (pydantic-settings).

Sources, highest priority first: explicit arguments, environment variables (`SHELFSIGHT_` prefix, `__`
between nested names, e.g. `SHELFSIGHT_KAFKA__BOOTSTRAP_SERVERS`), a TOML file named by
`SHELFSIGHT_CONFIG`, then the defaults below. With no configuration at all the daemon runs the embedded
default: a local SQLite file and a local directory of JSON event files, so a newcomer needs nothing else.

This is the only module that reads configuration; everything below `daemon/` takes explicit arguments.
Secrets (database password, tokens) are `SecretStr` or redacted before they are printed or logged.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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
    # images fetched at once: the fetcher's limit and the daemon's fetch threads (a remote image mostly waits, so
    # throughput is at most concurrency / latency: 16 at 100 ms is 160 images/s); decoding is batch.decode_workers
    concurrency: int = Field(default=16, ge=1)
    allow_private_networks: bool = False
    allowed_networks: list[str] = Field(default_factory=list)  # CIDRs allowed even when private (internal CDN)
    file_root: Path | None = None  # file:// URLs are accepted only inside this directory
    attempts: int = 3  # per image, for transient failures (timeouts, 5xx) before the event is dead-lettered


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_images: int = 32  # dynamic batching: a batch closes at this many images ...
    max_delay_ms: int = 25  # ... or this long after its first image arrived, whichever comes first
    max_in_flight_events: int = 256  # backpressure: partitions pause above this
    decode_workers: int = Field(default=4, ge=1)  # images decoded at once (of the fetch.concurrency fetch threads)
    # threads running forward passes side by side, each on its own batch; 0: two with onnxruntime on CPU (each
    # run then gets half the cores as onnxruntime threads), one otherwise
    inference_workers: int = Field(default=0, ge=0)


class ReviewGroupSettings(BaseModel):
    """Routing policy of one attribute group (`review.groups.<name>`)."""

    model_config = ConfigDict(extra="forbid")

    review: bool = True  # false: this group is never a reason to route a product (still shown to annotators)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)  # overrides the bundle's calibrated thresholds


class ReviewSettings(BaseModel):
    """The review loop: routing policy (enrichment daemon) and Label Studio (review worker, `shelfsight review`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # route low-confidence products into the review outbox (`shelfsight run`)
    # -- routing policy
    uncertainty: Literal["least_confidence", "margin", "entropy"] = "margin"  # ranks routed products
    default_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # for values the bundle has no threshold for
    groups: dict[str, ReviewGroupSettings] = Field(default_factory=dict)
    # uncertainty: low-confidence products plus the audit sample, most uncertain first; random: a uniform sample of
    # audit_rate of ALL products in random order (the baseline of bench_active_learning), nothing else;
    # class_balanced / cluster_margin: as uncertainty, but the queue cycles over predicted classes (the most specific
    # group) / prediction-space clusters, most uncertain first within each (learner/review/diversity.py)
    routing: Literal["uncertainty", "random", "class_balanced", "cluster_margin"] = "uncertainty"
    audit_rate: float = Field(default=0.02, ge=0.0, le=1.0)  # random sample of accepted products
    audit_seed: int | None = None  # fixed seed: reproducible audit samples
    max_per_hour: int | None = Field(default=500, ge=0)  # caps on routed products (None: no cap)
    max_per_day: int | None = Field(default=5000, ge=0)
    # how often a daemon re-reads what every replica has routed (the outbox), so the caps hold for all of them
    caps_sync_s: float = Field(default=10.0, gt=0.0)
    # -- audited precision of auto-filled values (review worker) and auto-fill suspensions (every daemon replica)
    audit_interval_s: float = Field(default=60.0, gt=0.0)  # how often the worker measures it (and may suspend)
    audit_level: float = Field(default=0.95, gt=0.5, lt=1.0)  # the two-sided Wilson interval's confidence
    # suspend a group's auto-fill when its interval's upper bound is below target on at least this many answers
    suspend_min_audited: int = Field(default=20, ge=1)
    suspend_autofill: bool = True  # false: measure and alert only, never suspend
    suspended_audit_rate: float = Field(default=0.2, ge=0.0, le=1.0)  # audit sample of a suspended group's products
    suspension_poll_s: float = Field(default=5.0, gt=0.0)  # how often each daemon re-reads the suspensions
    # -- Label Studio
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_token: SecretStr | None = None
    project_title: str = "ShelfSight review"
    request_timeout_s: float = 10.0
    # local images: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, and the directory under it registered as
    # the project's local storage (default: fetch.file_root); file:// images must lie inside that directory
    local_files_root: Path | None = None
    local_storage_path: Path | None = None
    # -- review worker
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 9111  # POST /webhook from Label Studio; GET /metrics, /healthz (0: no receiver)
    webhook_url: str | None = None  # how Label Studio reaches the receiver (default http://webhook_host:port/webhook)
    webhook_secret: SecretStr | None = None  # sent by Label Studio in the X-ShelfSight-Webhook-Secret header
    send_batch: int = Field(default=50, ge=1)
    send_interval_s: float = 2.0
    poll_interval_s: float = 30.0  # the backstop for webhooks Label Studio dropped
    # full reconcile of every task's annotation count and updated_at with the database, at start-up and then this
    # often (None: never); only tasks that differ are read whole (daemon/review/reconcile.py)
    reconcile_interval_s: float | None = Field(default=3600.0, gt=0)
    reconcile_at_start: bool = True  # false: the first full reconcile waits for reconcile_interval_s
    # this worker's identity in outbox claims: stable across restarts, unique among live workers (the pod name in
    # Kubernetes: a StatefulSet's, or the Downward API's metadata.name); a restarted process of the same identity
    # takes its previous incarnation's claims over at once
    worker_id: str = Field(default_factory=socket.gethostname, min_length=1)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)  # how often a worker shows its claims are alive
    claim_stale_s: float = Field(default=15.0, gt=0)  # claims of a worker silent this long are taken over
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    max_attempts_rejected: int = Field(default=5, ge=1)  # Label Studio refusing a task (4xx) this often: failed

    @field_validator("label_studio_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("label_studio_url must start with http:// or https://")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> ReviewSettings:
        if self.claim_stale_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                f"review.claim_stale_s ({self.claim_stale_s}) must be at least 3 x review.heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or a worker that is only slow loses its claims"
            )
        return self


class SettingDeprecationWarning(FutureWarning):
    """A setting was renamed or changed meaning; the message says what to set instead (shown by default)."""


class LearnerSettings(BaseModel):
    """The learner (`shelfsight learn`, `shelfsight models`): model registry, retraining schedule and trigger,
    training data, fine-tuning recipe and promotion gate. See learner/lifecycle/ (retrain.py, corrections.py,
    holdout.py) for the rules these feed."""

    model_config = ConfigDict(extra="forbid")
    # settings whose learner-side field has another name (setting -> field); every other setting reaches the field of
    # its own name, and `detector_*` / `holdout_*` the detector recipe's / holdout rule's without the prefix
    # (`as_fields`, daemon/commands_learn.py)
    RENAMED: ClassVar[dict[str, str]] = {
        "registry_dir": "registry",
        "min_corrected_products": "min_corrections",
        "gate_margin": "max_group_regression",
        "gate_detection_margin": "max_detection_regression",
        "gate_min_class_support": "min_class_support",
    }

    registry_dir: Path = HOME / "registry"  # versions/, aliases.json (champion, previous), decisions/
    work_dir: Path = HOME / "learner"  # fetched correction images, per-run scratch
    base_data: Path | None = None  # the original labelled set (labels.csv + images/); None: corrections only
    base_group_column: str | None = None  # labels.csv column holding the product id (default: the image name)
    # -- when to retrain (APScheduler jobs stored in the product database)
    interval_hours: float | None = Field(default=24.0, gt=0)  # periodic run (None: no periodic run)
    cron: str | None = None  # crontab expression ("0 3 * * *"), used instead of interval_hours when set
    check_interval_s: float = Field(default=300.0, gt=0)  # how often the new-correction count is checked
    # products with human values newer than the last completed run that trigger a run (each answered product
    # counts once, however many attribute values its annotator set). Replaces `min_corrections`, which counted
    # values (200 by default: about 29 products of fashion-products' 7 groups, 100 of clothing-cc0's 2)
    min_corrected_products: int = Field(default=50, ge=1)
    misfire_grace_s: int = Field(default=3600, ge=1)  # a run missed by up to this long (restart) still happens
    standby_poll_s: float = Field(default=15.0, gt=0)  # a standby replica retries the scheduler lock this often
    # -- training data
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # pinned in the registry on first use
    holdout_salt: str = "shelfsight-holdout-v1"
    # the holdout's floor and cap in products (the floor takes at most half of the labelled products); as data grows
    # the threshold only falls, so a product once trained on never enters the holdout (learner/lifecycle/holdout.py)
    holdout_min_products: int = Field(default=300, ge=0)
    holdout_max_products: int | None = Field(default=3000, ge=1)  # None: no cap
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    replay_ratio: float = Field(default=4.0, ge=0)  # earlier samples replayed per new corrected sample
    replay_min_samples: int = Field(default=1000, ge=0)
    # -- fine-tuning (the rest of the recipe: learner.training.recipe.TrainConfig's defaults)
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    backbone_lr_decay: float = Field(default=0.8, gt=0)
    freeze_stages: int = Field(default=3, ge=0)
    patience: int = Field(default=3, ge=0)
    # multi-label groups: each value's positives weigh min(cap, negatives / positives) on the train split (0: off)
    pos_weight_cap: float = Field(default=0.0, ge=0)
    amp: bool = True
    threads: int | None = None  # CPU threads for training (None: all cores)
    nproc_per_node: int = Field(default=1, ge=1)  # >1: torchrun, one process per GPU (DistributedDataParallel)
    # -- detector fine-tuning on annotators' boxes (learner/training/detector.py; amp, threads as above)
    detector_epochs: int = Field(default=6, ge=1)
    detector_batch_size: int = Field(default=4, ge=1)
    detector_lr: float = Field(default=1e-4, gt=0)
    detector_trainable_blocks: int = Field(default=3, ge=0)  # last N backbone blocks that train; earlier ones frozen
    # -- promotion gate
    # a group's top-1 / macro-F1 vetoes only when its paired-bootstrap interval lies entirely below -gate_margin
    gate_margin: float = Field(default=0.02, ge=0)
    gate_min_class_support: int = Field(default=5, ge=1)  # holdout images a class needs to count in macro-F1
    gate_detection_margin: float = Field(default=0.02, ge=0)  # largest tolerated drop of holdout mAP@[.5:.95]
    bootstrap_samples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed_min_corrections(cls, data: Any) -> Any:
        """`learner.min_corrections` (human VALUES) still works, read as `min_corrected_products`, with a warning."""
        if not isinstance(data, dict) or "min_corrections" not in data:
            return data
        data = dict(data)
        old = data.pop("min_corrections")
        if "min_corrected_products" in data:
            raise ValueError(
                "learner.min_corrections is replaced by learner.min_corrected_products: set only "
                "min_corrected_products (SHELFSIGHT_LEARNER__MIN_CORRECTED_PRODUCTS)"
            )
        warnings.warn(
            f"learner.min_corrections = {old} is deprecated: the corrections trigger now counts PRODUCTS with new "
            f"human values, not values. It is read as learner.min_corrected_products = {old} products; set "
            "learner.min_corrected_products (SHELFSIGHT_LEARNER__MIN_CORRECTED_PRODUCTS) instead, to about the "
            "old value divided by the attribute groups an annotator answers per product",
            SettingDeprecationWarning,
            stacklevel=2,
        )
        data["min_corrected_products"] = old
        return data

    def as_fields(self, prefix: str = "") -> dict[str, Any]:
        """The settings under their learner-side names: with `prefix`, those starting with it, without it
        (`as_fields("detector_")["lr"]` is `detector_lr`); without, every setting, renamed as `RENAMED` says."""
        values = self.model_dump()
        if prefix:
            return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
        return {self.RENAMED.get(k, k): v for k, v in values.items()}

    @model_validator(mode="after")
    def _holdout_floor_below_cap(self) -> LearnerSettings:
        if self.holdout_max_products is not None and self.holdout_max_products < self.holdout_min_products:
            raise ValueError(
                f"learner.holdout_max_products ({self.holdout_max_products}) is below learner.holdout_min_products "
                f"({self.holdout_min_products}): raise the cap or lower the floor"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHELFSIGHT_", env_nested_delimiter="__", extra="forbid", protected_namespaces=()
    )

    source: Literal["local", "kafka"] = "local"
    model_path: Path = HOME / "models" / "champion.safetensors"
    registry_dir: Path | None = None  # when set, serve the registry's champion instead of model_path
    reload_interval_s: float = 5.0  # how often to look for a new champion (or a replaced model file); 0: never
    database_url: str = f"sqlite:///{HOME / 'shelfsight.db'}"
    device: str = "auto"
    # classifier runtime: "torch" (eager PyTorch, CPU or CUDA) or "onnxruntime" (the bundle exported to ONNX; the
    # daemon then never imports torch: ~3x the images/s on CPU and about half the memory, see README). The ONNX
    # file is exported beside the bundle on first use (in a subprocess) when `shelfsight models export` did not.
    backend: Literal["torch", "onnxruntime"] = "torch"
    onnx_cache_dir: Path | None = None  # where ONNX exports are kept when not beside the bundle (read-only volume)
    max_pixels: int = 40_000_000
    http_host: str = "127.0.0.1"
    http_port: int = 9108  # /healthz, /readyz, /metrics; 0 disables the endpoint
    shutdown_timeout_s: float = 30.0
    log_level: str = "INFO"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    local: LocalSourceSettings = Field(default_factory=LocalSourceSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)

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


def fields_for(config: type[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The `values` named like fields of the dataclass `config` (the others left out), to build it from settings:
    `RetrainConfig(**fields_for(RetrainConfig, learner.as_fields()))`."""
    names = {f.name for f in dataclasses.fields(config)}
    return {k: v for k, v in values.items() if k in names}


class ReviewConfigError(RuntimeError):
    """The review loop (routing hook or worker) cannot start with this configuration; the message says what to set."""


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
