"""The trust loop: what a model's predictions are measured against (reference
standards), how well it does per version, route and subgroup (metrics with confidence
intervals), whether what it sees or says is shifting (drift), and the reports that show
it (model page, ``ainode validate``)."""
