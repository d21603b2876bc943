package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/migrations"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A rebuild replays the whole stream into fresh tables in a schema of their own while the live
// read models keep serving, then swaps the fresh tables in for the live ones in one transaction:
//
//  1. catch up: apply the stream from sequence 1 into the new schema until it is close behind the
//     live checkpoint;
//  2. switch: lock every live table (readers and the live projector wait, for as long as the last
//     few events take), catch up to the live checkpoint exactly, move the live tables into an
//     "old" schema and the rebuilt ones into the live schema, commit.
//
// Moving a table (ALTER TABLE … SET SCHEMA) invalidates the plans PostgreSQL cached for it, so
// every connection's prepared statements resolve the table names again, to the rebuilt tables,
// on their next use: no node needs to reconnect. The live projector notices the switch (its
// checkpoint table is another table now) and restarts from the rebuilt checkpoint, which is the
// one it had.

// RebuildResult is what a rebuild did.
type RebuildResult struct {
	Seq       uint64        `json:"seq"`                  // the stream sequence the rebuilt tables took over at
	Events    uint64        `json:"events"`               // events applied
	Took      time.Duration `json:"took"`                 // from start to switch
	OldSchema string        `json:"old_schema,omitempty"` // where the replaced tables are, when kept
}

// RebuildOptions tune a rebuild.
type RebuildOptions struct {
	// KeepOld keeps the replaced tables in a schema of their own instead of dropping them.
	KeepOld bool
	// Progress, when set, hears how far the rebuild is.
	Progress func(done, total uint64)
	// LockTimeout bounds each wait for the live tables' locks at the switch (default 5s).
	LockTimeout time.Duration
}

// rebuildBatch is the events per transaction of a rebuild: nobody reads the new tables yet, so
// bigger transactions than the live projector's only save round trips.
const rebuildBatch = 5000

// switchLag is how far behind the live checkpoint the rebuild may be when it locks the live
// tables: what is left is applied while readers wait.
const switchLag = 2000

// Rebuild rebuilds the live read models from the stream and switches over to them.
func Rebuild(ctx context.Context, live *pgxpool.Pool, nc *nats.Conn, stream jetstream.Stream, log *slog.Logger, opts RebuildOptions) (RebuildResult, error) {
	start := time.Now()
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 5 * time.Second
	}
	unlock, err := lockRebuild(ctx, live)
	if err != nil {
		return RebuildResult{}, err
	}
	defer unlock()
	liveSchema, err := schemaOf(ctx, live, "projector_checkpoints")
	if err != nil {
		return RebuildResult{}, err
	}
	sc, err := newScratch(ctx, live, "chatd_rebuild")
	if err != nil {
		return RebuildResult{}, err
	}
	switched := false
	defer func() {
		if !switched {
			sc.drop(ctx, log)
		} else {
			sc.pool.Close()
		}
	}()
	p := NewProjector(sc.pool, nc, stream, log)
	p.batchSize = rebuildBatch
	// 1. Catch up while the live read models move on.
	for first := true; ; first = false {
		target, err := liveCheckpoint(ctx, live)
		if err != nil {
			return RebuildResult{}, err
		}
		catchUp := p.catchUp
		if first {
			catchUp = func(ctx context.Context, upTo uint64, progress func(done, total uint64)) error {
				return sc.bulkLoad(ctx, p, upTo, progress)
			}
		}
		if err := catchUp(ctx, target, opts.Progress); err != nil {
			return RebuildResult{}, err
		}
		now, err := liveCheckpoint(ctx, live)
		if err != nil {
			return RebuildResult{}, err
		}
		if now-target <= switchLag {
			break
		}
	}
	// 2. Switch, retrying when the locks cannot be had in time.
	var res RebuildResult
	for attempt := 1; ; attempt++ {
		res, err = switchOver(ctx, live, liveSchema, sc.schema, p, opts)
		if err == nil || attempt == 5 || ctx.Err() != nil || !retryableSwitch(err) {
			break
		}
		log.Warn("rebuild switch-over failed; trying again", "attempt", attempt, "err", err)
	}
	if err != nil {
		return RebuildResult{}, err
	}
	switched = true
	_, res.Events = p.Stats()
	res.Took = time.Since(start)
	if !opts.KeepOld {
		if err := dropReplaced(context.WithoutCancel(ctx), live, res.OldSchema); err != nil {
			log.Warn("replaced read models not dropped", "schema", res.OldSchema, "err", err)
		} else {
			res.OldSchema = ""
		}
	}
	return res, nil
}

