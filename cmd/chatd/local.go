package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/chatd-dev/chatd/api"
	"github.com/chatd-dev/chatd/internal/pglocal"
)

// database returns the URL of DATABASE_URL, or starts the private cluster under the data
// directory and returns its URL. The returned func stops the cluster when this process owns
// it: always for the server (a server found running was left by a killed chatd), and for the
// other commands only when they started it (a running chatd keeps its database).
func database(ctx context.Context, cfg Config, log *slog.Logger, server bool) (string, func(), error) {
	if cfg.DatabaseURL != "" {
		return cfg.DatabaseURL, func() {}, nil
	}
	dir, err := clusterDir(cfg.DataDir, log)
	if err != nil {
		return "", nil, err
	}
	cluster, err := pglocal.Start(ctx, pglocal.Options{
		Dir:  dir,
		Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
	})
	if err != nil {
		return "", nil, fmt.Errorf("start the private PostgreSQL (or set DATABASE_URL): %w", err)
	}
	stop := func() {
		if !server && cluster.Reused() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cluster.Stop(ctx); err != nil {
			log.Warn("stop PostgreSQL", "err", err)
		}
	}
	if err := cluster.EnsureDatabase(ctx, "chatd"); err != nil {
		stop()
		return "", nil, err
	}
	log.Info("private PostgreSQL running", "dir", dir)
	return cluster.URL("chatd"), stop, nil
}

// lockDataDir makes this chatd the only one serving from dir while it runs: a second one would
// open the same JetStream store as the first's embedded NATS (the source of truth), and stop the
// first's PostgreSQL when it exits. The lock is the kernel's (flock), so it ends with the
// process, however it ends.
func lockDataDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "chatd.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another chatd is serving from the data directory %s (it holds %s): give each chatd a CHAT_DATA_DIR of its own", dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// clusterDir is <data>/postgres, unless chatd runs as root and the user PostgreSQL runs as
// cannot reach it (a checkout under a 0700 home directory): then the cluster lives under
// /var/lib/chatd, keyed by the data directory, and chatd says so.
func clusterDir(dataDir string, log *slog.Logger) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("data directory %s: %w", dataDir, err)
	}
	dir := filepath.Join(abs, "postgres")
	reachErr := pglocal.CheckReachable(dir)
	if reachErr == nil {
		return dir, nil
	}
	sum := sha256.Sum256([]byte(abs))
	alt := filepath.Join("/var/lib/chatd", hex.EncodeToString(sum[:6]), "postgres")
	if err := os.MkdirAll(filepath.Dir(alt), 0o755); err != nil {
		return "", fmt.Errorf("%v; and the fallback %s cannot be created: %w", reachErr, alt, err)
	}
	if err := pglocal.CheckReachable(alt); err != nil {
		return "", fmt.Errorf("%v; the fallback %s is not reachable either (%v): set CHAT_DATA_DIR to a directory that user can reach, or DATABASE_URL", reachErr, alt, err)
	}
	log.Warn("PostgreSQL cannot run under the data directory; using a fallback", "reason", reachErr, "dir", alt)
	return alt, nil
}

// secrets returns the service key and JWT secret: from the configuration, or, when unset,
// generated on first start into the data directory (mode 0600) and read from there later.
func secrets(cfg Config, log *slog.Logger) (serviceKey, jwtSecret string, err error) {
	serviceKey, err = secretFile(cfg.ServiceKey, filepath.Join(cfg.DataDir, "service-key"), log)
	if err != nil {
		return "", "", err
	}
	jwtSecret, err = secretFile(cfg.JWTSecret, filepath.Join(cfg.DataDir, "jwt-secret"), log)
	return serviceKey, jwtSecret, err
}

func secretFile(configured, path string, log *slog.Logger) (string, error) {
	if configured != "" {
		return configured, nil
	}
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < api.MinSecretBytes {
			return "", fmt.Errorf("%s holds fewer than %d bytes; delete it to generate a new one", path, api.MinSecretBytes)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	s := base64.RawURLEncoding.EncodeToString(raw[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create data directory: %w", err)
	}
	// O_EXCL: two processes starting at once must not each write a different secret.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return secretFile("", path, log)
	}
	if err != nil {
		return "", fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(s + "\n"); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	log.Info("generated a secret; the host site needs it", "file", path)
	return s, f.Sync()
}

// runToken prints a user token signed with the configured (or generated) JWT secret.
func runToken(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "user id the token is for (required)")
	ttl := fs.Duration("ttl", time.Hour, "lifetime of the token")
	admin := fs.Bool("admin", false, "grant the admin claim (audit export)")
	// The remaining settings (data dir, secret) come from the environment as for the server.
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("chatd token: --user is required")
	}
	cfg, _, err := parseConfig("chatd", nil, getenv, stderr)
	if err != nil {
		return err
	}
	// A token is only as good as the secret the server checks it with: never generate one here.
	if path := filepath.Join(cfg.DataDir, "jwt-secret"); cfg.JWTSecret == "" {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("chatd token: CHAT_JWT_SECRET is unset and %s does not exist: run it where chatd serves (its CHAT_DATA_DIR), or set CHAT_JWT_SECRET", path)
		}
	}
	log := newLogger(cfg, stderr)
	serviceKey, jwtSecret, err := secrets(cfg, log)
	if err != nil {
		return err
	}
	auth, err := api.NewAuth(serviceKey, jwtSecret, max(cfg.TokenMaxTTL, *ttl))
	if err != nil {
		return err
	}
	tok, _, err := auth.Mint(*user, *ttl, *admin)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
