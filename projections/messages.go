package projections

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Messages is the read model of message history. A deleted message stays as a tombstone (empty
// body, deleted true) so that history keeps its shape; its text lives on only in the stream.
type Messages struct{ pool *pgxpool.Pool }

// NewMessages returns the messages read model on pool.
func NewMessages(pool *pgxpool.Pool) Messages { return Messages{pool: pool} }

func (Messages) apply(b *pgx.Batch, e domain.Event) error {
	// message.created arrives through applyCreated, in runs.
	if e.Type != domain.TypeMessageEdited && e.Type != domain.TypeMessageDeleted {
		return nil
	}
	c, err := changeOf(e)
	if err != nil {
		return err
	}
	c.queue(b)
	return nil
}

// change is what a message.edited or message.deleted event does to its message's row.
type change struct {
	seq     uint64 // the event's
	deleted bool
	id      string
	body    string // the new body of an edit
	at      time.Time
}

func changeOf(e domain.Event) (change, error) {
	d, err := domain.DecodeData[domain.MessageData](e)
	if err != nil {
		return change{}, err
	}
	return change{seq: e.Seq, deleted: e.Type == domain.TypeMessageDeleted, id: d.MessageID, body: d.Body, at: e.Time}, nil
}

// size is roughly the memory c takes.
func (c change) size() int { return len(c.id) + len(c.body) + 64 }

// queue queues c's statement onto b. It changes only a message created before it (seq < c.seq):
// applied in stream order, as the live projector applies it, that is every row there is, but a
// bulk load applies changes after every message (see bulk.go), and a message created after its
// edit must still stay as sent.
func (c change) queue(b *pgx.Batch) {
	update, _, args := c.statements()
	b.Queue(update, args...)
}

// queueCheck queues a statement that PostgreSQL refuses exactly when it would refuse c's own:
// both take the same values, and a value is all that either can be refused for (text with a NUL
// byte, say). A bulk load queues it in c's batch while c itself waits for the messages key, so
// that the batch is rejected, and c parked, as the live projector would.
func (c change) queueCheck(b *pgx.Batch) {
	_, check, args := c.statements()
	b.Queue(check, args...)
}

func (c change) statements() (update, check string, args []any) {
	if c.deleted {
		return `UPDATE messages SET body = '', deleted_at = $2 WHERE id = $1 AND seq < $3`,
			`SELECT $1::text, $2::timestamptz, $3::bigint`, []any{c.id, c.at, c.seq}
	}
	return `UPDATE messages SET body = $2, edited_at = $3 WHERE id = $1 AND seq < $4 AND deleted_at IS NULL`,
		`SELECT $1::text, $2::text, $3::timestamptz, $4::bigint`, []any{c.id, c.body, c.at, c.seq}
}

// applyCreated inserts a run of new messages with one statement.
func (Messages) applyCreated(b *pgx.Batch, run []created) {
	n := len(run)
	ids, convs, senders, clientIDs, bodies := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	seqs, times := make([]uint64, n), make([]time.Time, n)
	for i, c := range run {
		ids[i], convs[i], seqs[i], senders[i] = c.MessageID, c.ConversationID, c.Seq, c.SenderID
		clientIDs[i], bodies[i], times[i] = c.ClientMsgID, c.Body, c.Time
	}
	b.Queue(`INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, body, created_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
		ON CONFLICT (id) DO NOTHING`, ids, convs, seqs, senders, clientIDs, bodies, times)
}

type messageRow struct {
	ID             string     `db:"id"`
	ConversationID string     `db:"conversation_id"`
	Seq            uint64     `db:"seq"`
	SenderID       string     `db:"sender_id"`
	ClientMsgID    string     `db:"client_msg_id"`
	Body           string     `db:"body"`
	CreatedAt      time.Time  `db:"created_at"`
	EditedAt       *time.Time `db:"edited_at"`
	DeletedAt      *time.Time `db:"deleted_at"`
}

func (r messageRow) message() domain.Message {
	return domain.Message{
		ID: r.ID, ConversationID: r.ConversationID, Seq: r.Seq, SenderID: r.SenderID, ClientMsgID: r.ClientMsgID,
		Body: r.Body, CreatedAt: r.CreatedAt, EditedAt: r.EditedAt, Deleted: r.DeletedAt != nil,
	}
}

const messageColumns = `id, conversation_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted_at`

// Page asks for messages of one conversation by stream sequence. With only Before (or neither)
// it is the newest messages before it; with After it is the oldest messages after it (catching
// up); both bound the range. Pages are always returned newest first.
type Page struct {
	Before, After uint64
	Limit         int
}

// List returns a page of a conversation's messages, newest first, and whether more exist in
// the direction of the page.
func (m Messages) List(ctx context.Context, convID string, p Page) ([]domain.Message, bool, error) {
	before := p.Before
	if before == 0 {
		before = maxSeq
	}
	order := "DESC"
	if p.After > 0 {
		order = "ASC"
	}
	rows, _ := m.pool.Query(ctx, `SELECT `+messageColumns+` FROM messages
		WHERE conversation_id = $1 AND seq < $2 AND seq > $3 ORDER BY seq `+order+` LIMIT $4`,
		convID, before, p.After, p.Limit+1)
	list, err := pgx.CollectRows(rows, pgx.RowToStructByName[messageRow])
	if err != nil {
		return nil, false, readErr(err, "list messages")
	}
	more := len(list) > p.Limit
	if more {
		list = list[:p.Limit]
	}
	if order == "ASC" {
		slices.Reverse(list)
	}
	out := make([]domain.Message, len(list))
	for i, r := range list {
		out[i] = r.message()
	}
	return out, more, nil
}

// Get returns one message.
func (m Messages) Get(ctx context.Context, id string) (domain.Message, error) {
	rows, _ := m.pool.Query(ctx, `SELECT `+messageColumns+` FROM messages WHERE id = $1`, id)
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[messageRow])
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Message{}, domain.Errorf(domain.CodeNotFound, "message not found")
	}
	if err != nil {
		return domain.Message{}, readErr(err, "get message")
	}
	return r.message(), nil
}
