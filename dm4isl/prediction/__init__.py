"""Prediction from a checkpoint: loading and checking it, sampling inputs, writing products, skipping finished ones."""
