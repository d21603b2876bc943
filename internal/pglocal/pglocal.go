// Package pglocal runs a private PostgreSQL cluster from the binaries installed on this machine.
//
// It exists so that chatd (without DATABASE_URL) and its tests can have a real PostgreSQL
// without any setup: the cluster lives in a directory of its own, listens only on a unix socket
// inside that directory and trusts every local connection, so nothing but processes able to enter
// the directory can reach it. PostgreSQL refuses to run as root; when chatd runs as root the
// server is run as another user (see RunUser) and the data directory is handed to that user.
package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options says where the cluster lives and how its server is tuned.
type Options struct {
	// Dir is the cluster's data directory; initdb runs when it holds no cluster yet. The server's
	// unix socket is created in it too, so the path must be short (see Start).
	Dir string
	// Settings are extra server settings, passed as -c key=value, e.g. "fsync": "off" for
	// throwaway clusters. The settings that decide where the server listens are fixed by pglocal
	// and cannot be given here.
	Settings map[string]string
	// Logf, when set, receives progress messages, so that a slow first start (initdb) or the
	// reuse of a leftover server is not a silent surprise.
	Logf func(format string, args ...any)
}

// Cluster is a PostgreSQL cluster started by Start. Its methods may be called from several
// goroutines, but Stop and Restart should not race each other.
type Cluster struct {
	dir      string
	binDir   string
	settings map[string]string
	logf     func(format string, args ...any)
	runAs    *user.User          // the user the server runs as
	cred     *syscall.Credential // nil when the server runs as the current user
	reused   bool                // the server was already running when Start was called
}

// Reused reports whether Start found the server already running (left over from a killed
// process, or started by a chatd that is still running) instead of starting it.
func (c *Cluster) Reused() bool { return c.reused }

// ErrNoBinaries means that no PostgreSQL server binaries are installed. It is wrapped by the
// errors of FindBinaries and Start so that callers can tell "PostgreSQL is not installed" (which
// tests may skip on) from every other failure.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found")

const (
	// role is the superuser created by initdb and used in every URL.
	role = "chatd"
	// port is fixed so that the socket name, and therefore the URL, does not depend on the
	// server's compiled-in default or on PGPORT.
	port = 5432
	// maxSocketPath is the longest unix socket path the kernel accepts (sun_path holds 108
	// bytes including the terminating NUL).
	maxSocketPath = 107
	// startTimeout bounds pg_ctl's wait for the server to start or stop (seconds).
	startTimeout = "60"
	// serverLog is the server's log file, relative to the data directory.
	serverLog = "server.log"
)

// fixedSettings are the settings pglocal decides itself: the server must listen exactly where
// URL says it does.
var fixedSettings = []string{"listen_addresses", "unix_socket_directories", "port"}

// settingName matches valid PostgreSQL setting names; it also keeps names safe to pass through
// the shell that pg_ctl starts the server with.
var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// Start makes sure a server is running on opts.Dir and returns its cluster. It creates the
// cluster with initdb when the directory holds none yet. When a server from a previous run is
// still running on the directory (for example because chatd was killed with SIGKILL), Start
// reuses it instead of failing; that server keeps the settings it was started with.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("start PostgreSQL: no data directory given")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: resolve data directory %q: %w", opts.Dir, err)
	}
	if sock := socketPath(dir); len(sock) > maxSocketPath {
		return nil, fmt.Errorf("start PostgreSQL in %s: the server's unix socket %s would be %d bytes long, "+
			"more than the %d the system allows: choose a shorter data directory path",
			dir, sock, len(sock), maxSocketPath)
	}
	for name := range opts.Settings {
		if !settingName.MatchString(name) {
			return nil, fmt.Errorf("start PostgreSQL in %s: invalid setting name %q", dir, name)
		}
		if slices.Contains(fixedSettings, name) {
			return nil, fmt.Errorf("start PostgreSQL in %s: setting %q is decided by pglocal and cannot be overridden", dir, name)
		}
	}
	binDir, err := FindBinaries()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
	}
	runAs, err := RunUser()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
	}
	c := &Cluster{
		dir:      dir,
		binDir:   binDir,
		settings: maps.Clone(opts.Settings),
		logf:     opts.Logf,
		runAs:    runAs,
	}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	if os.Geteuid() == 0 {
		if c.cred, err = credential(runAs); err != nil {
			return nil, fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
		}
	}

	initialised, err := c.initialised()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
	}
	if !initialised {
		if err := c.initdb(ctx); err != nil {
			return nil, err
		}
	} else if c.cred != nil {
		// An existing cluster already belongs to the server user; only check the way in.
		if err := CheckReachable(dir); err != nil {
			return nil, fmt.Errorf("start PostgreSQL in %s: %w", dir, err)
		}
	}

	running, err := c.running(ctx)
	if err != nil {
		return nil, err
	}
	if running {
		c.logf("reusing the PostgreSQL server already running in %s", dir)
		c.reused = true
		return c, nil
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Stop shuts the server down (fast mode: open sessions are disconnected) and waits until it is
// gone, so that its directory can be removed or the server restarted. Stopping a server that is
// not running is not an error, so cleanup paths may call Stop unconditionally.
func (c *Cluster) Stop(ctx context.Context) error {
	running, err := c.running(ctx)
	if err != nil {
		return err
	}
	if !running {
		return nil
	}
	if out, err := c.pgCtl(ctx, "stop", "-D", c.dir, "-m", "fast", "-w", "-t", startTimeout); err != nil {
		return fmt.Errorf("stop PostgreSQL in %s: %w%s", c.dir, err, outputSuffix(out))
	}
	return nil
}

// Restart starts the server again after Stop, with the settings given to Start; outage tests
// use it to bring the database back.
func (c *Cluster) Restart(ctx context.Context) error {
	return c.start(ctx)
}

// URL returns a pgx connection URL for database on this cluster. It goes over the unix socket
// in the data directory, which is the only place the server listens.
func (c *Cluster) URL(database string) string {
	host := strings.ReplaceAll(url.QueryEscape(c.dir), "%2F", "/")
	return "postgres://" + role + "@/" + url.PathEscape(database) + "?host=" + host + "&sslmode=disable"
}

// EnsureDatabase creates database name unless it exists, because a fresh cluster holds only
// PostgreSQL's own databases. It is safe to call concurrently from several processes.
func (c *Cluster) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("ensure database %q: connect: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("ensure database %q: look it up: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
			return nil
		}
		return fmt.Errorf("ensure database %q: create it: %w", name, err)
	}
	return nil
}

