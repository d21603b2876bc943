package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A bulk load (scratch.bulkLoad: the first catch-up of a rebuild or a verify) fills tables that
// nobody reads until it ends, so it takes shortcuts that the live projector must not. All of them
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
//  2. No index on messages. The load begins with the secondary indexes of every table dropped
//     and the primary key of messages too (scratch.bulkLoad), and builds them once at the end
//     (index): building an index over a million rows costs a fraction of keeping it up to date
//     row by row, and for the messages key, half the cost of the whole load. New messages are
//     copied into messages (COPY, no conflict check), and edits and deletes, which find their
//     message by id, wait in memory for the key. At the end:
//       - a message id copied twice (a send stored twice) fails building the key; then every
//         copy but the first is deleted (the live projector's INSERT … ON CONFLICT DO NOTHING
//         keeps the first) and the key is built again;
//       - the waiting changes are applied in stream order. Each changes only a message created
//         before it (change.queue), as it would have when applied in its place, so an edit
//         stored before its message still changes nothing. A change that PostgreSQL would
//         refuse is caught in its own batch instead (change.queueCheck), and parked.
//     The indexes are built earlier, and the load goes on with them, as soon as a batch must be
//     applied the live projector's way, one event at a time (PostgreSQL rejected it: a parked
//     event must keep the live projector's error text), or when the waiting changes would take
//     too much memory.
//  3. COPY with the key. After the indexes are built, the new messages of a batch are still
//     copied rather than inserted with INSERT … ON CONFLICT (id) DO NOTHING, before the batch's
//     other statements. COPY has no ON CONFLICT: a message id already in the table or twice in
//     the batch fails it, and the batch is applied again the live projector's way. Copying
//     first changes nothing when no edit or delete in the batch comes before the creation of
//     its message (copyKeepsOrder); otherwise the batch is inserted the live way too.
//
// The pending updates and changes live in memory while the checkpoint moves past them, so a bulk
// load that fails leaves tables that are no rebuild of anything: its callers drop them.

// maxPendingConversations bounds the memory of deferred activity: past it, everything pending is
// written in the next batch.
const maxPendingConversations = 50_000

// maxWaitingChanges bounds the memory of the edits and deletes that wait for the messages key, in
// bytes: past it, the indexes are built before the next batch. A variable for tests.
var maxWaitingChanges = 64 << 20

// bulkLoad is the state of a bulk load; Projector.bulk is set to one for the load's duration.
type bulkLoad struct {
	models []readModel
	// pending is what committed batches deferred: the tables do not have it yet.
	pending activity
	// build holds the statements that build the indexes the load began without, nil once built.
	build []string
	// changes are the edits and deletes of committed batches that wait for the messages key,
	// in stream order, and changeBytes roughly their size.
	changes     []change
	changeBytes int
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
	changes []change        // the edits and deletes that wait for the messages key
}

// newBulkLoad returns the state of a bulk load of the read models in models into tables whose
// indexes build builds, messages' primary key among them.
func newBulkLoad(models []readModel, build []string) *bulkLoad {
	l := &bulkLoad{pending: activity{}, build: build}
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

// indexed reports whether the indexes are built, messages' primary key among them.
func (l *bulkLoad) indexed() bool { return l.build == nil }

// begin starts a batch of n events, queued onto b; useCopy says whether its new messages may be
// copied, which they must be while messages has no key.
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
	for _, c := range tx.changes {
		l.changes = append(l.changes, c)
		l.changeBytes += c.size()
	}
}

// abort forgets the batch, whose transaction did not commit.
func (l *bulkLoad) abort() { l.tx = nil }

// finish writes everything pending, in a transaction of its own, and builds the indexes.
func (l *bulkLoad) finish(ctx context.Context, p *Projector) error {
	if len(l.pending) > 0 {
		b := &pgx.Batch{}
		l.begin(b, false, 0)
		l.tx.flushAll(b, l.pending)
		err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
		if err != nil {
			l.abort()
			return fmt.Errorf("write the conversations' last activity and read markers: %w", err)
		}
		l.commit()
	}
	return l.index(ctx, p.pool)
}

// index builds the indexes the load began without, then applies the changes that waited for
// them; it does nothing once they are built.
func (l *bulkLoad) index(ctx context.Context, pool *pgxpool.Pool) error {
	if l.indexed() {
		return nil
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return readErr(err, "connect to build indexes")
	}
	defer conn.Release()
	// Sorting in memory is what makes building fast; the session's setting ends with it.
	if _, err := conn.Exec(ctx, "SET maintenance_work_mem = '256MB'"); err != nil {
		return err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "RESET maintenance_work_mem") //nolint:errcheck // best effort
	deduplicated := false
	for _, stmt := range l.build {
		_, err := conn.Exec(ctx, stmt)
		if isUniqueViolation(err) && !deduplicated {
			// Only messages takes rows without a key: keep the first copy of each message.
			deduplicated = true
			if _, err := conn.Exec(ctx, `DELETE FROM messages m USING messages first WHERE first.id = m.id AND first.seq < m.seq`); err != nil {
				return fmt.Errorf("delete messages stored twice: %w", err)
			}
			_, err = conn.Exec(ctx, stmt)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for chunk := range slices.Chunk(l.changes, rebuildBatch) {
			b := &pgx.Batch{}
			for _, c := range chunk {
				c.queue(b)
			}
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("apply %d edits and deletes: %w", len(l.changes), err)
	}
	l.build, l.changes, l.changeBytes = nil, nil, 0
	return nil
}

// mustIndex reports whether the waiting changes take too much memory.
func (l *bulkLoad) mustIndex() bool { return l.changeBytes > maxWaitingChanges }

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

// copiedMessages is Messages in a bulk load: new messages are copied when the batch allows it,
// and changes wait while messages has no key.
type copiedMessages struct {
	Messages
	load *bulkLoad
}

func (m copiedMessages) apply(b *pgx.Batch, e domain.Event) error {
	if m.load.indexed() || (e.Type != domain.TypeMessageEdited && e.Type != domain.TypeMessageDeleted) {
		return m.Messages.apply(b, e)
	}
	c, err := changeOf(e)
	if err != nil {
		return err
	}
	c.queueCheck(b)
	m.load.tx.changes = append(m.load.tx.changes, c)
	return nil
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

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
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
	if isUniqueViolation(err) {
		return errCopyConflict
	}
	if err != nil {
		return fmt.Errorf("copy %d messages from %d: %w", len(rows), rows[0].Seq, err)
	}
	return nil
}
