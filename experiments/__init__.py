"""Orchestration around the trainers: search spaces, Ray Tune launch, MLflow tracking, Optuna pruning."""
