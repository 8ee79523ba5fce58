"""Operate fraudray: settings, the local stack, Ray bring-up and the `fraudray` CLI."""
