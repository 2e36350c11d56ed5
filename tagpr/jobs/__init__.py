"""Entry points: the ``tagpr`` command line (``cli.py``, arguments and dispatch in ``command.py``)
and the jobs (``python -m tagpr.jobs.<name>``, also under ``ray job submit``).

They are the glue between the method in ``tagpr/`` and the Ray roles in ``actors/`` and
``services/``, which they import only when run; nothing outside this package imports it
(``tests/unit/test_layers.py``).
"""
