-- Identifiers compare byte by byte. They are opaque ASCII (generated ids, or host-chosen user
-- ids), so a linguistic collation only costs: without it PostgreSQL compares with memcmp and
-- sorts with abbreviated keys, which makes building the messages keys after a replay's bulk
-- load about a third faster (docs/benchmarks.md), and every key look-up cheaper. Columns that
-- are joined with one another must share a collation, so all of them change together.
-- Changing only the collation rewrites no table; the indexes on these columns are rebuilt.
ALTER TABLE users ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE conversations ALTER COLUMN id TYPE text COLLATE "C",
                          ALTER COLUMN creator_id TYPE text COLLATE "C";
ALTER TABLE members ALTER COLUMN conversation_id TYPE text COLLATE "C",
                    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE messages ALTER COLUMN id TYPE text COLLATE "C",
                     ALTER COLUMN conversation_id TYPE text COLLATE "C",
                     ALTER COLUMN sender_id TYPE text COLLATE "C",
                     ALTER COLUMN client_msg_id TYPE text COLLATE "C";
ALTER TABLE departures ALTER COLUMN conversation_id TYPE text COLLATE "C",
                       ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE parked_events ALTER COLUMN conversation_id TYPE text COLLATE "C";
