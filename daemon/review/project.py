"""`ReviewProject`: the Label Studio project of the review loop (labelling configuration from the taxonomy, local
files storage, webhook), and the champion's model version shown on it.

What it must not do: send tasks or read annotations (sender.py, applier.py), or log the webhook secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from connectors.labelstudio import LabelStudioClient
from learner.model.taxonomy import Taxonomy
from learner.review.tasks import label_config

log = logging.getLogger("shelfsight.review")

SECRET_HEADER = "X-ShelfSight-Webhook-Secret"


class ReviewProject:
    """The Label Studio project of the review loop, created or reused by title; idempotent and cheap to call
    again (the labelling configuration, local storage and webhook are set up once per process, the model
    version is compared with the champion every call)."""

    def __init__(
        self,
        client: LabelStudioClient,
        taxonomy: Taxonomy,
        title: str,
        *,
        model_version: Callable[[], str | None],
        local_storage_path: Path | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        masks: bool = False,
    ) -> None:
        self.client = client
        self.taxonomy = taxonomy
        self.masks = masks  # the champion's detector returns masks: annotators get outline and brush controls
        self.title = title
        self._model_version = model_version
        self.local_storage_path = local_storage_path
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._id: int | None = None
        self._shown_version: str | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> int | None:
        return self._id

    def use_webhook(self, url: str, secret: str) -> None:
        """Register this receiver at the next bootstrap (call before `ensure`)."""
        self.webhook_url = url
        self._webhook_secret = secret

    def ensure(self) -> int:
        """The project id, bootstrapping Label Studio on first use. Raises LabelStudioUnavailable/Error."""
        with self._lock:
            if self._id is None:
                project_id = self.client.ensure_project(self.title, label_config(self.taxonomy, self.masks))
                if self.local_storage_path is not None:
                    self.client.ensure_local_storage(project_id, str(self.local_storage_path))
                if self.webhook_url is not None and self._webhook_secret is not None:
                    self.client.ensure_webhook(project_id, self.webhook_url, {SECRET_HEADER: self._webhook_secret})
                self._id = project_id
                log.info("Label Studio project %d (%r) ready at %s", project_id, self.title, self.client.url)
                self._follow_champion(project_id)
            return self._id

    def follow_champion(self) -> str | None:
        """Show the champion's predictions once Label Studio has some (it refuses a version without any); called
        after every import. Returns the version shown."""
        with self._lock:
            if self._id is not None:
                self._follow_champion(self._id)
            return self._shown_version

    def _follow_champion(self, project_id: int) -> None:
        version = self._model_version()
        if (
            version is not None
            and version != self._shown_version
            and self.client.set_model_version(project_id, version)
        ):
            self._shown_version = version