// Dir returns the absolute data directory, for callers that keep files next to the cluster or
// remove it.
func (c *Cluster) Dir() string { return c.dir }

// RunUser returns the OS user the server runs as. PostgreSQL refuses to run as root, so when the
// current process is root the server runs as "postgres" (which PostgreSQL packages create), or
// as "nobody" when there is no such user; otherwise it runs as the current user.
func RunUser() (*user.User, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("look up the current user: %w", err)
		}
		return u, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err == nil {
			return u, nil
		}
		if !errors.As(err, new(user.UnknownUserError)) {
			return nil, fmt.Errorf("look up user %q to run PostgreSQL as: %w", name, err)
		}
	}
	return nil, errors.New(`PostgreSQL cannot run as root and neither user "postgres" nor "nobody" exists`)
}

// CheckReachable reports, when the current process is root, whether RunUser can enter every
// directory on the way to dir (and dir itself if it exists). Root can reach anything, so a data
// directory under, say, /root works for chatd but not for the server, which would fail with an
// obscure message; CheckReachable names the blocking directory instead. It returns nil when the
// current process is not root, since the server then runs as the same user.
func CheckReachable(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := RunUser()
	if err != nil {
		return err
	}
	uid, gids, err := ids(u)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("check that %s is reachable: %w", dir, err)
	}
	path, err := resolveExisting(abs)
	if err != nil {
		return fmt.Errorf("check that %s is reachable: %w", dir, err)
	}
	for _, p := range ancestors(path) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check that %s is reachable: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("check that %s is reachable: %s is not a directory", dir, p)
		}
		if !canSearch(fi, uid, gids) {
			return fmt.Errorf("PostgreSQL runs as user %q (chatd runs as root), but that user cannot enter %s (mode %04o): "+
				"choose a data directory that user can reach, or set DATABASE_URL", u.Username, p, fi.Mode().Perm())
		}
	}
	return nil
}

