"""Tensor operations shared by training, rollouts and evaluation."""
