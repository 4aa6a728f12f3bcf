"""What the service and the workers share, below both: no FastAPI, no rq.

The explain and inspect pipelines (images + typed params -> answers), the parameter models of
every method, view and job type, the job-type registry, image decoding and its limits, the
Redis data layer (jobs, collections, trained networks) and the domain errors. ``service`` maps
those errors to HTTP; ``workers`` runs the registry's job functions. See docs/architecture.md.
"""
