"""The one root exception of fraudray and the subclasses that know their HTTP status."""

from __future__ import annotations


class FraudrayError(Exception):
    """Root of every error fraudray raises on purpose."""

    http_status: int = 500


class StackError(FraudrayError):
    """A local-stack service could not be installed, started, reached or stopped."""


class Unauthorized(FraudrayError):
    http_status = 401


class PayloadTooLarge(FraudrayError):
    http_status = 413


class UnknownUser(FraudrayError):
    http_status = 404


class ModelNotReady(FraudrayError):
    http_status = 503


class StoreUnavailable(FraudrayError):
    http_status = 503


class DecodeError(FraudrayError):
    """A record could not be decoded as a transaction."""

    http_status = 422
