"""The processes: the ``ainode`` command, ``ainode serve`` and ``ainode worker``, the
supervisor of the listener, worker and API processes, and the wiring of job kinds to
their handlers."""
