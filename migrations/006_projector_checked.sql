-- The last sequence whose pushes the leader has checked: every push of an event up to it was
-- published, and so was a check naming each user's last push (see Projector.check). A new leader
-- pushes again everything after it, so a push lost just before a takeover is noticed too.
ALTER TABLE projector_checkpoints ADD COLUMN checked_seq bigint NOT NULL DEFAULT 0;
