"""Training on the host: the model zoo, data sets, the training loop, checkpoints and the accelerator."""
