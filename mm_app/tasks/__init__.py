"""Celery task bodies. They depend on ``workers`` (runtimes, pools) and ``minimodal`` (protocol)."""
