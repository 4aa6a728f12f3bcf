"""Job functions run by workers; rq finds them by dotted path (see :data:`workers.config.JOB_FUNCTIONS`).

Every function takes only ``(job_id, prefix)``: the spec and the input images are read from Redis
by key, so no image bytes ever travel inside rq's job arguments.
"""
