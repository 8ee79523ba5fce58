-- Issue #23: shadow scoring. The learning loop (training/learning.py) scores the transactions of
-- its evaluation window with each challenger it fits and writes the score next to the deciding
-- model's: the challenger never decides (is_fraud, ensemble_score and model_version stay the
-- champion's). Written by the loop after its fit, over the evaluation window, not per batch
-- by the consumer; NULL where no challenger scored the transaction. A later challenger that
-- scores the same transaction overwrites both columns.
ALTER TABLE decisions ADD COLUMN shadow_score double precision;
ALTER TABLE decisions ADD COLUMN shadow_version text;
COMMENT ON COLUMN decisions.shadow_score IS
    'the latest challenger ensemble''s score of this transaction (never deciding); NULL: none';
COMMENT ON COLUMN decisions.shadow_version IS
    'the version of the challenger ensemble that wrote shadow_score';
