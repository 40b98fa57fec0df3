"""Monitoring callbacks: gradients the optimizer applies, activation statistics, conditioning."""
