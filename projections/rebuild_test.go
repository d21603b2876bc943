package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
)

// A rebuild while the chat is busy replaces damaged live read models with ones rebuilt from the
// stream; the serving pool (with its cached prepared statements) reads the new tables at once,
// and the live projector carries on into them.
func TestRebuildSwitchesOverWhileServing(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	var first string
	for i := range 300 {
		m, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, fmt.Sprint("before-", i), "hello")
		f.check(err)
		if i == 0 {
			first = m.ID
		}
	}
	live := f.projector()
	f.run(live)
	f.waitFor(live, f.lastSeq())

	// Damage the live read models, and cache the reader's prepared statements.
	msgs := NewMessages(f.pool)
	if _, err := f.pool.Exec(f.ctx, `DELETE FROM messages WHERE id = $1`, first); err != nil {
		t.Fatal(err)
	}
	if _, err := msgs.Get(f.ctx, first); err == nil {
		t.Fatal("the damaged message is still readable")
	}

	indexesBefore := indexes(t, f.pool)

	// Sends and reads go on during the rebuild.
	ctx, stop := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	sent := make(chan int, 1)
	wg.Go(func() {
		n := 0
		for ctx.Err() == nil {
			if _, _, _, err := f.store.SendMessage(f.ctx, "bob", d.ID, fmt.Sprint("during-", n), "busy"); err != nil {
				t.Error(err)
				break
			}
			n++
		}
		sent <- n
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, _, err := msgs.List(f.ctx, d.ID, Page{Limit: 15}); err != nil {
				t.Errorf("read during the rebuild: %v", err)
				return
			}
		}
	})

	res, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{})
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if res.Seq == 0 || res.Events < res.Seq-uint64(<-sent)-1 || res.OldSchema != "" {
		t.Fatalf("rebuild result %+v", res)
	}

	// The indexes and constraints dropped for the bulk load are all back, as they were.
	if after := indexes(t, f.pool); !slices.Equal(after, indexesBefore) || len(after) < 10 {
		t.Fatalf("indexes after the rebuild:\n%v\nbefore:\n%v", after, indexesBefore)
	}
	// The same pool reads the rebuilt tables: the damaged message is back.
	if _, err := msgs.Get(f.ctx, first); err != nil {
		t.Fatalf("after the rebuild: %v", err)
	}
	// The live projector goes on into the new tables.
	m, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "after", "after the switch")
	f.check(err)
	f.waitFor(live, m.Seq)
	if got, err := msgs.Get(f.ctx, m.ID); err != nil || got.Body != "after the switch" {
		t.Fatalf("a message sent after the switch: %+v, %v", got, err)
	}
	// And the result is exactly a rebuild of the stream.
	v, err := Verify(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil || !v.Equal() {
		t.Fatalf("verify after the rebuild: %+v, %v", v, err)
	}
	var schemas int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'chatd_%'`).Scan(&schemas); err != nil || schemas != 0 {
		t.Fatalf("%d schemas left behind (%v)", schemas, err)
	}
}

// indexes lists the definitions of the live read models' indexes and constraints.
func indexes(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `
		SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()
		UNION ALL
		SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		  FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
		ORDER BY 1`)
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return defs
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eventually polls cond until it holds, failing the test after 10 s.
func (f *fixture) eventually(what string, cond func() (bool, error)) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			f.t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tx begins a transaction on a connection of its own (not one of the pool's, which the code
// under test needs), closed when the test ends.
func (f *fixture) tx() pgx.Tx {
	f.t.Helper()
	conn, err := pgx.ConnectConfig(f.ctx, f.pool.Config().ConnConfig)
	f.check(err)
	f.t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(f.ctx)
	f.check(err)
	return tx
}

// The switch-over locks the live tables in the order the reads lock them. A read that has locked
// members and goes on to conversations (as the conversation list does, left to right through
// its joins; here the step between is held open) must not deadlock with it: PostgreSQL would
// abort one of the two, and when that is the read, its request fails.
func TestSwitchOverLocksTablesInReadersOrder(t *testing.T) {
	f := newFixture(t)
	f.projectOneMessage()

	// A slow read of departures (alphabetically between conversations and members) holds the
	// switch-over up long enough for the reader to queue behind it.
	slow, reader := f.tx(), f.tx()
	_, err := slow.Exec(f.ctx, `SELECT count(*) FROM departures`)
	f.check(err)
	var readerPID int
	f.check(reader.QueryRow(f.ctx, `SELECT pg_backend_pid()`).Scan(&readerPID))
	_, err = reader.Exec(f.ctx, `SELECT count(*) FROM members`)
	f.check(err)

	rebuilt := make(chan error, 1)
	go func() {
		_, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), RebuildOptions{})
		rebuilt <- err
	}()
	f.eventually("the switch-over waits for a table", func() (bool, error) {
		var n int
		err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'`).Scan(&n)
		return n > 0, err
	})
	read := make(chan error, 1)
	go func() {
		_, err := reader.Exec(f.ctx, `SELECT count(*) FROM conversations`)
		read <- err
	}()
	var readErr error
	readDone := false
	f.eventually("the read has read or waits for a table", func() (bool, error) {
		select {
		case readErr = <-read:
			readDone = true
			return true, nil
		default:
		}
		var waiting bool
		err := f.pool.QueryRow(f.ctx, `SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)`, readerPID).Scan(&waiting)
		return waiting, err
	})
	f.check(slow.Commit(f.ctx))
	if !readDone {
		readErr = <-read
	}
	if readErr != nil {
		t.Fatalf("the read during the switch-over: %v", readErr)
	}
	f.check(reader.Commit(f.ctx))
	if err := <-rebuilt; err != nil {
		t.Fatalf("rebuild: %v", err)
	}
}