// FindBinaries returns the directory holding the PostgreSQL server binaries. It prefers what
// pg_config reports, then the newest Debian-style /usr/lib/postgresql/*/bin, then PATH. On
// Debian /usr/bin/pg_config may belong to libpq-dev and name a directory without the server,
// so every candidate must actually hold initdb, pg_ctl and postgres. The error wraps
// ErrNoBinaries when nothing is found.
func FindBinaries() (binDir string, err error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServer(dir) {
			return dir, nil
		}
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(dirs) > 0 {
		sort.Slice(dirs, func(i, j int) bool {
			return versionLess(filepath.Base(filepath.Dir(dirs[j])), filepath.Base(filepath.Dir(dirs[i])))
		})
		for _, dir := range dirs {
			if hasServer(dir) {
				return dir, nil
			}
		}
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		if dir := filepath.Dir(path); hasServer(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: install postgresql (Debian: apt-get install postgresql) or set DATABASE_URL", ErrNoBinaries)
}

// initialised reports whether the data directory already holds a cluster.
func (c *Cluster) initialised() (bool, error) {
	_, err := os.Stat(filepath.Join(c.dir, "PG_VERSION"))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("look for an existing cluster: %w", err)
	}
}

// initdb creates the cluster. The C.UTF-8 locale gives predictable sorting on every machine;
// systems without it fall back to --no-locale.
func (c *Cluster) initdb(ctx context.Context) error {
	c.logf("initialising PostgreSQL cluster in %s", c.dir)
	started := time.Now()
	args := []string{"-D", c.dir, "--auth=trust", "--username=" + role, "--encoding=UTF8"}
	if isOff(c.settings["fsync"]) {
		args = append(args, "--no-sync") // a cluster that never syncs need not be synced once
	}
	if err := c.prepareDir(); err != nil {
		return fmt.Errorf("initialise PostgreSQL cluster in %s: %w", c.dir, err)
	}
	out, err := c.run(ctx, "initdb", append(slices.Clip(args), "--locale=C.UTF-8")...)
	if err != nil && bytes.Contains(bytes.ToLower(out), []byte("locale")) {
		c.logf("initdb cannot use locale C.UTF-8, retrying without a locale")
		// A failed initdb cleans up after itself, possibly removing the directory.
		if err := c.prepareDir(); err != nil {
			return fmt.Errorf("initialise PostgreSQL cluster in %s: %w", c.dir, err)
		}
		out, err = c.run(ctx, "initdb", append(args, "--no-locale")...)
	}
	if err != nil {
		return fmt.Errorf("initialise PostgreSQL cluster in %s: initdb: %w%s", c.dir, err, outputSuffix(out))
	}
	c.logf("initialised PostgreSQL cluster in %s (%s)", c.dir, time.Since(started).Round(time.Millisecond))
	return nil
}

// prepareDir creates the data directory, and when running as root hands it to the server user,
// who must own it and be its only user (PostgreSQL insists on mode 0700 or 0750).
func (c *Cluster) prepareDir() error {
	if c.cred != nil {
		// Check before creating anything, so that an unreachable path leaves no debris.
		if err := CheckReachable(filepath.Dir(c.dir)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(c.dir), 0o755); err != nil {
		return fmt.Errorf("create parent of data directory: %w", err)
	}
	if err := os.Mkdir(c.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create data directory: %w", err)
	}
	if c.cred == nil {
		return nil
	}
	// Only an empty directory is handed over: a non-empty one is not ours to take, and initdb
	// rejects it with a clear message anyway.
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("read data directory: %w", err)
	}
	if len(entries) == 0 {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("give data directory to user %q: %w", c.runAs.Username, err)
		}
		if err := os.Chmod(c.dir, 0o700); err != nil {
			return fmt.Errorf("restrict data directory to user %q: %w", c.runAs.Username, err)
		}
	}
	// Checked again: directories just created by MkdirAll are subject to the umask.
	return CheckReachable(c.dir)
}

// running reports whether a server is running on the data directory. pg_ctl status exits with 3
// when no server runs, including when a stale postmaster.pid names a dead process.
func (c *Cluster) running(ctx context.Context) (bool, error) {
	out, err := c.pgCtl(ctx, "status", "-D", c.dir)
	if err == nil {
		return true, nil
	}
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok && exitErr.ExitCode() == 3 {
		return false, nil
	}
	return false, fmt.Errorf("check for a PostgreSQL server running in %s: %w%s", c.dir, err, outputSuffix(out))
}

// start starts the server and waits until it accepts connections.
func (c *Cluster) start(ctx context.Context) error {
	out, err := c.pgCtl(ctx, "start", "-D", c.dir, "-l", filepath.Join(c.dir, serverLog),
		"-w", "-t", startTimeout, "-o", c.serverOptions())
	if err != nil {
		return fmt.Errorf("start PostgreSQL in %s: %w%s%s", c.dir, err, outputSuffix(out), c.logTail())
	}
	return nil
}

// serverOptions renders the server's -c options. pg_ctl hands them to the server through
// /bin/sh, so every option is single-quoted.
func (c *Cluster) serverOptions() string {
	settings := map[string]string{
		"listen_addresses":        "",
		"unix_socket_directories": `"` + strings.ReplaceAll(c.dir, `"`, `""`) + `"`,
		"port":                    strconv.Itoa(port),
	}
	maps.Copy(settings, c.settings)
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("-c " + shellQuote(name+"="+settings[name]))
	}
	return b.String()
}

// pgCtl runs pg_ctl as the server user and returns its combined output.
func (c *Cluster) pgCtl(ctx context.Context, args ...string) ([]byte, error) {
	return c.run(ctx, "pg_ctl", args...)
}

