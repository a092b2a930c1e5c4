"""The rack's Celery worker: thin tasks that each make one call into the domain."""
