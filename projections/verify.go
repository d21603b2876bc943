package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
)

// TableCheck compares one read-model table, live against rebuilt.
type TableCheck struct {
	Table                     string
	LiveRows, RebuiltRows     int64
	LiveDigest, RebuiltDigest string
}

// Equal reports whether both sides hold the same rows.
func (t TableCheck) Equal() bool {
	return t.LiveRows == t.RebuiltRows && t.LiveDigest == t.RebuiltDigest
}

// VerifyResult is what Verify found, at stream sequence Seq.
type VerifyResult struct {
	Seq    uint64
	Tables []TableCheck
}

// Equal reports whether every table matched.
func (r VerifyResult) Equal() bool {
	for _, t := range r.Tables {
		if !t.Equal() {
			return false
		}
	}
	return len(r.Tables) > 0
}

// verifiedTables are the read-model tables and the order that makes their digest stable.
// Columns that record when a row was written, not what the events say, are left out.
var verifiedTables = []struct{ name, order, drop string }{
	{"users", "id", ""},
	{"conversations", "id", ""},
	{"members", "conversation_id, user_id", ""},
	{"messages", "id", ""},
	{"departures", "conversation_id, user_id, left_seq", ""},
	{"parked_events", "seq", "parked_at"},
}

// Verify rebuilds the read models from the stream into a scratch schema and compares them,
// table by table (row counts and content digests), with the live read models at the same
// stream sequence. The live ones keep serving meanwhile; the scratch schema is dropped at
// the end. progress, when set, hears how far the rebuild is.
func Verify(ctx context.Context, live *pgxpool.Pool, stream jetstream.Stream, log *slog.Logger, progress func(done, total uint64)) (VerifyResult, error) {
	sc, err := newScratch(ctx, live, "chatd_verify")
	if err != nil {
		return VerifyResult{}, err
	}
	defer sc.drop(ctx, log)
	scratch := sc.pool
	p := NewProjector(scratch, stream, log)
	if _, err := p.checkpoint(ctx); err != nil {
		return VerifyResult{}, err
	}
	// The live read models move on while we rebuild: catch up to their checkpoint, then compare
	// inside a snapshot in which their checkpoint is still that one.
	for i := range 10 {
		target, err := liveCheckpoint(ctx, live)
		if err != nil {
			return VerifyResult{}, err
		}
		if i == 0 {
			err = sc.bulkLoad(ctx, p, target, progress)
		} else {
			err = p.catchUp(ctx, target, progress)
		}
		if err != nil {
			return VerifyResult{}, err
		}
		res, same, err := compare(ctx, live, scratch, target)
		if err != nil {
			return VerifyResult{}, err
		}
		if same {
			return res, nil
		}
	}
	return VerifyResult{}, errors.New("the live read models kept moving; verify when the chat is quieter")
}

