"""The web side: the REST API, the worklist page and ``/metrics`` (one FastAPI process)."""
