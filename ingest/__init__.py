"""Move data: the Avro schema and serde, producers, the Ray consumer actors, sinks and the DLQ."""
