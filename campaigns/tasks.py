"""Celery tasks: they take ids, call one service function and retry on transient errors."""
