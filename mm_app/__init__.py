"""The MiniModal control plane: Flask API, dispatcher, Celery app and tasks, models.

Import ``mm_app.api.create_app`` for the API; ``python -m mm_app --help`` lists the processes.
"""
