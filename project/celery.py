"""The Celery application. Topology lives in workers/queues.py."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

app = Celery("context_engine")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers.inference", "workers.batch", "workers.training", "workers.deadletter", "workers.ops"], related_name="tasks")
