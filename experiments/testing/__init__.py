"""Support shared by the tests and the benchmarks (``tests/`` and ``bench/`` both import it; ``bench/`` never
imports ``tests/``), as ``numpy.testing`` ships with numpy:

* :mod:`experiments.testing.spaces`: tiny search spaces that launch in seconds on a CPU, and the planted collapse;
* :mod:`experiments.testing.s3server`: moto's standalone S3 server on 127.0.0.1 (needs the ``dev`` extra's moto).

Nothing in the service imports it.
"""
