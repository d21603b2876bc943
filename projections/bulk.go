package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// A bulk load (scratch.bulkLoad: the first catch-up of a rebuild or a verify) fills tables that
// nobody reads until it ends, so it takes two shortcuts that the live projector must not. Both
// leave exactly the rows that applying the events one batch at a time leaves, and
// TestBulkLoadMatchesLiveProjector compares the two.
//
//  1. Deferred activity. Every run of message.created events moves its conversations' last
//     message and its senders' read markers (Conversations.applyCreated): two UPDATEs over
//     thousands of rows per batch. A bulk load merges them in memory instead, keeping per
//     conversation its newest message and per sender their newest message there, and writes
//     them once. Both UPDATEs only ever move a value forward to a newer sequence, so writing
//     the newest value once is the same as writing every value in turn, provided nothing reads
//     or changes those rows in between: before an event that touches a conversation's
//     conversations or members rows (its creation, a member joining or leaving, a read marker,
//     whose clamp reads the conversation's last activity), that conversation's pending updates
//     are written first, in the same transaction; so is everything pending before an event of
//     a type this file does not know, when too much is pending, and at the end of the load.
//  2. COPY. The new messages of a batch are copied into messages instead of inserted with
//     INSERT … ON CONFLICT (id) DO NOTHING, before the batch's other statements. COPY has no
//     ON CONFLICT: a message id already in the table or twice in the batch (a send stored
//     twice) fails it, and the batch is applied again the live projector's way. Copying first
//     changes nothing when no edit or delete in the batch comes before the creation of its
//     message (copyKeepsOrder); otherwise the batch is inserted the live way too. So are the
//     events of a rejected batch when they are applied one at a time (applyOrPark), so that a
//     parked event keeps the live projector's error text.
//
// The pending updates live in memory while the checkpoint moves past them, so a bulk load that
// fails leaves tables that are no rebuild of anything: its callers drop them.

// maxPendingConversations bounds the memory of deferred activity: past it, everything pending is
// written in the next batch.
const maxPendingConversations = 50_000

// bulkLoad is the state of a bulk load; Projector.bulk is set to one for the load's duration.
type bulkLoad struct {
	models []readModel
	// pending is what committed batches deferred: the tables do not have it yet.
	pending activity
	// tx is the batch being applied, nil between batches.
	tx *bulkTx
}

// bulkTx is what one batch's transaction adds to the deferred activity. It becomes part of
// bulkLoad.pending only when the transaction commits, so a rejected batch that is applied again
// event by event (applyOrPark) leaves no trace of its first attempt.
type bulkTx struct {
	staged  activity        // deferred by this batch
	flushed map[string]bool // conversations whose pending updates this batch wrote
	all     bool            // this batch wrote everything pending
	copy    bool            // this batch copies its new messages
	rows    []created       // the new messages to copy
}

// newBulkLoad returns the state of a bulk load of the read models in models.
func newBulkLoad(models []readModel) *bulkLoad {
	l := &bulkLoad{pending: activity{}}
	for _, m := range models {
		switch m := m.(type) {
		case Conversations:
			l.models = append(l.models, deferredConversations{m, l})
		case Messages:
			l.models = append(l.models, copiedMessages{m, l})
		default:
			l.models = append(l.models, m)
		}
	}
	return l
}

// begin starts a batch of n events, queued onto b; useCopy says whether its new messages may be
// copied.
func (l *bulkLoad) begin(b *pgx.Batch, useCopy bool, n int) {
	l.tx = &bulkTx{staged: activity{}, flushed: map[string]bool{}, copy: useCopy}
	if useCopy {
		l.tx.rows = make([]created, 0, n)
	}
	if len(l.pending) > maxPendingConversations {
		l.tx.flushAll(b, l.pending)
	}
}

// commit makes the batch's deferred activity pending, once its transaction committed.
func (l *bulkLoad) commit() {
	tx := l.tx
	l.tx = nil
	if tx.all {
		clear(l.pending)
	}
	for id := range tx.flushed {
		delete(l.pending, id)
	}
	l.pending.merge(tx.staged)
}

// abort forgets the batch, whose transaction did not commit.
func (l *bulkLoad) abort() { l.tx = nil }

// finish writes everything pending, in a transaction of its own.
func (l *bulkLoad) finish(ctx context.Context, p *Projector) error {
	if len(l.pending) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	l.begin(b, false, 0)
	l.tx.flushAll(b, l.pending)
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
	if err != nil {
		l.abort()
		return fmt.Errorf("write the conversations' last activity and read markers: %w", err)
	}
	l.commit()
	return nil
}

