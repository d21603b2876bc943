package streams

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerConfig configures the embedded NATS server.
type ServerConfig struct {
	StoreDir string // JetStream file store
	Listen   string // host:port of the client listener; port 0 or -1 picks a free one
	// SyncInterval is how often JetStream fsyncs its files; 0 means "always" (fsync before every
	// acknowledgement). Writes reach the OS before each ack either way, so a killed process loses
	// nothing; the interval bounds what an OS crash or power loss can take.
	SyncInterval time.Duration
}

// RunServer starts an embedded NATS server with JetStream and waits until it takes clients.
func RunServer(cfg ServerConfig) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: "chatd-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true, // chatd owns signal handling and shuts the server down in order
		NoLog:      true,
	}
	if cfg.SyncInterval <= 0 {
		opts.SyncAlways = true
	} else {
		opts.SyncInterval = cfg.SyncInterval
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("configure embedded nats: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats did not become ready on %s (is the port in use?)", cfg.Listen)
	}
	return s, nil
}
