"""Job entrypoints (``python -m tagpr.jobs.<name>``, also under ``ray job submit``).

They are the glue between the method in ``tagpr/`` and the Ray roles in ``actors/`` and
``services/``, which they import only when run.
"""