// lockRebuild takes the session advisory lock that keeps rebuilds to one at a time across nodes.
func lockRebuild(ctx context.Context, live *pgxpool.Pool) (unlock func(), err error) {
	conn, err := live.Acquire(ctx)
	if err != nil {
		return nil, readErr(err, "connect for the rebuild lock")
	}
	const key = 0x63686174_72656275 // "chatrebu"
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(key)).Scan(&ok); err != nil || !ok {
		conn.Release()
		if err != nil {
			return nil, readErr(err, "take the rebuild lock")
		}
		return nil, domain.Errorf(domain.CodeConflict, "another rebuild (or verify) of the read models is running")
	}
	return func() {
		ctx := context.WithoutCancel(ctx)
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(key)); err != nil {
			// The session may still hold the lock, and back in the pool it would keep every later
			// rebuild out for as long as the connection lives: end the session instead, which
			// releases its locks (the pool drops a closed connection on Release).
			_ = conn.Conn().Close(ctx)
		}
		conn.Release()
	}, nil
}

// switchOver swaps the rebuilt tables in for the live ones in one transaction.
func switchOver(ctx context.Context, live *pgxpool.Pool, liveSchema, newSchema string, p *Projector, opts RebuildOptions) (RebuildResult, error) {
	tables, err := tablesOf(ctx, live, newSchema)
	if err != nil {
		return RebuildResult{}, err
	}
	liveTables, err := tablesOf(ctx, live, liveSchema)
	if err != nil {
		return RebuildResult{}, err
	}
	if !slices.Equal(tables, liveTables) {
		return RebuildResult{}, fmt.Errorf("the live schema %s has tables %v, the rebuilt one %v: run chatd migrate with this version first", liveSchema, liveTables, tables)
	}
	tx, err := live.Begin(ctx)
	if err != nil {
		return RebuildResult{}, readErr(err, "begin switch-over")
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", opts.LockTimeout.Milliseconds())); err != nil {
		return RebuildResult{}, err
	}
	// The checkpoint first: the live projector takes it first in each batch, so holding it
	// stops the projector without deadlocking against it.
	if _, err := tx.Exec(ctx, "LOCK TABLE "+qualified(liveSchema, []string{"projector_checkpoints"})+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		return RebuildResult{}, fmt.Errorf("lock the live checkpoint: %w", err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+qualified(liveSchema, inLockOrder(tables))+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		return RebuildResult{}, fmt.Errorf("lock the live read models: %w", err)
	}
	var target uint64
	if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM `+qualified(liveSchema, []string{"projector_checkpoints"})+` WHERE name = $1), 0)`, ProjectorName).Scan(&target); err != nil {
		return RebuildResult{}, readErr(err, "read the live checkpoint")
	}
	if err := p.catchUp(ctx, target, opts.Progress); err != nil {
		return RebuildResult{}, err
	}
	if cp, err := p.checkpoint(ctx); err != nil || cp != target {
		return RebuildResult{}, fmt.Errorf("the rebuild is at %d, the live read models at %d: %v", cp, target, err)
	}
	old := fmt.Sprintf("chatd_replaced_%d", time.Now().UnixNano())
	stmts := []string{"CREATE SCHEMA " + old}
	for _, t := range tables {
		stmts = append(stmts, "ALTER TABLE "+pgx.Identifier{liveSchema, t}.Sanitize()+" SET SCHEMA "+old)
	}
	for _, t := range tables {
		stmts = append(stmts, "ALTER TABLE "+pgx.Identifier{newSchema, t}.Sanitize()+" SET SCHEMA "+pgx.Identifier{liveSchema}.Sanitize())
	}
	stmts = append(stmts, "DROP SCHEMA "+newSchema)
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return RebuildResult{}, fmt.Errorf("switch over (%s): %w", s, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return RebuildResult{}, readErr(err, "commit switch-over")
	}
	return RebuildResult{Seq: target, OldSchema: old}, nil
}

// qualified lists the tables names of schema, for a statement.
func qualified(schema string, names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = pgx.Identifier{schema, n}.Sanitize()
	}
	return strings.Join(out, ", ")
}

// dropReplaced drops the schema that holds the read models a rebuild replaced. A reader that was
// waiting for the live tables while they moved may still take their locks: a prepared statement
// locks every table it was planned on before it notices they moved. So the tables are locked in
// lockOrder first, as readers lock them; DROP SCHEMA … CASCADE alone locks them in the order they
// were created (conversations before members), and could deadlock with such a reader and fail
// its request.
func dropReplaced(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	tables, err := tablesOf(ctx, pool, schema)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if len(tables) > 0 {
			if _, err := tx.Exec(ctx, "LOCK TABLE "+qualified(schema, inLockOrder(tables))+" IN ACCESS EXCLUSIVE MODE"); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		return err
	})
}

// lockOrder is the order in which this package's reads lock the read-model tables (a statement
// locks its FROM clause's tables left to right): members before conversations before messages,
// members before users and departures, the checkpoint before parked_events. The switch-over locks
// the live tables in this order, so it never holds a table that a reader waits for while waiting
// for one that reader holds. In alphabetical order it held conversations while waiting for
// members, so a conversation list could deadlock with it and be the side PostgreSQL aborts (its
// request failing). A read that locks in another order can still deadlock with the switch-over,
// which retries when it is the side aborted (retryableSwitch); keep new reads in this order.
var lockOrder = []string{"projector_checkpoints", "members", "conversations", "messages", "users", "departures", "parked_events"}

// inLockOrder returns tables in lockOrder, followed by those it does not list, in their order.
func inLockOrder(tables []string) []string {
	out := make([]string, 0, len(tables))
	for _, t := range lockOrder {
		if slices.Contains(tables, t) {
			out = append(out, t)
		}
	}
	for _, t := range tables {
		if !slices.Contains(lockOrder, t) {
			out = append(out, t)
		}
	}
	return out
}

// retryableSwitch reports whether a failed switch-over may succeed later: it lost a lock wait or
// a deadlock to readers.
func retryableSwitch(err error) bool {
	s := err.Error()
	return strings.Contains(s, "lock timeout") || strings.Contains(s, "deadlock") || strings.Contains(s, "SQLSTATE 55P03") || strings.Contains(s, "SQLSTATE 40P01")
}

// scratch is a schema of its own with the read-model tables, and a pool whose connections use it.
type scratch struct {
	schema string
	pool   *pgxpool.Pool
	live   *pgxpool.Pool
}

// newScratch creates and migrates a schema named prefix_<time> next to the live read models. The
// live read models must be at the schema version this build migrates to: tables built by an
// older chatd during a rolling upgrade would lack what the newer one migrated, and a rebuild
// would swap them in.
func newScratch(ctx context.Context, live *pgxpool.Pool, prefix string) (*scratch, error) {
	conn, err := live.Acquire(ctx)
	if err != nil {
		return nil, readErr(err, "connect to read the schema version")
	}
	version, latest, err := migrations.Versions(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		return nil, readErr(err, "read the schema version")
	}
	switch {
	case version > latest:
		return nil, domain.Errorf(domain.CodeConflict, "the read models are at schema version %d, newer than this chatd's %d: "+
			"rebuild from a node that runs the newer chatd", version, latest)
	case version < latest:
		return nil, domain.Errorf(domain.CodeConflict, "the read models are at schema version %d, older than this chatd's %d: "+
			"run chatd migrate first", version, latest)
	}
	schema := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := live.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	sc := &scratch{schema: schema, live: live}
	cfg := live.Config().Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	if sc.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		sc.drop(ctx, nil)
		return nil, fmt.Errorf("connect to schema %s: %w", schema, err)
	}
	conn, err = sc.pool.Acquire(ctx)
	if err == nil {
		err = migrations.Migrate(ctx, conn.Conn())
		conn.Release()
	}
	if err != nil {
		sc.drop(ctx, nil)
		return nil, fmt.Errorf("migrate schema %s: %w", schema, err)
	}
	return sc, nil
}

// bulkLoad applies the stream up to upTo to the scratch tables with their secondary indexes
// (unique constraints included) and the messages primary key dropped, then builds them again:
// building an index once over a million rows costs a fraction of keeping it up to date row by
// row. The other primary keys stay, since the projector finds rows by them; nothing else reads
// the scratch tables meanwhile. For the same reason the projector applies the events in bulk
// mode (see bulk.go): new messages copied, edits and deletes applied once the messages key is
// built, the conversations' last activity and read markers written once instead of every
// batch. A failed bulk load leaves the scratch tables behind the checkpoint they carry: the
// caller drops them.
func (sc *scratch) bulkLoad(ctx context.Context, p *Projector, upTo uint64, progress func(done, total uint64)) error {
	rows, _ := sc.live.Query(ctx, `
		SELECT quote_ident(n.nspname) || '.' || quote_ident(t.relname), quote_ident(n.nspname) || '.' || quote_ident(x.relname),
		       coalesce(quote_ident(c.conname), ''), coalesce(pg_get_constraintdef(c.oid), ''), pg_get_indexdef(i.indexrelid)
		  FROM pg_index i
		  JOIN pg_class t ON t.oid = i.indrelid
		  JOIN pg_class x ON x.oid = i.indexrelid
		  JOIN pg_namespace n ON n.oid = t.relnamespace
		  LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = t.oid
		 WHERE n.nspname = $1 AND (NOT i.indisprimary OR t.relname = 'messages')
		 ORDER BY i.indisprimary DESC, 1, 2`, sc.schema)
	var drop, build []string
	var table, index, constraint, constraintDef, indexDef string
	_, err := pgx.ForEachRow(rows, []any{&table, &index, &constraint, &constraintDef, &indexDef}, func() error {
		if constraint != "" {
			drop = append(drop, "ALTER TABLE "+table+" DROP CONSTRAINT "+constraint)
			build = append(build, "ALTER TABLE "+table+" ADD CONSTRAINT "+constraint+" "+constraintDef)
		} else {
			drop = append(drop, "DROP INDEX "+index)
			build = append(build, indexDef)
		}
		return nil
	})
	if err != nil {
		return readErr(err, "list the indexes of "+sc.schema)
	}
	if len(build) == 0 || !strings.Contains(build[0], "PRIMARY KEY") {
		return fmt.Errorf("no primary key on %s.messages", sc.schema)
	}
	for _, stmt := range drop {
		if _, err := sc.live.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	p.bulk = newBulkLoad(p.models, build)
	defer func() { p.bulk = nil }()
	start := time.Now()
	if err := p.catchUp(ctx, upTo, progress); err != nil {
		return err
	}
	loaded := time.Now()
	if err := p.bulk.finish(ctx, p); err != nil {
		return err
	}
	p.log.Info("bulk load done", "schema", sc.schema, "seq", upTo, "applied", loaded.Sub(start).Round(time.Millisecond),
		"indexed", time.Since(loaded).Round(time.Millisecond))
	return nil
}

// drop closes the pool and drops the schema.
func (sc *scratch) drop(ctx context.Context, log *slog.Logger) {
	if sc.pool != nil {
		sc.pool.Close()
	}
	if _, err := sc.live.Exec(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+sc.schema+" CASCADE"); err != nil && log != nil {
		log.Warn("scratch schema not dropped", "schema", sc.schema, "err", err)
	}
}

// schemaOf returns the schema in which the pool's connections find table.
func schemaOf(ctx context.Context, pool *pgxpool.Pool, table string) (string, error) {
	var schema string
	err := pool.QueryRow(ctx, `SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass($1)`, table).Scan(&schema)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("no %s table: run chatd migrate first", table)
	}
	return strings.Trim(schema, `"`), readErr(err, "find the live schema")
}

// tablesOf lists the tables of a schema, sorted.
func tablesOf(ctx context.Context, pool *pgxpool.Pool, schema string) ([]string, error) {
	rows, _ := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, schema)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return tables, readErr(err, "list the tables of "+schema)
}

func liveCheckpoint(ctx context.Context, live *pgxpool.Pool) (uint64, error) {
	var seq uint64
	err := live.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM projector_checkpoints WHERE name = $1), 0)`, ProjectorName).Scan(&seq)
	return seq, readErr(err, "read the live checkpoint")
}
