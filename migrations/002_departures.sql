-- Past memberships: when a member leaves, the span of their membership is kept, so that a
-- WebSocket client resuming after it still receives what happened while it was a member,
-- including its own departure.
CREATE TABLE departures (
    conversation_id text NOT NULL,
    user_id         text NOT NULL,
    joined_seq      bigint NOT NULL,
    left_seq        bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id, left_seq)
);
CREATE INDEX departures_user_idx ON departures (user_id, left_seq);
