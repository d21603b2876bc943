-- The leader's term: a projector that takes the lead increments it, and every batch it commits
-- checks it under the checkpoint's row lock. A leader that lost its lock but has not noticed yet
-- then commits nothing more, so it cannot publish pushes interleaved with its successor's.
-- Adding a column with a constant default rewrites nothing.
ALTER TABLE projector_checkpoints ADD COLUMN term bigint NOT NULL DEFAULT 0;
