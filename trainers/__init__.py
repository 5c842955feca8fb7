"""Pure PyTorch trainers: SwAV pretraining and Faster R-CNN fine-tuning (no ray, mlflow or optuna)."""
