package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/api"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Sending needs NATS only: with PostgreSQL stopped, sends answer 201, reads answer 503, and
// once PostgreSQL is back the projector catches up by itself.
func TestSendWhilePostgresIsDown(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	ctx := context.Background()
	if err := cluster.EnsureDatabase(ctx, "chatd"); err != nil {
		t.Fatal(err)
	}
	env := baseEnv(t)
	env["DATABASE_URL"] = cluster.URL("chatd")
	c := start(t, env)
	c.provision("alice", "Alice")
	c.provision("bob", "Bob")
	alice := c.token("alice")
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	path := "/api/v1/conversations/" + d.str("id") + "/messages"
	c.must(200, "GET", path+"?min_seq="+d.header.Get("X-Chat-Seq"), alice, nil)

	if err := cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var last string
	for i := range 5 {
		m := c.must(201, "POST", path, alice, map[string]string{"client_msg_id": fmt.Sprint("down-", i), "body": "while the database sleeps"})
		last = m.header.Get("X-Chat-Seq")
	}
	r := c.do("GET", path, alice, nil)
	if r.status != 503 || r.errCode() != "unavailable" || r.header.Get("Retry-After") == "" {
		t.Fatalf("read with PostgreSQL down: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/api/v1/messages/"+d.str("id")+"-aaaaaaaaaaaaaaaaaaaa", alice, nil); r.status != 503 {
		t.Fatalf("one message with PostgreSQL down: %d %s, want 503 (not 404)", r.status, r.raw)
	}
	if r := c.do("GET", "/readyz", "", nil); r.status != 503 || !strings.Contains(string(r.raw), "postgres") {
		t.Fatalf("readyz with PostgreSQL down: %d %s", r.status, r.raw)
	}

	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		r := c.do("GET", path+"?min_seq="+last, alice, nil)
		if r.status != 200 {
			return fmt.Errorf("status %d %s", r.status, r.raw)
		}
		if n := len(r.list("messages")); n != 5 {
			return fmt.Errorf("%d messages, want 5", n)
		}
		return nil
	})
}

