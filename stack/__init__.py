"""The composition root: the ``cnnviz`` command, which starts the API, workers and an embedded Redis.

It sits above both ``service`` and ``workers`` (the only package that imports both), so neither
of those has to know the other exists.
"""
