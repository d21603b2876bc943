package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/chatd-dev/chatd/streams"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
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
func Verify(ctx context.Context, live *pgxpool.Pool, nc *nats.Conn, stream jetstream.Stream, log *slog.Logger, progress func(done, total uint64)) (VerifyResult, error) {
	// Not beside a rebuild: a switch-over in the middle of the comparison would have it read
	// the new tables (names resolve in the current catalog, not the snapshot) and report
	// differences that do not exist.
	unlock, err := lockRebuild(ctx, live)
	if err != nil {
		return VerifyResult{}, err
	}
	defer unlock()
	sc, err := newScratch(ctx, live, "chatd_verify")
	if err != nil {
		return VerifyResult{}, err
	}
	defer sc.drop(ctx, log)
	scratch := sc.pool
	p := NewProjector(scratch, nc, stream, log)
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
// stops there (never beyond).
func (p *Projector) catchUp(ctx context.Context, upTo uint64, progress func(done, total uint64)) error {
	cp, err := p.checkpoint(ctx)
	if err != nil {
		return err
	}
	if cp >= upTo {
		return nil
	}
	// Fetching and decoding the next batch overlaps with applying this one, so that this process
	// and PostgreSQL each keep a core busy.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	steps := make(chan fetched, 1)
	go p.fetchUpTo(ctx, cp, upTo, steps)
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
		if progress != nil {
			progress(cp, upTo)
		}
	}
	if cp < upTo {
		return ctx.Err()
	}
	if p.Position() < upTo {
		// The last events up to upTo were deleted from the stream: the checkpoint moves anyway.
		return p.skipTo(ctx, upTo)
	}
	return nil
}

// fetched is one batch read by fetchUpTo: its events, and the last sequence read (which it may
// not hold: deleted events).
type fetched struct {
	batch decoded
	last  uint64
	err   error
}

// fetchUpTo reads and decodes the events after `after` up to and including upTo in batches,
// sends them to out and closes it; it stops at the first error (which it sends) or when ctx
// ends. Its reads run ahead of the caller's applying by a batch or two (see streams.ReadRange).
func (p *Projector) fetchUpTo(ctx context.Context, after, upTo uint64, out chan<- fetched) {
	defer close(out)
	send := func(f fetched) error {
		select {
		case out <- f:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := streams.ReadRange(ctx, p.nc, p.stream.CachedInfo().Config.Name, after+1, upTo, p.batchSize, func(msgs []streams.Stored, through uint64) error {
		f := fetched{batch: newDecoded(len(msgs)), last: through}
		f.batch.pending = upTo - through
		for _, m := range msgs {
			if err := p.add(&f.batch, m); err != nil {
				return err
			}
		}
		return send(f)
	})
	if err != nil && ctx.Err() == nil {
		_ = send(fetched{err: fmt.Errorf("read the stream: %w", err)})
	}
}

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
