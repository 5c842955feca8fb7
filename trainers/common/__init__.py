"""What both trainers share, one module per job:

- :mod:`~trainers.common.configs`: config files (YAML that refuses a repeated key), ``key=value`` overrides, and
  config dataclasses to and from plain values, with their hash;
- :mod:`~trainers.common.validation`: config values refused with a message naming the field, the value and what is
  allowed (:class:`~trainers.common.validation.ConfigError`);
- :mod:`~trainers.common.provenance`: seeds, every RNG state a resumed run needs, and the code's git sha;
- :mod:`~trainers.common.devices`: the device a process trains on, and the distributed backend;
- :mod:`~trainers.common.precision`: mixed precision (autocast, loss scaling, one guarded optimiser step) and the
  non-finite-loss guard;
- :mod:`~trainers.common.schedules`: learning-rate schedules.

Kept free of ray, mlflow and optuna (docs/ARCHITECTURE.md: trainers are pure PyTorch), and, except for
``precision``, of a module-level torch import: reading and validating a config loads no torch.
"""
