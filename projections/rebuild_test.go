package projections

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
)

// A rebuild while the chat is busy replaces damaged live read models with ones rebuilt from the
// stream; the serving pool (with its cached prepared statements) reads the new tables at once,
// and the live projector carries on into them.
func TestRebuildSwitchesOverWhileServing(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	var first string
	for i := range 300 {
		m, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, fmt.Sprint("before-", i), "hello")
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

	// Sends and reads go on during the rebuild.
	ctx, stop := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	sent := make(chan int, 1)
	wg.Go(func() {
		n := 0
		for ctx.Err() == nil {
			if _, _, err := f.store.SendMessage(f.ctx, "bob", d.ID, fmt.Sprint("during-", n), "busy"); err != nil {
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

	res, err := Rebuild(f.ctx, f.pool, f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{})
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if res.Seq == 0 || res.Events < res.Seq-uint64(<-sent)-1 || res.OldSchema != "" {
		t.Fatalf("rebuild result %+v", res)
	}

	// The same pool reads the rebuilt tables: the damaged message is back.
	if _, err := msgs.Get(f.ctx, first); err != nil {
		t.Fatalf("after the rebuild: %v", err)
	}
	// The live projector goes on into the new tables.
	m, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "after", "after the switch")
	f.check(err)
	f.waitFor(live, m.Seq)
	if got, err := msgs.Get(f.ctx, m.ID); err != nil || got.Body != "after the switch" {
		t.Fatalf("a message sent after the switch: %+v, %v", got, err)
	}
	// And the result is exactly a rebuild of the stream.
	v, err := Verify(f.ctx, f.pool, f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil || !v.Equal() {
		t.Fatalf("verify after the rebuild: %+v, %v", v, err)
	}
	var schemas int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'chatd_%'`).Scan(&schemas); err != nil || schemas != 0 {
		t.Fatalf("%d schemas left behind (%v)", schemas, err)
	}
}
