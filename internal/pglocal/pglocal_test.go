package pglocal_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chatd-dev/chatd/internal/pglocal"
)

// fast makes test clusters quick to create and use; their data is thrown away.
var fast = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

// newDir returns a data directory path the server user can reach, removed after the test. As
// root, MkdirTemp's 0700 directory is opened up and the cluster goes in a subdirectory, which
// pglocal hands over to the server user.
func newDir(t *testing.T) string {
	t.Helper()
	tmp, err := os.MkdirTemp("", "chatd-pglocal-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(tmp, "pg")
}

// start starts a cluster in dir and stops it after the test. Missing PostgreSQL binaries skip
// the test, except in CI.
func start(t *testing.T, dir string, logf func(string, ...any)) *pglocal.Cluster {
	t.Helper()
	c, err := pglocal.Start(ctx(t), pglocal.Options{Dir: dir, Settings: fast, Logf: logf})
	skipWithoutBinaries(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return c
}

// skipWithoutBinaries skips the test when err says PostgreSQL is not installed, except in CI,
// where that is a failure.
func skipWithoutBinaries(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, pglocal.ErrNoBinaries) {
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(err)
	}
	t.Skip(err)
}

// ctx returns a context that bounds a test step.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// selectOne connects to url and runs SELECT 1.
func selectOne(t *testing.T, url string) error {
	t.Helper()
	conn, err := pgx.Connect(ctx(t), url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(ctx(t), "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		t.Fatalf("SELECT 1 returned %d", one)
	}
	return nil
}

// messages collects Logf output.
type messages struct {
	mu   sync.Mutex
	list []string
}

func (m *messages) logf(t *testing.T) func(string, ...any) {
	return func(format string, args ...any) {
		t.Logf(format, args...)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.list = append(m.list, format)
	}
}

func (m *messages) contain(s string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, msg := range m.list {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func TestStartStopRestart(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	var msgs messages
	began := time.Now()
	c := start(t, dir, msgs.logf(t))
	t.Logf("initdb and start took %s", time.Since(began))
	if !msgs.contain("initialising") {
		t.Errorf("no progress message about initdb; got %q", msgs.list)
	}
	if c.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", c.Dir(), dir)
	}

	cfg, err := pgx.ParseConfig(c.URL("chatd"))
	if err != nil {
		t.Fatalf("URL %q does not parse: %v", c.URL("chatd"), err)
	}
	if cfg.Host != dir || cfg.Port != 5432 || cfg.User != "chatd" || cfg.Database != "chatd" {
		t.Errorf("URL %q: host %q port %d user %q database %q", c.URL("chatd"), cfg.Host, cfg.Port, cfg.User, cfg.Database)
	}

	if err := selectOne(t, c.URL("postgres")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second call finds the database
		if err := c.EnsureDatabase(ctx(t), "chatd"); err != nil {
			t.Fatal(err)
		}
	}
	if err := selectOne(t, c.URL("chatd")); err != nil {
		t.Fatal(err)
	}

	if os.Geteuid() == 0 {
		// The server must run as, and its directory belong to, the server user.
		u, err := pglocal.RunUser()
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if uid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); uid != u.Uid {
			t.Errorf("data directory owned by uid %s, want %s (%s)", uid, u.Uid, u.Username)
		}
	}

	if err := c.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(t, c.URL("chatd")); err == nil {
		t.Fatal("query succeeded after Stop")
	}
	if err := c.Stop(ctx(t)); err != nil {
		t.Fatalf("Stop of a stopped server: %v", err)
	}
	if err := c.Restart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(t, c.URL("chatd")); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
}

// A server left running by a previous run (chatd killed with SIGKILL never calls Stop) is
// reused rather than making Start fail.
func TestStartReusesRunningServer(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	first := start(t, dir, t.Logf)
	if err := first.EnsureDatabase(ctx(t), "chatd"); err != nil {
		t.Fatal(err)
	}

	var msgs messages
	second := start(t, dir, msgs.logf(t))
	if !msgs.contain("reusing") {
		t.Errorf("no message about reusing the running server; got %q", msgs.list)
	}
	if msgs.contain("initialising") {
		t.Error("second Start ran initdb again")
	}
	if err := selectOne(t, second.URL("chatd")); err != nil {
		t.Fatal(err)
	}
	if err := second.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(t, first.URL("chatd")); err == nil {
		t.Fatal("the reused server still answers after Stop")
	}
}

// When the server does not start, the reason (written to the server log) is in the error; a
// later Start with good settings uses the cluster initdb already made.
func TestStartFailureReportsServerLog(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	_, err := pglocal.Start(ctx(t), pglocal.Options{Dir: dir, Settings: map[string]string{"shared_buffers": "plenty"}})
	skipWithoutBinaries(t, err)
	if err == nil {
		t.Fatal("Start succeeded with an invalid setting")
	}
	if !strings.Contains(err.Error(), `"shared_buffers"`) || !strings.Contains(err.Error(), "server.log") {
		t.Errorf("error does not show the server log's complaint: %v", err)
	}

	var msgs messages
	c := start(t, dir, msgs.logf(t))
	if msgs.contain("initialising") {
		t.Error("initdb ran again on an initialised directory")
	}
	if err := selectOne(t, c.URL("postgres")); err != nil {
		t.Fatal(err)
	}
}

// Bad options are reported before anything is run.
func TestStartRejectsBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts pglocal.Options
		want string
	}{
		{"no dir", pglocal.Options{}, "no data directory"},
		{"socket path too long", pglocal.Options{Dir: "/tmp/" + strings.Repeat("d", 100)}, "unix socket"},
		{"fixed setting", pglocal.Options{Dir: "/tmp/x", Settings: map[string]string{"port": "5433"}}, `"port"`},
		{"bad setting name", pglocal.Options{Dir: "/tmp/x", Settings: map[string]string{"a;b": "1"}}, `"a;b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pglocal.Start(ctx(t), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start error = %v, want one mentioning %s", err, tt.want)
			}
		})
	}
}

func TestCheckReachable(t *testing.T) {
	t.Parallel()
	private, err := os.MkdirTemp("", "chatd-pglocal-") // mode 0700, owned by us
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(private) })
	dataDir := filepath.Join(private, "data", "pg")

	err = pglocal.CheckReachable(dataDir)
	if os.Geteuid() != 0 {
		if err != nil {
			t.Fatalf("not root, yet CheckReachable = %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), private+" (mode 0700)") {
		t.Fatalf("CheckReachable(%s) = %v, want an error naming %s", dataDir, err, private)
	}
	if err := pglocal.CheckReachable(private); err == nil {
		t.Fatalf("CheckReachable(%s) = nil for the 0700 directory itself", private)
	}
	// Start fails the same way and leaves nothing behind.
	if _, err := pglocal.Start(ctx(t), pglocal.Options{Dir: dataDir}); err == nil || !strings.Contains(err.Error(), private) {
		t.Errorf("Start in an unreachable directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(private, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Start created directories on an unreachable path: %v", err)
	}

	if err := os.Chmod(private, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := pglocal.CheckReachable(dataDir); err != nil {
		t.Fatalf("after chmod 0755: %v", err)
	}
}

func TestRunUser(t *testing.T) {
	t.Parallel()
	u, err := pglocal.RunUser()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 && u.Uid == "0" {
		t.Fatal("RunUser is root, which PostgreSQL refuses")
	}
	if os.Geteuid() != 0 && u.Uid != strconv.Itoa(os.Geteuid()) {
		t.Fatalf("RunUser = %s (uid %s), want the current user", u.Username, u.Uid)
	}
}

func TestFindBinaries(t *testing.T) {
	t.Parallel()
	dir, err := pglocal.FindBinaries()
	skipWithoutBinaries(t, err)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinaries = %s, which lacks %s: %v", dir, name, err)
		}
	}
}