// The README's first command: no DATABASE_URL, no secrets. chatd starts its own PostgreSQL and
// NATS under the data directory, generates its secrets, and a second start finds it all again.
func TestEmbeddedDefaults(t *testing.T) {
	dataDir := filepath.Join(reachableTempDir(t), "data")
	env := map[string]string{
		"CHAT_ADDR":        "127.0.0.1:0",
		"CHAT_NATS_LISTEN": "127.0.0.1:0",
		"CHAT_DATA_DIR":    dataDir,
		"CHAT_LOG_LEVEL":   "warn",
		"CHAT_DEMO_ADDR":   "127.0.0.1:0",
	}
	c := start(t, env)
	// A second chatd on the same data directory refuses to start: it would share the first's
	// JetStream store and stop its PostgreSQL.
	var second strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // were it to start, it stops here
	err := run(ctx, nil, func(k string) string { return env[k] }, io.Discard, &second)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "another chatd is serving from the data directory") {
		t.Fatalf("a second chatd on the same data directory: %v", err)
	}
	keyFile := filepath.Join(dataDir, "service-key")
	info, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("service key not generated: %v", err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("service key mode %v, want 0600", info.Mode().Perm())
	}
	key := strings.TrimSpace(string(must(os.ReadFile(keyFile))))
	c.must(201, "PUT", "/api/v1/users/alice", key, map[string]string{"display_name": "Alice"})
	c.must(201, "PUT", "/api/v1/users/bob", key, map[string]string{"display_name": "Bob"})
	alice := c.must(201, "POST", "/api/v1/tokens", key, map[string]any{"user_id": "alice", "ttl_seconds": 600}).str("token")
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	m := c.must(201, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", alice, map[string]string{"client_msg_id": "x", "body": "persisted"})
	// The demo host site is on by default and mints tokens with the generated service key.
	c.must(200, "GET", "/api/v1/me", demoToken(t, c, "carol"), nil)
	c.stop()
	// Its PostgreSQL stopped with it.
	if _, err := os.Stat(filepath.Join(dataDir, "postgres", "postmaster.pid")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("PostgreSQL still running after chatd stopped (postmaster.pid: %v)", err)
	}

	// chatd token signs with the generated secret.
	var out bytes.Buffer
	if err := run(context.Background(), []string{"token", "--user", "alice", "--ttl", "10m"}, func(k string) string { return env[k] }, &out, &out); err != nil {
		t.Fatalf("chatd token: %v", err)
	}
	secret := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(dataDir, "jwt-secret")))))
	auth, err := api.NewAuth(key, secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if user, err := auth.Verify(strings.TrimSpace(out.String())); err != nil || user != "alice" {
		t.Fatalf("token from chatd token: user %q, err %v", user, err)
	}
	// chatd migrate is idempotent on the same private cluster.
	out.Reset()
	if err := run(context.Background(), []string{"migrate"}, func(k string) string { return env[k] }, &out, &out); err != nil {
		t.Fatalf("chatd migrate: %v\n%s", err, out.String())
	}

	c2 := start(t, env)
	// chatd migrate next to a running chatd leaves that chatd's PostgreSQL running.
	out.Reset()
	if err := run(context.Background(), []string{"migrate"}, func(k string) string { return env[k] }, &out, &out); err != nil {
		t.Fatalf("chatd migrate beside a running chatd: %v\n%s", err, out.String())
	}
	alice = c2.must(201, "POST", "/api/v1/tokens", key, map[string]any{"user_id": "alice", "ttl_seconds": 600}).str("token")
	r := c2.must(200, "GET", "/api/v1/conversations/"+d.str("id")+"/messages?min_seq="+m.header.Get("X-Chat-Seq"), alice, nil)
	if msgs := r.list("messages"); len(msgs) != 1 || msgs[0]["body"] != "persisted" {
		t.Fatalf("after restart: %s", r.raw)
	}
	// The retry of a send from before the restart is recognised.
	c2.must(200, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", alice, map[string]string{"client_msg_id": "x", "body": "persisted"})
	if _, err := os.Stat(filepath.Join(dataDir, "nats")); err != nil {
		t.Fatalf("NATS store not under the data directory: %v", err)
	}
	pgDirs, _ := filepath.Glob(filepath.Join(dataDir, "postgres", "PG_VERSION"))
	if len(pgDirs) != 1 {
		entries, _ := os.ReadDir(dataDir)
		t.Fatalf("PostgreSQL cluster not under the data directory: %v", names(entries))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func names(entries []fs.DirEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// The stream is the truth: a fresh, empty database given to chatd is rebuilt from the stream
// into exactly the read models the first database holds.
func TestRebuildFromStream(t *testing.T) {
	env := baseEnv(t)
	first := pgtest.NewDB(t)
	env["DATABASE_URL"] = first
	c := start(t, env)
	for _, u := range []string{"alice", "bob", "carol"} {
		c.provision(u, "User "+u)
	}
	alice, bob := c.token("alice"), c.token("bob")
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	g := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "group", "title": "G", "members": []string{"bob", "carol"}})
	var ids []string
	for i := range 30 {
		conv := d.str("id")
		if i%3 == 0 {
			conv = g.str("id")
		}
		ids = append(ids, c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": fmt.Sprint(i), "body": fmt.Sprint("m", i)}).str("id"))
	}
	c.must(200, "PATCH", "/api/v1/messages/"+ids[1], alice, `{"body":"edited"}`)
	c.must(200, "DELETE", "/api/v1/messages/"+ids[2], alice, nil)
	c.must(200, "DELETE", "/api/v1/conversations/"+g.str("id")+"/members/carol", alice, nil)
	last := c.must(200, "POST", "/api/v1/conversations/"+d.str("id")+"/read", bob, map[string]any{"seq": 10}).header.Get("X-Chat-Seq")
	c.must(200, "GET", "/api/v1/me?min_seq="+last, alice, nil)
	c.stop()

	second := pgtest.NewDB(t)
	env["DATABASE_URL"] = second
	c2 := start(t, env)
	c2.must(200, "GET", "/api/v1/me?min_seq="+last, alice, nil)
	c2.stop()

	for _, q := range []string{
		`SELECT to_jsonb(t)::text FROM users t ORDER BY id`,
		`SELECT to_jsonb(t)::text FROM conversations t ORDER BY id`,
		`SELECT to_jsonb(t)::text FROM members t ORDER BY conversation_id, user_id`,
		`SELECT to_jsonb(t)::text FROM messages t ORDER BY id`,
		`SELECT seq::text FROM projector_checkpoints`,
	} {
		a, b := dump(t, first, q), dump(t, second, q)
		if strings.Join(a, "\n") != strings.Join(b, "\n") || len(a) == 0 {
			t.Fatalf("%s differs after rebuild:\nfirst:  %v\nsecond: %v", q, a, b)
		}
	}
}

func dump(t *testing.T, url, query string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, query)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// While NATS is down, writes answer 503 at once (no waiting out a timeout) and reads keep
// working; once NATS is back, writes work again and the projector resumes.
func TestNATSRestart(t *testing.T) {
	dir := t.TempDir()
	ns := natstest.RunServer(t, dir)
	addr := ns.Addr().String()
	env := baseEnv(t)
	env["CHAT_NATS_URL"] = ns.ClientURL()
	env["DATABASE_URL"] = pgtest.NewDB(t)
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	path := "/api/v1/conversations/" + conv + "/messages"
	first := c.must(201, "POST", path, alice, map[string]string{"client_msg_id": "1", "body": "before"})
	c.must(200, "GET", path+"?min_seq="+first.header.Get("X-Chat-Seq"), alice, nil)

	ns.Shutdown()
	ns.WaitForShutdown()
	if r := c.do("POST", path, alice, map[string]string{"client_msg_id": "2", "body": "during"}); r.status != 503 || r.errCode() != "unavailable" {
		t.Fatalf("send with NATS down: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", path, alice, nil); r.status != 200 || len(r.list("messages")) != 1 {
		t.Fatalf("read with NATS down: %d %s", r.status, r.raw)
	}

	natstest.RunServerAt(t, dir, addr)
	var seq string
	eventually(t, 30*time.Second, func() error {
		r := c.do("POST", path, alice, map[string]string{"client_msg_id": "2", "body": "after"})
		if r.status != 201 && r.status != 200 {
			return fmt.Errorf("send after restart: %d %s", r.status, r.raw)
		}
		seq = r.header.Get("X-Chat-Seq")
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		r := c.do("GET", path+"?min_seq="+seq, alice, nil)
		if r.status != 200 || len(r.list("messages")) != 2 {
			return fmt.Errorf("read after restart: %d %s", r.status, r.raw)
		}
		return nil
	})
}
