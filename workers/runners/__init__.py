"""Job functions run by workers; rq finds them by the dotted path in their registry entry
(:data:`core.jobtypes.JOB_TYPES`).

Every function takes only ``(job_id, prefix)``: the spec and the input images are read from Redis
by key, so no image bytes ever travel inside rq's job arguments.
"""
