"""The model registry: every model version ever registered, and the aliases `champion` and `previous`.

Layout under the registry root (every path relative, so the same keys can live in an object store later):

    aliases.json                        {"generation": 7, "aliases": {"champion": V, "previous": U},
                                         "history": [...champions in promotion order...]}  (a few hundred bytes)
    events/<generation>.json            who changed the aliases, when, why (promote / rollback)
    versions/<version>.safetensors      the bundle (written once, never modified)
    versions/<version>.json             its record: parent, registered_at, training-data snapshot, metrics,
                                        holdout figures, gate decision, file sha256
    decisions/<UTC stamp>-<version>.json  one file per promotion decision, with every figure used

A version exists once its record (`versions/<version>.json`) exists; the bundle is written first, so a crash
leaves at most an unregistered bundle, which `remove_orphans()` deletes. `aliases.json` is only ever replaced
whole (write a temporary file, fsync, rename), so a reader sees the old state or the new one, never a mix.

For hot reload, a daemon polls `generation(root)` (one small JSON read; it goes up by one on every promote or
rollback) and, when it changed, loads `resolve_alias(root, "champion")`. `read_alias_state(root)` gives both
from one read.

Writers (promote, rollback, register) serialise through an exclusive `fcntl` lock on `<root>/.lock`; that
holds on one machine or a POSIX shared volume. It must not train or evaluate anything: it stores and names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.model.manifest import BundleError, file_sha256, read_manifest

ALIASES_FILE = "aliases.json"
VERSIONS_DIR = "versions"
DECISIONS_DIR = "decisions"
BUNDLE_SUFFIX = ".safetensors"
RECORD_SUFFIX = ".json"
CHAMPION = "champion"
PREVIOUS = "previous"
ALIASES = (CHAMPION, PREVIOUS)
EVENTS_DIR = "events"
MAX_HISTORY = 100  # champions remembered for rollback (keeps aliases.json small to poll)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class AliasState:
    """One consistent read of aliases.json."""

    generation: int
    aliases: dict[str, str]
    history: list[str] = field(default_factory=list)  # champions in promotion order, the current one last

    def version(self, alias: str) -> str | None:
        return self.aliases.get(alias)


# --- cheap functions for readers (the daemon's hot reload) -------------------------------------------


def read_alias_state(root: str | Path) -> AliasState:
    """The current aliases and generation (generation 0 and no aliases for an empty registry)."""
    path = Path(root) / ALIASES_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AliasState(0, {})
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path} is unreadable ({exc}); restore it from a backup or re-promote a version") from None
    return AliasState(
        generation=int(raw.get("generation", 0)),
        aliases={k: str(v) for k, v in raw.get("aliases", {}).items() if v},
        history=[str(v) for v in raw.get("history", [])],
    )


def generation(root: str | Path) -> int:
    """A counter that goes up by one on every promote or rollback: poll it, reload when it changes."""
    return read_alias_state(root).generation


def resolve_alias(root: str | Path, alias: str = CHAMPION) -> Path:
    """The bundle file an alias (`champion`, `previous`) points to."""
    version = read_alias_state(root).version(alias)
    if version is None:
        raise RegistryError(
            f"the registry {root} has no {alias!r} yet; register a bundle with "
            "`shelfsight models register BUNDLE --promote`"
        )
    return bundle_path(root, version)


def bundle_path(root: str | Path, version: str) -> Path:
    return Path(root) / VERSIONS_DIR / f"{_checked_version(version)}{BUNDLE_SUFFIX}"


# --- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRecord:
    """What the registry knows of one version (the JSON record beside its bundle)."""

    version: str
    data: dict[str, Any]

    @property
    def parent(self) -> str | None:
        parent = self.data.get("parent")
        return str(parent) if parent else None

    @property
    def registered_at(self) -> str:
        return str(self.data.get("registered_at", ""))


class ModelRegistry:
    """Registered versions and aliases under one root directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------------------
    def aliases(self) -> AliasState:
        return read_alias_state(self.root)

    def resolve(self, name: str) -> Path:
        """Bundle path of an alias or a version."""
        if name in ALIASES:
            return resolve_alias(self.root, name)
        record = self.get(name)
        return bundle_path(self.root, record.version)

    def version_of(self, name: str) -> str:
        """The version an alias points to, or `name` itself when it is a registered version."""
        if name in ALIASES:
            version = self.aliases().version(name)
            if version is None:
                raise RegistryError(f"the registry {self.root} has no {name!r} yet")
            return version
        return self.get(name).version

    def get(self, version: str) -> VersionRecord:
        path = self._record_path(version)
        try:
            return VersionRecord(version, json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RegistryError(
                f"version {version!r} is not registered in {self.root} (see `shelfsight models list`)"
            ) from None

    def versions(self) -> list[VersionRecord]:
        """Every registered version, oldest first."""
        directory = self.root / VERSIONS_DIR
        if not directory.is_dir():
            return []
        records = []
        for path in directory.glob(f"*{RECORD_SUFFIX}"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                records.append(VersionRecord(path.stem, json.loads(path.read_text(encoding="utf-8"))))
        return sorted(records, key=lambda r: (r.registered_at, r.version))

    # -- writing -----------------------------------------------------------------------------------
    def register(self, bundle_file: str | Path, **record: Any) -> VersionRecord:
        """Copy a bundle into the registry under its model version and write its record; extra keyword
        arguments (data snapshot, holdout metrics, gate decision, run id) go into the record."""
        source = Path(bundle_file)
        try:
            manifest = read_manifest(source)
        except BundleError as exc:
            raise RegistryError(f"cannot register {source}: {exc}") from None
        version = _checked_version(str(manifest["model_version"]))
        target = bundle_path(self.root, version)
        with self._locked():
            if self._record_path(version).exists():
                raise RegistryError(f"version {version} is already registered in {self.root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.resolve() != target.resolve():
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(source, tmp)
                _fsync(tmp)
                tmp.replace(target)
            lineage = manifest.get("lineage", {})
            data = {
                "version": version,
                "parent": lineage.get("parent"),
                "registered_at": _now(),
                "file": f"{VERSIONS_DIR}/{target.name}",
                "file_sha256": file_sha256(target),
                "bytes": target.stat().st_size,
                "taxonomy": manifest.get("taxonomy", {}).get("name"),
                "backbone": manifest.get("classifier", {}).get("backbone"),
                "metrics": manifest.get("metrics", {}),
                "data": lineage.get("data"),
                **record,
            }
            _write_json_atomic(self._record_path(version), data)
        return VersionRecord(version, data)

    def update_record(self, version: str, **changes: Any) -> VersionRecord:
        with self._locked():
            record = self.get(version)
            data = {**record.data, **changes}
            _write_json_atomic(self._record_path(version), data)
        return VersionRecord(version, data)

    def promote(self, version: str, reason: str = "", actor: str = "") -> AliasState:
        """Make `version` the champion; the champion so far becomes `previous`."""
        self.get(version)  # must be registered
        with self._locked():
            state = self.aliases()
            if state.version(CHAMPION) == version:
                raise RegistryError(f"{version} is already the champion")
            history = [*state.history, version]
            return self._write_aliases(state, history, {"action": "promote", "version": version}, reason, actor)

    def rollback(self, reason: str = "", actor: str = "") -> AliasState:
        """Make `previous` the champion again; the champion it replaces is dropped from the history."""
        with self._locked():
            state = self.aliases()
            if len(state.history) < 2:
                raise RegistryError(f"nothing to roll back to: the registry {self.root} has no previous champion")
            rolled_back = state.history[-1]
            event = {"action": "rollback", "version": state.history[-2], "rolled_back": rolled_back}
            return self._write_aliases(state, state.history[:-1], event, reason, actor)

    def record_decision(self, version: str, decision: dict[str, Any]) -> Path:
        """Write one decision file (decisions/<stamp>-<version>.json) and keep it in the version's record."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.root / DECISIONS_DIR / f"{stamp}-{_checked_version(version)}.json"
        _write_json_atomic(path, {"version": version, "decided_at": _now(), **decision})
        if self._record_path(version).exists():
            self.update_record(version, gate=decision)
        return path

    def decisions(self) -> list[dict[str, Any]]:
        directory = self.root / DECISIONS_DIR
        if not directory.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]

    def events(self) -> list[dict[str, Any]]:
        """Every alias change (promote, rollback), oldest first."""
        directory = self.root / EVENTS_DIR
        if not directory.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]

    def remove_orphans(self) -> list[Path]:
        """Delete what a crash can leave behind: temporary files and bundles that were never registered
        (their record was not written). Never touches a registered version."""
        directory = self.root / VERSIONS_DIR
        removed: list[Path] = []
        if not directory.is_dir():
            return removed
        with self._locked():
            for path in directory.iterdir():
                orphan = path.name.endswith(".tmp") or (
                    path.suffix == BUNDLE_SUFFIX and not path.with_suffix(RECORD_SUFFIX).exists()
                )
                if orphan:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # -- internals ---------------------------------------------------------------------------------
    def _record_path(self, version: str) -> Path:
        return self.root / VERSIONS_DIR / f"{_checked_version(version)}{RECORD_SUFFIX}"

    def _write_aliases(
        self, state: AliasState, history: list[str], event: dict[str, Any], reason: str, actor: str
    ) -> AliasState:
        aliases = {CHAMPION: history[-1]} if history else {}
        if len(history) > 1:
            aliases[PREVIOUS] = history[-2]
        generation = state.generation + 1
        event = {**event, "at": _now(), "reason": reason, "actor": actor or _actor(), "generation": generation}
        new = AliasState(generation, aliases, history[-MAX_HISTORY:])
        payload = {"generation": generation, "aliases": aliases, "history": new.history, "updated_at": event["at"]}
        _write_json_atomic(self.root / ALIASES_FILE, payload)
        _write_json_atomic(self.root / EVENTS_DIR / f"{generation:08d}.json", event)
        return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# --- helpers -----------------------------------------------------------------------------------------


def _checked_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise RegistryError(f"{version!r} is not a valid model version name (letters, digits, '.', '_', '-')")
    return version


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _actor() -> str:
    return f"{os.environ.get('USER', 'unknown')}@{os.uname().nodename}:{os.getpid()}"