// flush queues conversation id's pending and staged updates onto b.
func (tx *bulkTx) flush(b *pgx.Batch, pending activity, id string) {
	var out activity
	if c := pending[id]; c != nil && !tx.all && !tx.flushed[id] {
		out = activity{id: c.clone()}
	}
	tx.flushed[id] = true
	if s := tx.staged[id]; s != nil {
		if out == nil {
			out = activity{}
		}
		out.merge(activity{id: s})
		delete(tx.staged, id)
	}
	out.queue(b)
}

// flushAll queues every pending and staged update onto b.
func (tx *bulkTx) flushAll(b *pgx.Batch, pending activity) {
	out := activity{}
	if !tx.all {
		for id, c := range pending {
			if !tx.flushed[id] {
				out[id] = c.clone()
			}
		}
	}
	tx.all = true
	out.merge(tx.staged)
	clear(tx.staged)
	out.queue(b)
}

// deferredConversations is Conversations in a bulk load: runs of message.created are deferred.
type deferredConversations struct {
	Conversations
	load *bulkLoad
}

func (c deferredConversations) applyCreated(_ *pgx.Batch, run []created) {
	c.load.tx.staged.add(run)
}

func (c deferredConversations) apply(b *pgx.Batch, e domain.Event) error {
	tx := c.load.tx
	switch e.Type {
	case domain.TypeUserCreated, domain.TypeUserUpdated, domain.TypeMessageEdited, domain.TypeMessageDeleted:
		// Conversations ignores them: they write no conversations or members row.
	case domain.TypeMemberJoined, domain.TypeMemberLeft, domain.TypeReadUpdated:
		// They read and write the rows of their conversation only.
		tx.flush(b, c.load.pending, e.ConversationID)
	case domain.TypeConversationCreated:
		// It writes the rows of the conversation it carries.
		conv, err := domain.ConversationOf(e)
		if err != nil {
			return err
		}
		tx.flush(b, c.load.pending, conv.ID)
	default:
		tx.flushAll(b, c.load.pending)
	}
	return c.Conversations.apply(b, e)
}

// copiedMessages is Messages in a bulk load: new messages are copied when the batch allows it.
type copiedMessages struct {
	Messages
	load *bulkLoad
}

func (m copiedMessages) applyCreated(b *pgx.Batch, run []created) {
	if tx := m.load.tx; tx.copy {
		tx.rows = append(tx.rows, run...)
		return
	}
	m.Messages.applyCreated(b, run)
}

// copyKeepsOrder reports whether copying a batch's new messages before its other statements
// leaves the rows that applying them in stream order leaves: the statements of other events
// touch no messages row except those of message.edited and message.deleted, which touch their
// message's row only, so it does unless one of them comes before its message's creation in the
// same batch. Message ids created twice are left to COPY, which refuses them.
func copyKeepsOrder(events []domain.Event, data []messageData) bool {
	var touched map[string]bool // messages edited or deleted so far
	for i, e := range events {
		switch e.Type {
		case domain.TypeMessageEdited, domain.TypeMessageDeleted:
			d, err := domain.DecodeData[domain.MessageData](e)
			if err != nil {
				return false // the live way reports it
			}
			if touched == nil {
				touched = map[string]bool{}
			}
			touched[d.MessageID] = true
		case domain.TypeMessageCreated:
			if touched[data[i].MessageID] {
				return false
			}
		}
	}
	return true
}

// errCopyConflict is a batch's COPY refused because a message id was already there.
var errCopyConflict = errors.New("a copied message id is already in messages")

// copyMessages copies rows into messages, as Messages.applyCreated would insert them into an
// empty table.
func copyMessages(ctx context.Context, tx pgx.Tx, rows []created) error {
	cols := []string{"id", "conversation_id", "seq", "sender_id", "client_msg_id", "body", "created_at"}
	values := make([]any, len(cols))
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"messages"}, cols, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		c := &rows[i]
		values[0], values[1], values[2], values[3] = c.MessageID, c.ConversationID, c.Seq, c.SenderID
		values[4], values[5], values[6] = c.ClientMsgID, c.Body, c.Time
		return values, nil
	}))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return errCopyConflict
	}
	if err != nil {
		return fmt.Errorf("copy %d messages from %d: %w", len(rows), rows[0].Seq, err)
	}
	return nil
}