// When releasing the rebuild lock fails, the session that holds it is closed instead of going
// back to the pool, so the lock does not keep later rebuilds out.
func TestRebuildLockFreedWhenUnlockFails(t *testing.T) {
	f := newFixture(t)
	// A session on which the unlock fails and the connection stays sound: with pg_catalog listed
	// in search_path, PostgreSQL finds this schema's pg_advisory_unlock first.
	_, err := f.pool.Exec(f.ctx, `CREATE SCHEMA unlock_fails;
		CREATE FUNCTION unlock_fails.pg_advisory_unlock(bigint) RETURNS boolean LANGUAGE plpgsql
		AS $$BEGIN RAISE EXCEPTION 'unlock refused'; END$$`)
	f.check(err)
	cfg := f.pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = "unlock_fails, pg_catalog, public"
	pool, err := pgxpool.NewWithConfig(f.ctx, cfg)
	f.check(err)
	t.Cleanup(pool.Close)

	unlock, err := lockRebuild(f.ctx, pool)
	f.check(err)
	unlock()
	f.eventually("another rebuild takes the lock", func() (bool, error) {
		unlock, err := lockRebuild(f.ctx, f.pool)
		if err != nil {
			return false, nil
		}
		unlock()
		return true, nil
	})
}

// A verify does not run beside a rebuild (a switch-over during its comparison would make it
// compare the new tables), nor a rebuild beside a verify: they share the rebuild lock.
func TestVerifyWaitsForNoRebuild(t *testing.T) {
	f := newFixture(t)
	unlock, err := lockRebuild(f.ctx, f.pool)
	f.check(err)
	defer unlock()
	_, err = Verify(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if domain.ErrorCode(err) != domain.CodeConflict {
		t.Fatalf("verify during a rebuild: %v, want conflict", err)
	}
}

// Close stops a running rebuild and waits for it; Start after Close starts nothing, so no
// rebuild runs on while the node shuts down.
func TestRebuildsStartAfterClose(t *testing.T) {
	f := newFixture(t)
	f.direct("alice", "bob")
	r := NewRebuilds(f.pool, f.js.Conn(), f.stream, discardLog())
	t.Cleanup(r.Close)
	if _, err := r.Start(); err != nil {
		t.Fatalf("the first rebuild did not start: %v", err)
	}
	r.Close()
	if st := r.Status(); st.State == "running" {
		t.Fatalf("a rebuild runs after Close: %+v", st)
	}
	st, err := r.Start()
	if !errors.Is(err, ErrRebuildsClosed) || r.Status().State == "running" || st.State == "running" {
		t.Fatalf("Start after Close: %v, status %+v; want ErrRebuildsClosed and nothing running", err, st)
	}
}

// A rebuild whose target, the live checkpoint, was deleted from the stream after the live
// projector applied it finishes at that checkpoint instead of waiting for an event that will
// never come.
func TestRebuildAfterTheLastEventWasDeleted(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	var last string
	for i := range 5 {
		m, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, fmt.Sprint(i), "hello")
		f.check(err)
		last = m.ID
	}
	live := f.projector()
	f.run(live)
	f.waitFor(live, f.lastSeq())
	target := f.lastSeq()
	f.check(f.stream.DeleteMsg(f.ctx, target))

	res, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), RebuildOptions{})
	if err != nil || res.Seq != target {
		t.Fatalf("rebuild: %+v, %v; want it at %d", res, err, target)
	}
	if _, err := NewMessages(f.pool).Get(f.ctx, last); err == nil {
		t.Fatal("the deleted message is in the rebuilt read models")
	}
}

