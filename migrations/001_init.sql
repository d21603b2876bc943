-- Read models built by the projector from the CHAT_EVENTS stream. Nothing but the projector
-- writes these tables; they can be dropped and rebuilt from the stream at any time.

CREATE TABLE users (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    seq          bigint NOT NULL
);
-- The directory lists users by display name; prefix search uses the same index.
CREATE INDEX users_directory_idx ON users (lower(display_name) text_pattern_ops, id);

CREATE TABLE conversations (
    id                text PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('direct', 'group')),
    title             text NOT NULL DEFAULT '',
    creator_id        text NOT NULL,
    created_at        timestamptz NOT NULL,
    last_message_seq  bigint,
    last_activity_seq bigint NOT NULL,
    last_activity_at  timestamptz NOT NULL
);

CREATE TABLE members (
    conversation_id text NOT NULL,
    user_id         text NOT NULL,
    joined_seq      bigint NOT NULL,
    joined_at       timestamptz NOT NULL,
    last_read_seq   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_user_idx ON members (user_id);

CREATE TABLE messages (
    id              text PRIMARY KEY,
    conversation_id text NOT NULL,
    seq             bigint NOT NULL,
    sender_id       text NOT NULL,
    client_msg_id   text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL,
    edited_at       timestamptz,
    deleted_at      timestamptz,
    UNIQUE (conversation_id, seq)
);

-- One row per projector: the last stream sequence whose effects are in the tables above.
-- It is written in the same transaction as those effects.
CREATE TABLE projector_checkpoints (
    name       text PRIMARY KEY,
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
