"""A thin adapter over the Label Studio SDK (label-studio-sdk 2.x, server 1.23): the calls the review loop makes,
with Label Studio's failures sorted into two kinds.

- `LabelStudioUnavailable`: transient (connection refused or reset, timeouts, HTTP 5xx, 429): retry later with
  backoff; nothing is lost meanwhile.
- `LabelStudioError`: Label Studio refused the request (4xx): retrying the same request cannot help; the message
  says what it answered.

Calls: `ensure_project` (create or reuse by title, keep the labelling configuration in step), `set_model_version`,
`ensure_local_storage`, `import_tasks` (with predictions as pre-annotations), `find_task` (by a key in the task's
data, so a send interrupted after Label Studio stored the task is not sent twice), `tasks_updated_since` and
`server_time` (incremental polling: created, edited, skipped and deleted annotations all move a task's `updated_at`),
`task_digests` (every task's id, `updated_at` and annotation count, about 100 bytes a task: the periodic
reconcile), `get_task`, `ensure_webhook`, `user_email`.

What it must not do: decide anything (what to send, when to retry), log the API token, or import `learner/` or
`daemon/`. The SDK's own retries are off (`max_retries=0`): the caller owns retries and backoff.
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import httpx

__all__ = [
    "ImportedTasks",
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioUnavailable",
    "TaskDigest",
    "parse_timestamp",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


class LabelStudioUnavailable(Exception):
    """Label Studio cannot be reached or failed on its side (5xx, 429, timeout): retry later."""


class LabelStudioError(Exception):
    """Label Studio refused the request (4xx other than 429): fix the request or the configuration."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ImportedTasks:
    task_ids: list[int]
    predictions: int


@dataclass(frozen=True)
class TaskDigest:
    """What the reconcile compares: a task's id, its `updated_at` and how many annotations it has (skips included)."""

    id: int
    updated_at: datetime | None
    annotations: int


DIGEST_FIELDS = "id,updated_at,total_annotations,cancelled_annotations"  # the task list's `include`


