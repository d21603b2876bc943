// Package pgtest gives tests a real PostgreSQL database: a fresh, migrated database per test.
//
// The server is the one named by CHATD_TEST_DATABASE_URL when that is set; otherwise each test
// binary starts a private cluster of its own from the PostgreSQL binaries installed on the
// machine (see package pglocal), the first time a test asks for a database. The schema is
// migrated once, into a template database, and every test gets a copy of it, which is much
// faster than migrating each database.
//
// When no server can be had, tests are skipped, except under CI (CI=true), where a missing
// PostgreSQL fails them: CI must never pass by testing nothing.
//
// Packages that use NewDB must call Main from TestMain, so that the cluster and the template
// database are removed when the tests end.
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chatd-dev/chatd/internal/pglocal"
	"github.com/chatd-dev/chatd/migrations"
)

// envURL names the environment variable holding the URL of an existing PostgreSQL server for
// tests; databases are created on it (its user needs the CREATEDB privilege).
const envURL = "CHATD_TEST_DATABASE_URL"

// dirPrefix starts the names of the temporary directories that hold test clusters.
const dirPrefix = "chatd-pgtest-"

// ownerFile, in a test cluster's temporary directory, holds the pid of the test binary that
// owns the cluster, so that clusters of crashed binaries can be recognised and removed.
const ownerFile = "owner.pid"

// opTimeout bounds every database operation pgtest performs.
const opTimeout = 2 * time.Minute

// testSettings make test clusters fast: their data is thrown away, so durability is pointless.
var testSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
}

// The server shared by the tests of this binary, set up by the first NewDB.
var (
	mainCalled atomic.Bool   // Main is running the tests
	dbCounter  atomic.Uint64 // numbers the databases made by NewDB

	mu        sync.Mutex
	setupDone bool    // the fields below are final
	shared    *server // nil when setup failed
	setupErr  error   // why there is no server
	skippable bool    // setupErr means "no PostgreSQL here" rather than a failure
)

// server is where NewDB creates databases.
type server struct {
	url      func(database string) string // connection URL for a database on the server
	admin    string                       // URL of the database to connect to for CREATE/DROP DATABASE
	template string                       // migrated template database
	cluster  *pglocal.Cluster             // the binary's own cluster, nil for CHATD_TEST_DATABASE_URL
	tmpDir   string                       // directory holding cluster
}

// Main runs the tests of a package that uses NewDB and then removes what pgtest set up for
// them: the package's cluster, or its template database on CHATD_TEST_DATABASE_URL. Call it
// from TestMain.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// NewDB returns the URL of a fresh database, migrated to the newest schema, that no other test
// uses; it is dropped when the test ends. The URL suits pgx.Connect and pgxpool.New.
func NewDB(tb testing.TB) string {
	tb.Helper()
	if !mainCalled.Load() {
		tb.Fatalf("pgtest: NewDB needs TestMain to call pgtest.Main(m), which removes the test server afterwards")
	}
	s := sharedServer(tb)
	name := fmt.Sprintf("t_%d_%s", dbCounter.Add(1), randomHex(4))

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+s.template); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		// FORCE disconnects sessions the test left open, such as a pool closed after this.
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return s.url(name)
}

// NewCluster starts a private cluster for a single test, for tests that stop and restart
// PostgreSQL and so must not share a server. It is stopped and removed when the test ends.
func NewCluster(tb testing.TB) *pglocal.Cluster {
	tb.Helper()
	c, tmpDir, err := startCluster(testSettings)
	if err != nil {
		unavailable(tb, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
		if err := os.RemoveAll(tmpDir); err != nil {
			tb.Errorf("pgtest: remove test cluster: %v", err)
		}
	})
	return c
}

// sharedServer returns the binary's server, setting it up on first use; it ends the test
// (skip or failure) when there is none.
func sharedServer(tb testing.TB) *server {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !setupDone {
		shared, setupErr = setup()
		skippable = setupErr != nil && errors.Is(setupErr, errUnavailable)
		setupDone = true
	}
	switch {
	case setupErr == nil:
		return shared
	case skippable:
		unavailable(tb, setupErr)
	default:
		tb.Fatalf("pgtest: %v", setupErr)
	}
	return nil
}

// errUnavailable marks errors meaning that this machine cannot run PostgreSQL for the tests.
var errUnavailable = errors.New("no PostgreSQL server for tests")

