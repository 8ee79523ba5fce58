"""The online feature store: :mod:`.store` (interface + Redis implementation), :mod:`.engine`
(the batch's aggregates computed in the caller), :mod:`.decisions` (the stream's decisions
kept for ``GET /predict``), :mod:`.shards` (users spread over several Redis instances), and the
Redis scripts in ``lua/``."""

from features.online.store import (
    FEATURE_NAMES,
    RESERVED_CHARACTERS,
    FeatureStore,
    FeatureStoreError,
    OnlineStore,
    RedisOnlineStore,
    records_features,
)

__all__ = [
    "FEATURE_NAMES",
    "RESERVED_CHARACTERS",
    "FeatureStore",
    "FeatureStoreError",
    "OnlineStore",
    "RedisOnlineStore",
    "records_features",
]
