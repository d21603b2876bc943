package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Poison events: an event that PostgreSQL rejects (a statement error, not an outage) would stop
// every conversation if the projector only retried. Instead the batch is applied again one
// event at a time; an event rejected rejectAttempts times in a row is parked in parked_events
// with the error, and so are the later events of its conversation, so that conversation is
// never shown out of order while all others go on. Operators see parked events in the table,
// the log, /readyz and the chatd_projector_errors_total metric.

// parkedBetween returns the sequences of the parked events after `after`, up to upTo. Those
// events were never pushed: a resume does not replay them, a new leader does not push them again.
func parkedBetween(ctx context.Context, q querier, after, upTo uint64) (map[uint64]bool, error) {
	rows, _ := q.Query(ctx, `SELECT seq FROM parked_events WHERE seq > $1 AND seq <= $2`, after, upTo)
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[uint64])
	if err != nil {
		return nil, fmt.Errorf("read parked events: %w", err)
	}
	parked := make(map[uint64]bool, len(seqs))
	for _, s := range seqs {
		parked[s] = true
	}
	return parked, nil
}

// rejectAttempts is how often a lone event is tried before it is parked.
const rejectAttempts = 3

// rejected reports whether err is about the event itself, so that the same event would be
// refused again however often it is tried: its data does not fit the read models (errUnusable),
// or PostgreSQL refuses its values (a data exception, class 22, or a constraint, class 23).
// Anything else (PostgreSQL or the network down, a lock or statement timeout, a deadlock, a
// full disk, a statement that does not match the schema) is the projector's or the database's
// state: it is retried with backoff, and parks nothing.
func rejected(err error) bool {
	if errors.Is(err, errUnusable) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	class := pgErr.Code[:min(2, len(pgErr.Code))]
	return class == "22" || class == "23"
}

// errUnusable marks an event whose data cannot be applied: a field of the wrong type, say,
// written past the command side by a bug or an older version.
var errUnusable = errors.New("the event's data cannot be applied")

// applyOrPark applies a batch; when PostgreSQL rejects it, it finds and parks the culprit.
func (p *Projector) applyOrPark(ctx context.Context, batch decoded) error {
	if p.bulk != nil && p.bulk.mustIndex() {
		if err := p.bulk.index(ctx, p.pool); err != nil {
			return err
		}
	}
	err := p.applyBatch(ctx, batch)
	if err == nil || !rejected(err) {
		return err
	}
	p.log.Warn("a batch was refused; applying it event by event", "events", len(batch.msgs), "err", err)
	if p.bulk != nil {
		// One at a time, events are applied the live projector's way (see applyBatch), which
		// needs the indexes that a bulk load builds at its end.
		if err := p.bulk.index(ctx, p.pool); err != nil {
			return err
		}
	}
	for i, m := range batch.msgs {
		var last error
		for range rejectAttempts {
			if last = p.applyBatch(ctx, batch.one(i)); last == nil || !rejected(last) {
				break
			}
		}
		if last == nil {
			continue
		}
		if !rejected(last) {
			return last
		}
		if err := p.park(ctx, m, last); err != nil {
			return err
		}
	}
	return nil
}

// park stores a rejected event in parked_events and moves the checkpoint past it, in one
// transaction.
func (p *Projector) park(ctx context.Context, m streams.Stored, cause error) error {
	e, _ := domain.DecodeEvent(m.Data) // it decoded before; only its application failed
	e.Seq = m.Seq
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin parking: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	// As in applyBatch: tables rebuilt and switched over since the event was rejected may well
	// accept it, so it is applied again from the new checkpoint rather than parked in them.
	cp, err := p.lockCheckpoint(ctx, tx)
	if err != nil {
		return err
	}
	if e.Seq <= cp {
		return nil // another projector got past it
	}
	b := &pgx.Batch{}
	if err := p.queuePark(ctx, b, m, e.ConversationID, cause.Error()); err != nil {
		return err
	}
	b.Queue(`UPDATE projector_checkpoints SET seq = $2, updated_at = now() WHERE name = $1`, p.name, e.Seq)
	b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, strconv.FormatUint(e.Seq, 10))
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("park event %d: %w", e.Seq, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit parking of %d: %w", e.Seq, err)
	}
	if e.ConversationID != "" {
		p.parkedConvs[e.ConversationID] = true
	}
	p.Metrics.Parked(p.parked.Add(1))
	p.Metrics.ProjectorFailed()
	p.log.Error("parked an event that cannot be applied; its conversation's later events wait with it",
		"seq", e.Seq, "conversation", e.ConversationID, "err", cause)
	p.advance(e.Seq)
	return nil
}

// queuePark queues the parking of m. A catch-up reads events without their subjects (see
// streams.ReadRange): parking, which is rare, looks the subject up.
func (p *Projector) queuePark(ctx context.Context, b *pgx.Batch, m streams.Stored, conversationID, reason string) error {
	if m.Subject == "" {
		raw, err := p.stream.GetMsg(ctx, m.Seq)
		if err != nil {
			return fmt.Errorf("subject of event %d to park: %w", m.Seq, err)
		}
		m.Subject = raw.Subject
	}
	b.Queue(`INSERT INTO parked_events (seq, subject, conversation_id, error, event) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (seq) DO NOTHING`, m.Seq, m.Subject, conversationID, reason, m.Data)
	return nil
}

// loadParked reads which conversations have parked events.
func (p *Projector) loadParked(ctx context.Context) error {
	rows, _ := p.pool.Query(ctx, `SELECT DISTINCT conversation_id FROM parked_events WHERE conversation_id <> ''`)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read parked events: %w", err)
	}
	p.parkedConvs = make(map[string]bool, len(ids))
	for _, id := range ids {
		p.parkedConvs[id] = true
	}
	var n int64
	if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM parked_events`).Scan(&n); err != nil {
		return fmt.Errorf("count parked events: %w", err)
	}
	p.parked.Store(n)
	p.Metrics.Parked(n)
	return nil
}

// Parked is the number of parked events.
func (p *Projector) Parked() int64 { return p.parked.Load() }