// run runs one of the PostgreSQL programs as the server user and returns its combined output.
func (c *Cluster) run(ctx context.Context, program string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, program), args...)
	cmd.Env = c.env()
	// A process group of its own keeps the server that pg_ctl starts out of the terminal's
	// foreground group, so a Ctrl-C meant for chatd does not shut PostgreSQL down behind
	// chatd's back: chatd stops it itself, or reuses it after a crash.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.cred}
	if c.cred != nil {
		// The server user may not be able to enter our working directory.
		cmd.Dir = "/"
	}
	// The server that pg_ctl starts writes to its log file, not to our pipe; still, never wait
	// forever for a pipe some descendant might hold open.
	cmd.WaitDelay = 10 * time.Second
	return cmd.CombinedOutput()
}

// env is the environment of the PostgreSQL programs: ours without PG* variables (PGDATA, PGPORT
// and friends would change what they do), with the server user's HOME when that is another user.
func (c *Cluster) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		if c.cred != nil && (strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "USER=") || strings.HasPrefix(kv, "LOGNAME=")) {
			continue
		}
		env = append(env, kv)
	}
	if c.cred != nil {
		env = append(env, "HOME="+c.runAs.HomeDir, "USER="+c.runAs.Username, "LOGNAME="+c.runAs.Username)
	}
	return env
}

// logTail returns the end of the server log, formatted to be appended to an error: the reason a
// server did not start is written there, not to pg_ctl's output.
func (c *Cluster) logTail() string {
	f, err := os.Open(filepath.Join(c.dir, serverLog))
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxTail = 4096
	if fi, err := f.Stat(); err == nil && fi.Size() > maxTail {
		if _, err := f.Seek(-maxTail, io.SeekEnd); err != nil {
			return ""
		}
	}
	tail, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(tail), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\nend of " + filepath.Join(c.dir, serverLog) + ":\n" + strings.Join(lines, "\n")
}

// outputSuffix formats a program's output to be appended to an error.
func outputSuffix(out []byte) string {
	if s := strings.TrimSpace(string(out)); s != "" {
		return ": " + s
	}
	return ""
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// isOff reports whether a boolean setting value means off.
func isOff(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "false", "no", "0":
		return true
	}
	return false
}

// socketPath is the path of the server's unix socket for data directory dir.
func socketPath(dir string) string {
	return filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
}

// hasServer reports whether dir holds the programs pglocal runs.
func hasServer(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// versionLess orders PostgreSQL major version directory names such as "9.6" and "15"
// numerically; names that are not versions sort first.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) || i < len(pb); i++ {
		na, nb := -1, -1
		if i < len(pa) {
			if n, err := strconv.Atoi(pa[i]); err == nil {
				na = n
			}
		}
		if i < len(pb) {
			if n, err := strconv.Atoi(pb[i]); err == nil {
				nb = n
			}
		}
		if na != nb {
			return na < nb
		}
	}
	return false
}

// credential is what the PostgreSQL programs run with when the current process is root.
func credential(u *user.User) (*syscall.Credential, error) {
	uid, gids, err := ids(u)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uid, Gid: gids[0], Groups: gids[1:]}, nil
}

// ids returns u's uid and its group ids, primary group first.
func ids(u *user.User) (uid uint32, gids []uint32, err error) {
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, nil, fmt.Errorf("parse uid of user %q: %w", u.Username, err)
	}
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, nil, fmt.Errorf("parse gid of user %q: %w", u.Username, err)
	}
	gids = []uint32{uint32(g)}
	// Without supplementary groups the check is merely stricter than the kernel's.
	groups, _ := u.GroupIds()
	for _, s := range groups {
		if g, err := strconv.ParseUint(s, 10, 32); err == nil && !slices.Contains(gids, uint32(g)) {
			gids = append(gids, uint32(g))
		}
	}
	return uint32(n), gids, nil
}

// resolveExisting resolves symbolic links in the longest existing prefix of the absolute path
// p, since the directories that must be entered are those the links lead to.
func resolveExisting(p string) (string, error) {
	rest := ""
	for {
		resolved, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(resolved, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// ancestors returns "/" and every existing directory on the way to the absolute path p,
// including p itself when it exists.
func ancestors(p string) []string {
	var out []string
	for cur := p; ; cur = filepath.Dir(cur) {
		if _, err := os.Stat(cur); err == nil {
			out = append(out, cur)
		}
		if cur == filepath.Dir(cur) {
			break
		}
	}
	slices.Reverse(out)
	return out
}

// canSearch reports whether a process with uid and groups gids may enter directory fi, by the
// same owner/group/other rule the kernel applies (ACLs are not considered).
func canSearch(fi os.FileInfo, uid uint32, gids []uint32) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // cannot tell; let the server report it
	}
	mode := fi.Mode().Perm()
	switch {
	case st.Uid == uid:
		return mode&0o100 != 0
	case slices.Contains(gids, st.Gid):
		return mode&0o010 != 0
	default:
		return mode&0o001 != 0
	}
}
