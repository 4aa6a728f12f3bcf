"""Parameter models of every method, view and job type, and the answers the core pipelines build."""