// catchUp reaches its target when the events up to it are gone from the stream: deleted, the
// target among them, or purged.
func TestCatchUpPastDeletedEvents(t *testing.T) {
	// The stream holds 3 events of setup, then 5 messages: sequences 4 to 8.
	for _, tc := range []struct {
		name     string
		before   uint64   // caught up to before the stream changes
		deleted  []uint64 // deleted from the stream
		purgedTo uint64   // the stream purged below this sequence
		upTo     uint64
		messages int // messages in the read models at upTo
	}{
		{name: "the target deleted, later events kept", deleted: []uint64{6}, upTo: 6, messages: 2},
		{name: "every event after the checkpoint deleted", before: 5, deleted: []uint64{6, 7, 8}, upTo: 8, messages: 2},
		{name: "the stream begins after the target", purgedTo: 7, upTo: 6, messages: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			d := f.direct("alice", "bob")
			for i := range 5 {
				_, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, fmt.Sprint(i), "hello")
				f.check(err)
			}
			sc, err := newScratch(f.ctx, f.pool, "chatd_test")
			f.check(err)
			t.Cleanup(func() { sc.drop(context.Background(), nil) })
			p := NewProjector(sc.pool, f.js.Conn(), f.stream, discardLog())
			f.check(p.catchUp(f.ctx, tc.before, nil))
			for _, seq := range tc.deleted {
				f.check(f.stream.DeleteMsg(f.ctx, seq))
			}
			if tc.purgedTo > 0 {
				f.check(f.stream.Purge(f.ctx, jetstream.WithPurgeSequence(tc.purgedTo)))
			}

			ctx, cancel := context.WithTimeout(f.ctx, 20*time.Second)
			defer cancel()
			if err := p.catchUp(ctx, tc.upTo, nil); err != nil {
				t.Fatalf("catch up to %d: %v", tc.upTo, err)
			}
			cp, err := p.checkpoint(f.ctx)
			f.check(err)
			var n int
			f.check(sc.pool.QueryRow(f.ctx, `SELECT count(*) FROM messages`).Scan(&n))
			if cp != tc.upTo || n != tc.messages {
				t.Fatalf("checkpoint %d with %d messages, want %d with %d", cp, n, tc.upTo, tc.messages)
			}
		})
	}
}

// A reader that took a replaced table's lock before the switch-over moved it (a prepared
// statement does, before it notices the move) may go on to lock the next table in lockOrder:
// dropping the replaced tables waits for it instead of deadlocking with it, which would fail
// either the drop or the reader's request.
func TestDroppingReplacedTablesWaitsForReaders(t *testing.T) {
	f := newFixture(t)
	f.projectOneMessage()
	res, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), RebuildOptions{KeepOld: true})
	f.check(err)
	old := pgx.Identifier{res.OldSchema}.Sanitize()

	reader, err := f.pool.Begin(f.ctx)
	f.check(err)
	defer reader.Rollback(context.Background()) //nolint:errcheck // a no-op after Commit
	_, err = reader.Exec(f.ctx, "LOCK TABLE "+old+".members IN ACCESS SHARE MODE")
	f.check(err)
	dropped := make(chan error, 1)
	go func() { dropped <- dropReplaced(f.ctx, f.pool, res.OldSchema) }()
	for waiting := 0; waiting == 0; { // until the drop waits for the reader's lock
		f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&waiting))
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := reader.Exec(f.ctx, "LOCK TABLE "+old+".conversations IN ACCESS SHARE MODE"); err != nil {
		t.Fatalf("the reader's next table: %v", err)
	}
	f.check(reader.Commit(f.ctx))
	if err := <-dropped; err != nil {
		t.Fatalf("drop the replaced tables: %v", err)
	}
	var left int
	f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, res.OldSchema).Scan(&left))
	if left != 0 {
		t.Fatalf("schema %s is still there", res.OldSchema)
	}
}

// projectOneMessage sends a message from alice to bob and runs the live projector until the
// read models hold it.
func (f *fixture) projectOneMessage() {
	f.t.Helper()
	d := f.direct("alice", "bob")
	_, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "1", "hello")
	f.check(err)
	live := f.projector()
	f.run(live)
	f.waitFor(live, f.lastSeq())
}

// A rebuild or a verify by a chatd whose schema differs from the read models' is refused before
// it builds anything: during a rolling upgrade an older node would otherwise swap in tables
// without what the newer one migrated.
func TestRebuildRefusesAnotherSchemaVersion(t *testing.T) {
	f := newFixture(t)
	f.direct("alice", "bob")
	for _, tc := range []struct {
		change, want string
	}{
		{"version + 1", "newer than this chatd's"},
		{"version - 1", "older than this chatd's"},
	} {
		_, err := f.pool.Exec(f.ctx, `UPDATE schema_version SET version = `+tc.change)
		f.check(err)
		_, rebuildErr := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), RebuildOptions{})
		_, verifyErr := Verify(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), nil)
		for _, err := range []error{rebuildErr, verifyErr} {
			if err == nil || !strings.Contains(err.Error(), tc.want) || domain.ErrorCode(err) != domain.CodeConflict {
				t.Fatalf("schema version %s: %v, want a conflict saying %q", tc.change, err, tc.want)
			}
		}
		_, err = f.pool.Exec(f.ctx, `UPDATE schema_version SET version = `+strings.NewReplacer("+", "-", "-", "+").Replace(tc.change))
		f.check(err)
		var scratch int
		f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'chatd_rebuild_%' OR nspname LIKE 'chatd_verify_%'`).Scan(&scratch))
		if scratch != 0 {
			t.Fatalf("%d scratch schemas left", scratch)
		}
	}
	if _, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, discardLog(), RebuildOptions{}); err != nil {
		t.Fatalf("rebuild at the same schema version: %v", err)
	}
}
