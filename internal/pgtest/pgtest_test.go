package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chatd-dev/chatd/internal/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Each call gets its own database, already migrated.
func TestNewDB(t *testing.T) {
	t.Parallel()
	a, b := pgtest.NewDB(t), pgtest.NewDB(t)
	if a == b {
		t.Fatalf("NewDB returned %s twice", a)
	}
	names := map[string]bool{}
	for _, url := range []string{a, b} {
		conn := connect(t, url)
		var name string
		var migrated bool
		if err := conn.QueryRow(ctx(t), "SELECT current_database(), to_regclass('projector_checkpoints') IS NOT NULL").Scan(&name, &migrated); err != nil {
			t.Fatal(err)
		}
		if !migrated {
			t.Errorf("database %s has no projector_checkpoints table", name)
		}
		names[name] = true
	}
	if len(names) != 2 {
		t.Fatalf("the two URLs lead to the same database: %v", names)
	}

	// The code under test opens pools, not single connections.
	pool, err := pgxpool.New(ctx(t), a)
	if err != nil {
		t.Fatalf("pgxpool.New(%s): %v", a, err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx(t)); err != nil {
		t.Fatal(err)
	}

	// What one test writes, another does not see.
	if _, err := connect(t, a).Exec(ctx(t), "INSERT INTO projector_checkpoints VALUES ('p', 1, now())"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := connect(t, b).QueryRow(ctx(t), "SELECT count(*) FROM projector_checkpoints").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a row written to one database is in the other")
	}
}

// Databases are dropped when their test ends, even with sessions still open.
func TestNewDBDropsDatabase(t *testing.T) {
	t.Parallel()
	var url string
	var conn *pgx.Conn
	t.Run("user", func(t *testing.T) {
		url = pgtest.NewDB(t)
		var err error
		if conn, err = pgx.Connect(ctx(t), url); err != nil { // left open on purpose
			t.Fatal(err)
		}
	})
	if conn == nil {
		t.Skip("the subtest got no database")
	}
	defer conn.Close(context.Background())
	c, err := pgx.Connect(ctx(t), url)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" { // invalid_catalog_name
		if c != nil {
			c.Close(context.Background())
		}
		t.Fatalf("connect after the test ended: %v, want database does not exist", err)
	}
}

// Parallel tests each get a database of their own.
func TestNewDBParallel(t *testing.T) {
	t.Parallel()
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, pgtest.NewDB(t))
			if _, err := conn.Exec(ctx(t), "INSERT INTO projector_checkpoints VALUES ('p', $1, now())", i); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A private cluster can be stopped and restarted, as outage tests do.
func TestNewCluster(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	if err := c.EnsureDatabase(ctx(t), "chatd"); err != nil {
		t.Fatal(err)
	}
	query := func() error {
		conn, err := pgx.Connect(ctx(t), c.URL("chatd"))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx(t), "SELECT 1")
		return err
	}
	if err := query(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := query(); err == nil {
		t.Fatal("query succeeded while the cluster was stopped")
	}
	if err := c.Restart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := query(); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
}
