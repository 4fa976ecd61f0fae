"""The job framework: which kinds of job there are and what each one carries
(:mod:`node.jobs.kinds`), what a handler is given (:mod:`node.jobs.context`) and the
loop that claims, runs and settles jobs (:mod:`node.jobs.worker`). It knows no step
of the pipeline: :mod:`node.runner.handlers` wires kinds to their handlers."""
