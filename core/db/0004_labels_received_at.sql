-- Issue #23: when a label *reached* fraudray, next to when it was given (labelled_at, the
-- label's own time, which a replay or back-fill sets years in the past). The learning loop
-- counts new labels by received_at and anchors its rolling window at the event time of the
-- newest labelled transaction, so a replayed data set triggers rounds and gets a window over
-- its own time. Filled by the column default: the consumer's label sink inserts the LabelRow
-- columns only (ingest/sinks.py). Rows labelled before this migration get its time.
ALTER TABLE labels ADD COLUMN received_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX labels_received_at ON labels (received_at);
COMMENT ON COLUMN labels.received_at IS
    'when the label reached PostgreSQL (the sink''s transaction time); labelled_at is the label''s own time';