// compare digests both sides, the live one in a repeatable-read snapshot at checkpoint target.
// same is false when the live checkpoint had moved on, and the caller should catch up again.
func compare(ctx context.Context, live, scratch *pgxpool.Pool, target uint64) (VerifyResult, bool, error) {
	tx, err := live.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return VerifyResult{}, false, readErr(err, "begin snapshot")
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	var now uint64
	if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM projector_checkpoints WHERE name = $1), 0)`, ProjectorName).Scan(&now); err != nil {
		return VerifyResult{}, false, readErr(err, "read the live checkpoint")
	}
	if now != target {
		return VerifyResult{}, false, nil
	}
	res := VerifyResult{Seq: target}
	for _, t := range verifiedTables {
		row := "to_jsonb(t)"
		if t.drop != "" {
			row = "(to_jsonb(t) - '" + t.drop + "')"
		}
		q := `SELECT count(*), coalesce(md5(string_agg(` + row + `::text, E'\n' ORDER BY ` + t.order + `)), '') FROM ` + t.name + ` t`
		c := TableCheck{Table: t.name}
		if err := tx.QueryRow(ctx, q).Scan(&c.LiveRows, &c.LiveDigest); err != nil {
			return VerifyResult{}, false, readErr(err, "digest live "+t.name)
		}
		if err := scratch.QueryRow(ctx, q).Scan(&c.RebuiltRows, &c.RebuiltDigest); err != nil {
			return VerifyResult{}, false, readErr(err, "digest rebuilt "+t.name)
		}
		res.Tables = append(res.Tables, c)
	}
	return res, true, nil
}

// catchUp applies the events after the projector's checkpoint up to and including upTo, and
// stops there (never beyond), reading the stream with an ordered consumer.
func (p *Projector) catchUp(ctx context.Context, upTo uint64, progress func(done, total uint64)) error {
	cp, err := p.checkpoint(ctx)
	if err != nil {
		return err
	}
	if cp >= upTo {
		return nil
	}
	cons, err := p.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   cp + 1,
	})
	if err != nil {
		return fmt.Errorf("create rebuild consumer from %d: %w", cp+1, err)
	}
	// Fetching and decoding the next batch overlaps with applying this one, so that this process
	// and PostgreSQL each keep a core busy.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	steps := make(chan fetched, 1)
	go p.fetchUpTo(ctx, cons, cp, upTo, steps)
	for f := range steps {
		if f.err != nil {
			return f.err
		}
		if len(f.batch.msgs) > 0 {
			if err := p.applyOrPark(ctx, f.batch); err != nil {
				return err
			}
		}
		cp = f.last
		if f.end && cp < upTo {
			if err := p.skipTo(ctx, upTo); err != nil {
				return err
			}
			cp = upTo
		}
		if progress != nil {
			progress(cp, upTo)
		}
	}
	if cp < upTo {
		return ctx.Err()
	}
	return nil
}

// fetched is one batch read by fetchUpTo: its events, the last sequence read, and whether
// nothing more can come up to the target.
type fetched struct {
	batch decoded
	last  uint64
	end   bool
	err   error
}

// fetchUpTo reads and decodes the events after `after` up to and including upTo in batches,
// sends them to out and closes it; it stops at the first error (which it sends) or when ctx ends.
// It reads with a continuous pull, so that the server delivers the next events while this
// goroutine decodes and the caller applies (fetching batch by batch left it idle meanwhile).
func (p *Projector) fetchUpTo(ctx context.Context, cons jetstream.Consumer, after, upTo uint64, out chan<- fetched) {
	defer close(out)
	send := func(f fetched) bool {
		select {
		case out <- f:
			return f.err == nil && !f.end
		case <-ctx.Done():
			return false
		}
	}
	// Events up to upTo may have been deleted from the stream (the one at upTo too), or the
	// stream may now begin after them: then fewer come than upTo-after, and waiting for the rest
	// would stall. end is set once nothing more can come up to upTo: the stream holds nothing
	// after what came (counted when the consumer was created, and with each message), or what
	// came is past upTo.
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		send(fetched{last: after, end: true})
		return
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * p.batchSize))
	if err != nil {
		send(fetched{err: fmt.Errorf("rebuild consume: %w", err)})
		return
	}
	defer it.Stop()
	defer context.AfterFunc(ctx, it.Stop)()
	// A watchdog rather than a timeout on each Next, which would allocate a timer per event.
	var stalled atomic.Bool
	watchdog := time.AfterFunc(fetchStall, func() { stalled.Store(true); it.Stop() })
	defer watchdog.Stop()
	for f := (fetched{last: after}); ; f = (fetched{last: f.last}) {
		f.batch = newDecoded(p.batchSize)
		for len(f.batch.msgs) < p.batchSize && f.last < upTo && !f.end {
			m, err := it.Next()
			if stalled.Load() {
				f.err = fmt.Errorf("rebuild stalled at %d of %d: nothing came for %v", f.last, upTo, fetchStall)
				break
			}
			if err != nil {
				f.err = fmt.Errorf("rebuild read: %w", err)
				break
			}
			watchdog.Reset(fetchStall)
			meta, err := m.Metadata()
			if err != nil {
				f.err = fmt.Errorf("rebuild metadata: %w", err)
				break
			}
			if meta.Sequence.Stream > upTo {
				f.end = true
				break
			}
			if f.err = p.add(&f.batch, m, meta); f.err != nil {
				break
			}
			f.last = meta.Sequence.Stream
			f.end = meta.NumPending == 0
		}
		if f.last >= upTo {
			f.end = true
		}
		// The caller may take its time over the previous batch: that is no stall.
		watchdog.Stop()
		if !send(f) {
			return
		}
		watchdog.Reset(fetchStall)
	}
}

// fetchStall is how long a catch-up waits for the next event it knows the stream holds before it
// gives up.
const fetchStall = 5 * time.Second

// skipTo moves the checkpoint to seq, applying nothing, when the stream holds no event after the
// checkpoint up to seq. None can come later either once the stream's last sequence has reached
// seq (appends get higher sequences); if it has not, the stream is not the one the checkpoint
// was taken on, and nothing is skipped.
func (p *Projector) skipTo(ctx context.Context, seq uint64) error {
	info, err := p.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	if info.State.LastSeq < seq {
		return fmt.Errorf("the stream ends at %d, before %d: was it recreated?", info.State.LastSeq, seq)
	}
	if _, err := p.pool.Exec(ctx, `UPDATE projector_checkpoints SET seq = $2, updated_at = now() WHERE name = $1 AND seq < $2`, p.name, seq); err != nil {
		return fmt.Errorf("move checkpoint %s past deleted events to %d: %w", p.name, seq, err)
	}
	p.advance(seq)
	return nil
}
