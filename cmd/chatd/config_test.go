package main

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// The configuration chatd prints at start, and its connection errors, never show the
// credentials of a NATS URL (the only way to give chatd NATS credentials).
func TestNATSURLCredentialsAreMasked(t *testing.T) {
	for in, want := range map[string]string{
		"nats://chatd:hunter2@nats-1:4222,nats://chatd:hunter2@nats-2:4222": "nats://REDACTED@nats-1:4222,nats://REDACTED@nats-2:4222",
		"nats://tok3n@nats:4222": "nats://REDACTED@nats:4222",
		"nats://nats:4222":       "nats://nats:4222",
		"":                       "",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
	env := map[string]string{"CHAT_NATS_URL": "nats://chatd:hunter2@nats:4222", "DATABASE_URL": "postgres://chatd:pw@db/chatd",
		"CHAT_SERVICE_KEY": strings.Repeat("k", 32), "CHAT_JWT_SECRET": strings.Repeat("s", 32)}
	cfg, _, err := parseConfig("chatd", nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cfg.print(&out)
	if strings.Contains(out.String(), "hunter2") || strings.Contains(out.String(), ":pw@") || !strings.Contains(out.String(), "nats://REDACTED@nats:4222") {
		t.Fatalf("printed configuration:\n%s", out.String())
	}
}

// Settings that would be silently replaced by a default are refused instead, and a service key
// mounted from a file with its trailing newline still matches what hosts send.
func TestConfigRefusesWhatItWouldIgnore(t *testing.T) {
	parse := func(env map[string]string) (Config, error) {
		cfg, _, err := parseConfig("chatd", nil, func(k string) string { return env[k] }, &strings.Builder{})
		return cfg, err
	}
	for _, env := range []map[string]string{{"CHAT_LOG_LEVEL": "verbose"}, {"CHAT_LOG_FORMAT": "JSON"}} {
		if _, err := parse(env); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
	cfg, err := parse(map[string]string{"CHAT_SERVICE_KEY": strings.Repeat("k", 32) + "\n", "CHAT_LOG_LEVEL": "debug", "CHAT_LOG_FORMAT": "json"})
	if err != nil || cfg.ServiceKey != strings.Repeat("k", 32) {
		t.Fatalf("service key %q, %v", cfg.ServiceKey, err)
	}
}

// The demo host site (which mints tokens for whoever opens it) is on by default only on the
// embedded defaults; against external servers it runs only when asked for.
func TestDemoIsOffAgainstExternalServers(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want bool
	}{
		{map[string]string{}, nil, true},
		{map[string]string{"DATABASE_URL": "postgres://db/chatd"}, nil, false},
		{map[string]string{"DATABASE_URL": "postgres://db/chatd", "CHAT_DEMO_ADDR": "127.0.0.1:9000"}, nil, true},
		{map[string]string{"DATABASE_URL": "postgres://db/chatd"}, []string{"-demo-addr", "127.0.0.1:9000"}, true},
	} {
		cfg, _, err := parseConfig("chatd", tc.args, func(k string) string { return tc.env[k] }, &strings.Builder{})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.demo() != tc.want {
			t.Errorf("%v %v: demo %v, want %v", tc.env, tc.args, cfg.demo(), tc.want)
		}
	}
}

// An external NATS that does not answer at start is named in the error, with what to check,
// rather than surfacing as the first request's unrelated failure.
func TestUnreachableNATSIsNamed(t *testing.T) {
	defer func(was time.Duration) { natsConnectWait = was }(natsConnectWait)
	natsConnectWait = 500 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	env := baseEnv(t)
	env["CHAT_NATS_URL"] = "nats://chatd:hunter2@" + addr
	err = run(context.Background(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "cannot reach NATS at nats://REDACTED@"+addr) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("start with NATS unreachable: %v", err)
	}
}

// chatd token run away from the server's data directory refuses, instead of generating secrets
// of its own and printing a token the server rejects; with the server's secret it mints one.
func TestTokenNeedsTheServersSecret(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"CHAT_DATA_DIR": dir}
	getenv := func(k string) string { return env[k] }
	var out strings.Builder
	if err := runToken([]string{"--user", "alice"}, getenv, &out, io.Discard); err == nil || !strings.Contains(err.Error(), "jwt-secret does not exist") {
		t.Fatalf("token without the server's secret: %v (printed %q)", err, out.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("chatd token wrote %d files into the data directory", len(entries))
	}
	env["CHAT_JWT_SECRET"] = strings.Repeat("s", 32)
	if err := runToken([]string{"--user", "alice"}, getenv, &out, io.Discard); err != nil || strings.Count(out.String(), ".") != 2 {
		t.Fatalf("token with the secret: %v, printed %q", err, out.String())
	}
}