// unavailable ends a test that cannot have a server: a skip on a developer's machine without
// PostgreSQL, but a failure in CI, which must never pass by testing nothing.
func unavailable(tb testing.TB, err error) {
	tb.Helper()
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci || !errors.Is(err, errUnavailable) {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Skipf("pgtest: %v (tests can also use an existing server named by %s)", err, envURL)
}

// setup finds or starts the server and creates the migrated template database on it.
func setup() (*server, error) {
	s := &server{}
	if u := os.Getenv(envURL); u != "" {
		s.admin = u
		s.url = func(database string) string { return withDatabase(u, database) }
	} else {
		c, tmpDir, err := startCluster(withSetting(testSettings, "max_connections", "200"))
		if err != nil {
			return nil, err
		}
		s.cluster, s.tmpDir = c, tmpDir
		s.admin = c.URL("postgres")
		s.url = c.URL
	}
	s.template = "chatd_tmpl_" + strconv.Itoa(os.Getpid()) + "_" + randomHex(4)
	if err := s.createTemplate(); err != nil {
		return nil, errors.Join(err, s.close())
	}
	return s, nil
}

// createTemplate creates the template database and migrates it. Its connection must be closed
// before the template is copied: PostgreSQL refuses to copy a database that has sessions.
func (s *server) createTemplate() error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+s.template); err != nil {
		return fmt.Errorf("create template database %s: %w", s.template, err)
	}
	conn, err := pgx.Connect(ctx, s.url(s.template))
	if err != nil {
		return fmt.Errorf("connect to template database %s: %w", s.template, err)
	}
	defer conn.Close(context.Background())
	if err := migrations.Migrate(ctx, conn); err != nil {
		return fmt.Errorf("migrate template database %s: %w", s.template, err)
	}
	if err := conn.Close(ctx); err != nil {
		return fmt.Errorf("disconnect from template database %s: %w", s.template, err)
	}
	return nil
}

// exec runs one statement on the admin database of the server.
func (s *server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.admin)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// close removes what setup made: the whole cluster, or the template database on a server that
// is not ours.
func (s *server) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if s.cluster == nil {
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+s.template+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop template database %s: %w", s.template, err)
		}
		return nil
	}
	if err := s.cluster.Stop(ctx); err != nil {
		return err
	}
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return fmt.Errorf("remove test cluster: %w", err)
	}
	return nil
}

// teardown removes the shared server's leftovers once the tests have run.
func teardown() error {
	mu.Lock()
	defer mu.Unlock()
	if shared == nil {
		return nil
	}
	err := shared.close()
	shared, setupDone, setupErr = nil, true, errors.New("tests are over")
	return err
}

// startCluster starts a cluster in a new temporary directory and returns it with that
// directory. As root, the temporary directory is opened up (MkdirTemp makes it 0700) so that
// the server user can reach the cluster inside it, which pglocal hands over to that user.
// Errors meaning that PostgreSQL cannot run here wrap errUnavailable.
func startCluster(settings map[string]string) (*pglocal.Cluster, string, error) {
	if _, err := pglocal.FindBinaries(); err != nil {
		return nil, "", fmt.Errorf("%w: %w", errUnavailable, err)
	}
	removeOrphans()
	tmpDir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, "", fmt.Errorf("create directory for test cluster: %w", err)
	}
	fail := func(err error) (*pglocal.Cluster, string, error) {
		return nil, "", errors.Join(err, os.RemoveAll(tmpDir))
	}
	if err := os.Chmod(tmpDir, 0o755); err != nil {
		return fail(fmt.Errorf("open up directory for test cluster: %w", err))
	}
	if err := os.WriteFile(filepath.Join(tmpDir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fail(fmt.Errorf("record owner of test cluster: %w", err))
	}
	dir := filepath.Join(tmpDir, "pg")
	if err := pglocal.CheckReachable(dir); err != nil {
		return fail(fmt.Errorf("%w: %w", errUnavailable, err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	c, err := pglocal.Start(ctx, pglocal.Options{Dir: dir, Settings: settings})
	if err != nil {
		return fail(err)
	}
	return c, tmpDir, nil
}

// removeOrphans removes the test clusters of test binaries that died without cleaning up (a
// panic or a -timeout skips Main). Removing the directory is enough: a server whose lock file
// is gone shuts itself down within a minute.
func removeOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or being set up right now
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		_ = os.RemoveAll(dir) // best effort: an orphan left behind does no harm to these tests
	}
}

// processAlive reports whether process pid exists and has not exited. A killed test binary
// can linger as a zombie when its parent does not reap it, which kill(pid, 0) does not tell
// apart from a live process; on Linux, /proc does.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // no /proc: trust kill
	}
	// The state follows the parenthesised command name, which may itself contain ") ".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// withDatabase returns the connection string s pointing at database instead, for both URL and
// keyword/value connection strings.
func withDatabase(s, database string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if u, err := url.Parse(s); err == nil {
			u.Path, u.RawPath = "/"+database, ""
			return u.String()
		}
	}
	return s + " dbname=" + database // a later keyword overrides an earlier one
}

// withSetting returns a copy of settings with name set to value.
func withSetting(settings map[string]string, name, value string) map[string]string {
	out := maps.Clone(settings)
	out[name] = value
	return out
}

// randomHex returns n random bytes in lowercase hex, to keep names unique across test binaries
// sharing a server.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
