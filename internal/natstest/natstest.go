// Package natstest gives tests a real, in-process NATS server with JetStream on a random port,
// with its store in a temporary directory.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RunServer starts a server storing under dir (t.TempDir() when empty) and shuts it down in
// Cleanup. Passing the same dir to a second server after the first stopped restarts the store.
func RunServer(tb testing.TB, dir string) *server.Server {
	tb.Helper()
	return RunServerAt(tb, dir, "127.0.0.1:0")
}

// RunServerAt is RunServer on a given address, so that a test can restart a server where
// clients expect it.
func RunServerAt(tb testing.TB, dir, listen string) *server.Server {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	s, err := streams.RunServer(streams.ServerConfig{StoreDir: dir, Listen: listen, SyncInterval: time.Minute})
	if err != nil {
		tb.Fatalf("start nats: %v", err)
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect connects to s and closes the connection in Cleanup.
func Connect(tb testing.TB, s *server.Server) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect to nats: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// TestEpochSize is the epoch size of the streams tests set up (unless they ask for another):
// small, so that conversations in tests cross epochs all the time (see streams.Layout).
const TestEpochSize = 4

// Stream sets up the events stream on nc and returns JetStream and the stream.
func Stream(tb testing.TB, nc *nats.Conn, cfg streams.Config) (jetstream.JetStream, jetstream.Stream) {
	tb.Helper()
	if cfg.EpochSize == 0 {
		cfg.EpochSize = TestEpochSize
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := streams.Setup(ctx, js, cfg)
	if err != nil {
		tb.Fatalf("setup stream: %v", err)
	}
	return js, st
}

// Presence starts a server, sets up the presence bucket on it and returns JetStream and the
// presence tracker.
func Presence(tb testing.TB) (jetstream.JetStream, *streams.Presence) {
	tb.Helper()
	js, err := jetstream.New(Connect(tb, RunServer(tb, "")))
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := streams.SetupPresence(ctx, js, 1)
	if err != nil {
		tb.Fatalf("setup presence: %v", err)
	}
	return js, p
}
