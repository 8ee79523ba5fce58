"""Compute state: the feature catalogue and its online (Redis) and offline (PostgreSQL) paths."""
