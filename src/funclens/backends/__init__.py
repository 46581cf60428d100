"""Where a study's runs are computed. A backend submits runs and waits for their outcomes; which run
is ready, done, failed or skipped is decided by :func:`funclens.schedule.run_plan` alone.

- :mod:`~funclens.backends.inprocess`: one run at a time in this process (``--jobs 1``).
- :mod:`~funclens.backends.pool`: worker processes of one thread each, forked on the CPU, spawned for CUDA.
- :mod:`~funclens.backends.ray`: Ray tasks over the nodes of a cluster (Ray is imported there only).

Every backend computes a run with :func:`funclens.schedule.attempt`, so a run holds the same bytes
whichever backend computed it.
"""
