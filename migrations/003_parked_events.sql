-- Events the projector could not apply (PostgreSQL rejected them), and the events of the same
-- conversation after them, which wait here too so that no conversation is shown out of order.
-- Operators inspect them here, in the projector metrics and in /readyz.
CREATE TABLE parked_events (
    seq             bigint PRIMARY KEY,
    subject         text NOT NULL,
    conversation_id text NOT NULL DEFAULT '',
    error           text NOT NULL,
    event           bytea NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_events_conversation_idx ON parked_events (conversation_id);