def _translate(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Turn SDK and transport errors into LabelStudioUnavailable / LabelStudioError."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            from label_studio_sdk.core.api_error import ApiError

            try:
                return fn(*args, **kwargs)
            except httpx.TransportError as exc:
                raise LabelStudioUnavailable(f"Label Studio unreachable while trying to {what}: {exc!r}") from exc
            except ApiError as exc:
                status = exc.status_code or 0
                body = _short(exc.body)
                if status >= 500 or status in (0, 408, 429):
                    raise LabelStudioUnavailable(f"Label Studio failed to {what} (HTTP {status}): {body}") from exc
                raise LabelStudioError(f"Label Studio refused to {what} (HTTP {status}): {body}", status) from exc

        return inner

    return wrap


def _short(body: Any, limit: int = 500) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_timestamp(value: str | datetime | None) -> datetime | None:
    """Label Studio's timestamps ('2026-11-22T20:46:00.778166Z' or '2026-11-22 20:46:00.778166+00:00') as
    timezone-aware UTC datetimes."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    if dump is None:
        raise TypeError(f"cannot read {type(obj).__name__} as a dict")
    data: dict[str, Any] = dump()
    return data


class LabelStudioClient:
    """One Label Studio server. `url`: e.g. http://127.0.0.1:8080; `token`: a legacy API token or a personal
    access token (JWT refresh token). `timeout_s` bounds every request; `http_client` replaces the SDK's own
    (e.g. one with event hooks that count requests and bytes)."""

    def __init__(
        self, url: str, token: str, *, timeout_s: float = 10.0, http_client: httpx.Client | None = None
    ) -> None:
        from label_studio_sdk import LabelStudio

        sdk_class: Any = LabelStudio  # the generated SDK is only partly typed; this adapter is the typed surface
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._sdk: Any = sdk_class(
            base_url=self.url, api_key=token, timeout=timeout_s, max_retries=0, httpx_client=http_client
        )
        self._emails: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    @property
    def sdk(self) -> Any:
        """The underlying SDK client (tests act as annotators through it)."""
        return self._sdk

    def ping(self) -> bool:
        """True when the server answers /health; never raises."""
        try:
            response = httpx.get(f"{self.url}/health", timeout=2.0)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    # ---------------------------------------------------------------------------------------------- projects

    @_translate("find or create the project")
    def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the project called `title`, created if missing. Its labelling configuration is updated when
        it differs; when Label Studio refuses the change (it would drop labels existing annotations use), the
        project keeps its configuration and a warning says so."""
        existing = [p for p in self._sdk.projects.list(title=title) if getattr(p, "title", None) == title]
        if existing:
            project = existing[0]
            project_id = int(project.id)
            current = self._sdk.projects.get(id=project_id)
            if (getattr(current, "label_config", None) or "").strip() != label_config.strip():
                self._update_label_config(project_id, title, label_config)
        else:
            created = self._sdk.projects.create(
                title=title,
                label_config=label_config,
                description="Products ShelfSight's model is unsure about, pre-filled with its guess.",
                show_skip_button=True,
            )
            project_id = int(created.id)
            log.info("created Label Studio project %d (%s)", project_id, title)
        return project_id

    def _update_label_config(self, project_id: int, title: str, label_config: str) -> None:
        from label_studio_sdk.core.api_error import ApiError

        try:
            self._sdk.projects.update(id=project_id, label_config=label_config)
            log.info("updated the labelling configuration of Label Studio project %d (%s)", project_id, title)
        except ApiError as exc:
            if exc.status_code != 400:
                raise
            # e.g. labels removed from the taxonomy that annotations still use: keep the project's configuration;
            # answers with labels unknown to the taxonomy are recorded as such and never applied
            log.warning(
                "Label Studio kept project %d's labelling configuration (it refused the taxonomy's: %s)",
                project_id,
                _short(exc.body, 300),
            )

    @_translate("set the project's model version")
    def set_model_version(self, project_id: int, model_version: str) -> bool:
        """Show the pre-annotations of `model_version` (annotators see the project's current version only). False
        when Label Studio has no predictions of that version yet (it refuses the change then): try again after
        importing tasks predicted by it."""
        from label_studio_sdk.core.api_error import ApiError

        current = self._sdk.projects.get(id=project_id)
        if getattr(current, "model_version", None) == model_version:
            return True
        try:
            self._sdk.projects.update(id=project_id, model_version=model_version)
        except ApiError as exc:
            if exc.status_code == 400 and "model_version" in json.dumps(exc.body, default=str):
                return False
            raise
        log.info("Label Studio project %d now shows predictions of model %s", project_id, model_version)
        return True

    @_translate("read the project")
    def project(self, project_id: int) -> dict[str, Any]:
        return _as_dict(self._sdk.projects.get(id=project_id))

    @_translate("find or create the local files storage")
    def ensure_local_storage(self, project_id: int, path: str, *, title: str = "shelfsight images") -> int:
        """A local files import storage on `path` (a directory under the server's
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); files under it are then served as /data/local-files/?d=<path
        relative to the document root>. Nothing is imported from it (tasks are imported by the review worker)."""
        for storage in self._sdk.import_storage.local.list(project=project_id):
            if getattr(storage, "path", None) == path:
                return int(storage.id)
        created = self._sdk.import_storage.local.create(project=project_id, path=path, use_blob_urls=True, title=title)
        return int(created.id)

    # ---------------------------------------------------------------------------------------------- tasks

    @_translate("import tasks")
    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> ImportedTasks:
        """Import tasks ({"data": {...}, "predictions": [{"model_version", "score", "result"}]}) in one request,
        in one database transaction on the server. Returns their ids in the order given."""
        response = self._sdk.projects.import_tasks(project_id, request=list(tasks), return_task_ids=True)
        ids = [int(i) for i in (getattr(response, "task_ids", None) or [])]
        if len(ids) != len(tasks):
            raise LabelStudioError(f"imported {len(tasks)} tasks but Label Studio returned {len(ids)} task ids")
        # the SDK's `predictions_count` reads None; the server's field is `prediction_count`
        predictions = int(getattr(response, "prediction_count", None) or 0)
        return ImportedTasks(ids, predictions)

    @_translate("look a task up")
    def find_task(self, project_id: int, data_key: str, value: str) -> int | None:
        """The id of a task whose data[`data_key`] equals `value`, or None."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": f"filter:tasks:data.{data_key}", "operator": "equal", "type": "String", "value": value}
                ],
            }
        }
        for task in self._sdk.tasks.list(project=project_id, query=json.dumps(query), page_size=10):
            return int(task.id)
        return None

    def tasks_updated_since(
        self, project_id: int, since: datetime | None, *, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Tasks whose `updated_at` is after `since` (all tasks when None), with their annotations and
        predictions, in id order. Creating, editing, skipping or deleting an annotation moves `updated_at`.

        Paged by id (each request: the first `page_size` tasks changed since `since` with an id above the last one
        yielded), because an id never changes while a listing runs. Paging by `updated_at` skipped tasks: Label
        Studio pages a listing with one query and then reads the page's tasks again by id
        (`data_manager/api.py`, `TaskListAPI.get`), so a task edited between the two comes back with its new,
        later `updated_at`; a cursor taken from it jumped past every task not yet listed (reproduced: 8 of 30
        listings of 250 changed tasks lost 150 while annotators edited; `tests/connectors/test_labelstudio.py`).

        A task edited after this listing read it is not listed again; its `updated_at` is later than the
        listing's start, so a caller that takes `server_time()` before listing and asks from there next time
        (minus an overlap for changes that committed late) sees every change.
        """
        changed = []
        if since is not None:
            changed.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                            "value": format_timestamp(since)})  # fmt: skip
        yield from self._tasks_by_id("list changed tasks", project_id, page_size, changed, fields="all")

    @_translate("read the server's clock")
    def server_time(self) -> datetime:
        """The server's clock (UTC), from the `Date` header of a /health response. The header counts whole seconds,
        so this is never later than the moment the server answered: every change the server stamped before it is
        visible to a listing that starts afterwards (save for transactions that commit late)."""
        response = httpx.get(f"{self.url}/health", timeout=self._timeout_s)
        if response.status_code >= 500:
            raise LabelStudioUnavailable(f"Label Studio's /health answered HTTP {response.status_code}")
        header = response.headers.get("date")
        if not header:
            raise LabelStudioError("Label Studio's /health response has no Date header: cannot read its clock")
        return email.utils.parsedate_to_datetime(header).astimezone(UTC)

    def task_digests(self, project_id: int, *, page_size: int = 1000) -> Iterator[TaskDigest]:
        """Every task of the project as a `TaskDigest`, in id order: one request per `page_size` tasks, each asking
        only for the digest's fields (`include`), paged by id (never "page 2"), so tasks created meanwhile are
        listed at the end and none is skipped."""
        for t in self._tasks_by_id("list the project's tasks", project_id, page_size, [], include=DIGEST_FIELDS):
            total = int(t.get("total_annotations") or 0) + int(t.get("cancelled_annotations") or 0)
            yield TaskDigest(int(t["id"]), parse_timestamp(t.get("updated_at")), total)

    def _tasks_by_id(
        self, what: str, project_id: int, page_size: int, filters: list[dict[str, Any]], **shape: str
    ) -> Iterator[dict[str, Any]]:
        """The project's tasks that match `filters`, in id order, in the shape `shape` asks for (`fields` or
        `include`): one request per `page_size` tasks, each for the first page of those above the last id seen, never
        for "page 2" (ids never change, so tasks created or edited meanwhile cannot make a listing skip one)."""
        after_id = 0
        while True:
            page = _translate(what)(self._first_page_after)(project_id, page_size, after_id, filters, shape)
            yield from page
            if len(page) < page_size:
                return
            after_id = int(page[-1]["id"])

    def _first_page_after(
        self, project_id: int, page_size: int, after_id: int, filters: list[dict[str, Any]], shape: dict[str, str]
    ) -> list[dict[str, Any]]:
        above = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after_id}
        query = {"filters": {"conjunction": "and", "items": [above, *filters]}, "ordering": ["tasks:id"]}
        pager = self._sdk.tasks.list(project=project_id, query=json.dumps(query), page_size=page_size, **shape)
        return sorted((_as_dict(task) for task in itertools.islice(pager, page_size)), key=lambda t: int(t["id"]))

    @_translate("read a task")
    def get_task(self, task_id: int) -> dict[str, Any]:
        return _as_dict(self._sdk.tasks.get(id=str(task_id)))

    # ---------------------------------------------------------------------------------------------- webhooks, users

    @_translate("register the webhook")
    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str]) -> int:
        """One active webhook of this project to `url` sending annotation events with their payload and `headers`
        (the shared secret). An existing one to the same URL is updated in place."""
        actions = list(ANNOTATION_ACTIONS)
        for hook in self._sdk.webhooks.list(project=str(project_id)):
            if getattr(hook, "url", None) == url and getattr(hook, "project", None) == project_id:
                self._sdk.webhooks.update(
                    id=int(hook.id),
                    url=url,
                    headers=headers,
                    actions=actions,
                    send_payload=True,
                    send_for_all_actions=False,
                    is_active=True,
                )
                return int(hook.id)
        created = self._sdk.webhooks.create(
            url=url,
            project=project_id,
            headers=headers,
            actions=actions,
            send_payload=True,
            send_for_all_actions=False,
            is_active=True,
        )
        return int(created.id)

    @_translate("look a user up")
    def user_email(self, user_id: int) -> str:
        """The e-mail of a Label Studio user (cached): how annotators are named in the product database."""
        if user_id not in self._emails:
            user = self._sdk.users.get(id=user_id)
            self._emails[user_id] = str(getattr(user, "email", None) or getattr(user, "username", None) or user_id)
        return self._emails[user_id]
