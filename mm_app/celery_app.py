"""The Celery app of MiniModal: ``celery -A mm_app.celery_app worker -P threads -Q mm.cpu``.

Workers use the threads pool: a task only moves bytes between Redis and a runner process, so one
worker process holds one warm pool shared by all its slots.
"""

from celery import Celery

from .observability import connect_celery_logging

app = Celery("minimodal", include=["mm_app.tasks.execute", "mm_app.tasks.build", "mm_app.tasks.sandbox"])
app.config_from_object("celeryconfig")
connect_celery_logging()  # JSON lines with each task's call id when MINIMODAL_LOG_JSON is set
