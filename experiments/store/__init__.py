"""Where runs are recorded: the MLflow layout (:mod:`~experiments.store.tracking`: the Tracker, client retries,
driver liveness), the store checks and one-line store errors (:mod:`~experiments.store.checks`), reading a local
sqlite store without MLflow (:mod:`~experiments.store.sqlite_reader`), S3-compatible storage
(:mod:`~experiments.store.objectstore`) and credentials kept out of everything recorded
(:mod:`~experiments.store.redaction`). Importing the package loads none of them.
"""
