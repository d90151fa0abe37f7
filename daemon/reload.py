"""Hot reload: follow the champion model without a restart.

A `ModelWatcher` thread polls a cheap "generation" of where the model comes from: the registry's
`aliases.json` generation (`learner.lifecycle.registry.generation`), or the model file's modification time and size
when the daemon runs a plain bundle path (e.g. a mounted volume). When it changes, the watcher loads the
new bundle and builds a new engine on its own thread, then hands it to the `Enricher`, which uses it for
every image prepared from then on; images already prepared finish on the engine that prepared them, so no
event is dropped or processed twice. A bundle that fails to load is reported and the old model stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from daemon.metrics import ServiceMetrics
from learner.inference.engine import TaggingEngine

log = logging.getLogger("shelfsight.reload")


class ModelSource:
    """Where the serving model comes from: a registry alias, or a plain bundle file."""

    def __init__(self, model_path: Path, registry_dir: Path | None = None, alias: str = "champion") -> None:
        self.model_path = model_path
        self.registry_dir = registry_dir
        self.alias = alias

    def resolve(self) -> Path:
        if self.registry_dir is not None:
            from learner.lifecycle.registry import resolve_alias

            return resolve_alias(self.registry_dir, self.alias)
        return self.model_path

    def generation(self) -> object:
        if self.registry_dir is not None:
            from learner.lifecycle.registry import generation

            return generation(self.registry_dir)
        stat = self.model_path.stat()
        return (stat.st_mtime_ns, stat.st_size)


class ModelWatcher:
    def __init__(
        self,
        source: ModelSource,
        build_engine: Callable[[Path], TaggingEngine],
        install: Callable[[TaggingEngine], None],
        metrics: ServiceMetrics,
        interval_s: float = 5.0,
    ) -> None:
        self.source = source
        self.build_engine = build_engine
        self.install = install
        self.metrics = metrics
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._seen = self._generation()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check_now(self) -> bool:
        """Reload if the generation changed. Returns True when a new model was installed."""
        current = self._generation()
        if current is None or current == self._seen:
            return False
        try:
            path = self.source.resolve()
            engine = self.build_engine(path)
        except Exception as exc:  # a bad new model must not take the service down
            self.metrics.model_reloads.labels("failed").inc()
            log.error("new model could not be loaded, keeping the current one: %s", exc)
            self._seen = current  # do not retry the same broken generation every few seconds
            return False
        self.install(engine)
        self._seen = current
        self.metrics.model_reloads.labels("loaded").inc()
        log.info("now serving model %s from %s", engine.model_version, path)
        return True

    def _generation(self) -> object | None:
        try:
            return self.source.generation()
        except Exception as exc:  # e.g. the file is being replaced right now
            log.debug("model generation unavailable: %s", exc)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_now()
