"""A study's path, one module a step:

completion (is the study here?) -> routing (which series go to which model) ->
triage (its level on the worklist) -> inference (the model's prediction) ->
encoding (SEG, SR, key images) -> delivery (to the archive) -> notification (RIS,
webhooks); lifecycle sets the study's state as its jobs move.
"""
