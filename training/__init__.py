"""Fit: training data, the model families, Ray Tune/Train jobs, evaluation and the registry."""
