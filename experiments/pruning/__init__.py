"""Optuna pruning of collapsed runs: the ``pruning:`` section's keys and checks (:mod:`~experiments.pruning.settings`,
no Optuna), the collapse pruner (:mod:`~experiments.pruning.pruner`) and the Ray Tune scheduler that asks it
(:mod:`~experiments.pruning.scheduler`). Importing the package loads none of them.
"""
