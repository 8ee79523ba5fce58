"""Observe fraudray: metric definitions and the Prometheus / Alertmanager configuration."""
