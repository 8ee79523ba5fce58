"""The transaction simulator: a population of users and merchants (``population``, ``world``),
fraud scenarios (``scenarios``), columnar batches (``batch``) and the event-time engine
(``simulate``). It only makes records; sending them to Kafka is ``ingest.producer``'s job."""

from ingest.simulator.simulate import (
    DEMO_EVENTS_PER_S,
    SimConfig,
    Simulator,
    demo_transactions,
    parse_mix,
    retag,
    write_parquet,
)

__all__ = [
    "DEMO_EVENTS_PER_S",
    "SimConfig",
    "Simulator",
    "demo_transactions",
    "parse_mix",
    "retag",
    "write_parquet",
]
