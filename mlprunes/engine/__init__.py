"""Training, evaluation, checkpoints and latency: plain PyTorch, no MLflow."""
