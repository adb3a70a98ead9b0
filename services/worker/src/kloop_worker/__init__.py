"""kloop worker: Celery tasks for batch scoring, retraining and schedules."""
