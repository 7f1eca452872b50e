"""The human ranking page: a thin FastAPI shell over the store's annotation queue."""
