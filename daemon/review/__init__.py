"""The review worker (`shelfsight review run`): the routed products in, Label Studio tasks out, annotators'
answers back into the catalog. One process, small parts with one job each:

    sender.py    `OutboxSender`: every `send_interval_s`, claim due outbox rows (most uncertain first), import them
                 into Label Studio as tasks (`TaskBuilder`) with the model's prediction, mark them sent. Label
                 Studio down: the rows stay pending and are retried with exponential backoff; Label Studio refusing
                 a task (4xx): retried a few times, then 'failed' with its answer. A row whose earlier attempt may
                 have reached Label Studio is looked up by its key first, so no task is created twice.
    webhook.py   `WebhookReceiver`: POST /webhook from Label Studio (ANNOTATION_CREATED/UPDATED,
                 ANNOTATIONS_DELETED), checked against the shared secret header, queued and answered at once
                 (Label Studio waits at most a second); GET /metrics and /healthz on the same port.
    poller.py    `AnnotationPoller`: every `poll_interval_s`, tasks changed since the stored watermark, their
                 annotations recorded and deleted ones withdrawn: the backstop for webhooks Label Studio dropped
                 while the receiver was down.
    reconcile.py `FullReconcile`: at start-up and every `reconcile_interval_s`, every task's id, `updated_at` and
                 annotation count (about 100 bytes a task) against the database; only tasks that differ are read
                 whole and reconciled. Answers it recovers are logged and counted: webhook and poll had missed them.
    applier.py   `AnnotationApplier`: one annotation -> parsed values (learner/review/tasks.py) ->
                 `ReviewStore.record_annotation` (idempotent: the same content twice changes nothing). Shared by
                 the webhook and the poller.
    project.py   `ReviewProject`: bootstraps Label Studio (project with the taxonomy's labelling configuration,
                 local files storage, webhook) and keeps the project's model version in step with the champion.
    audit.py     `AutofillAudit`: every `audit_interval_s`, the audited precision of auto-filled values per group
                 and model version (Wilson interval, target, label-free estimate) as gauges; a group significantly
                 below target gets its auto-fill suspended (autofill_suspensions), which every daemon replica follows.
    worker.py    `ReviewWorker` runs the parts on their threads (and a heartbeat: outbox claims carry the worker's
                 identity and start time, so a restarted or silent worker's claims are taken over early);
                 `build_review_worker` wires them from settings.

The enrichment daemon's routing hook is not here: it is `daemon/routing.py`. Nothing here logs the Label Studio
token or the webhook secret.
"""
