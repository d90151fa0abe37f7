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
    applier.py   `AnnotationApplier`: one annotation -> parsed values (learner/review/tasks.py) ->
                 `ReviewStore.record_annotation` (idempotent: the same content twice changes nothing). Shared by
                 the webhook and the poller.
    project.py   `ReviewProject`: bootstraps Label Studio (project with the taxonomy's labelling configuration,
                 local files storage, webhook) and keeps the project's model version in step with the champion.
    worker.py    `ReviewWorker` runs the parts on their threads; `build_review_worker` wires them from settings.

The enrichment daemon's routing hook is not here: it is `daemon/routing.py`. Nothing here logs the Label Studio
token or the webhook secret.
"""
