-- Issue #23: decisions.shadow_score / shadow_version are written by the stream from now on. While
-- the learning loop has a challenger installed as shadow in the Serve scorer, every decision
-- gets the challenger ensemble's score of the same feature row, at decision time, beside the
-- champion's (which alone decides). The loop no longer writes them after its round (0003).
COMMENT ON COLUMN decisions.shadow_score IS
    'the shadow challenger ensemble''s score of this transaction at decision time (never deciding); NULL: no challenger installed';
COMMENT ON COLUMN decisions.shadow_version IS
    'the version of the challenger ensemble that wrote shadow_score';
