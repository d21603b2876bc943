package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/chatd-dev/chatd/api"
	"github.com/chatd-dev/chatd/metrics"
	"github.com/chatd-dev/chatd/migrations"
	"github.com/chatd-dev/chatd/projections"
	"github.com/chatd-dev/chatd/streams"
	"github.com/chatd-dev/chatd/web"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, rest, err := parseConfig("chatd", args, getenv, stderr)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
	}
	log := newLogger(cfg, stderr)
	// 0755: the private PostgreSQL runs as another user when chatd is root and must reach
	// <data>/postgres; the secrets inside are files of mode 0600.
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if cfg.NATSURL == "" || cfg.DatabaseURL == "" {
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return err
		}
		defer unlock()
	}
	fmt.Fprintln(stdout, "chatd configuration:")
	cfg.print(stdout)

	// Everything started is pushed onto closers; at exit they run last first, which is the
	// shutdown order: HTTP stops accepting, the projector finishes its batch, NATS drains, the
	// pool closes, then the embedded servers stop.
	closers := &closers{log: log}
	defer closers.run()
	natsConn, stopNATS, err := connectNATS(cfg, log)
	if err != nil {
		return err
	}
	closers.push("nats", stopNATS)

	dbURL, stopPG, err := database(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	closers.push("postgres", stopPG)
	if err := migrate(ctx, dbURL); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	closers.push("pool", pool.Close)

	js, err := jetstream.New(natsConn)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stream, err := streams.Setup(ctx, js, streams.Config{Replicas: cfg.StreamReplicas, DuplicateWindow: cfg.DuplicateWindow, DenyDelete: cfg.DenyDelete})
	if err != nil {
		return err
	}
	closers.push("nats drain", func() { drain(natsConn) })

	presence, err := streams.SetupPresence(ctx, js, cfg.StreamReplicas)
	if err != nil {
		return err
	}

	serviceKey, jwtSecret, err := secrets(cfg, log)
	if err != nil {
		return err
	}
	auth, err := api.NewAuth(serviceKey, jwtSecret, cfg.TokenMaxTTL)
	if err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	m := metrics.New(registry)
	store, err := streams.NewStore(js, stream, cfg.Limits)
	if err != nil {
		return err
	}
	store.Metrics = m
	projector := projections.NewProjector(pool, natsConn, stream, log)
	projector.Publish = projections.PublishPush(natsConn)
	projector.Metrics = m
	projCtx, stopProjector := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { projector.Run(projCtx) })
	closers.push("projector", func() { stopProjector(); wg.Wait() })

	// Listen before building the API: the page for iframes needs the demo's origin.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	publicURL := strings.TrimRight(cfg.PublicURL, "/")
	if publicURL == "" {
		publicURL = "http://" + displayAddr(ln.Addr())
	}
	origins := cfg.origins()
	var demoLn net.Listener
	if cfg.demo() {
		if demoLn, err = net.Listen("tcp", cfg.DemoAddr); err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on %s for the demo host site (CHAT_DEMO_ADDR=off turns it off): %w", cfg.DemoAddr, err)
		}
		origins = append(origins, loopbackOrigins(demoLn.Addr())...)
	}

	rebuilds := projections.NewRebuilds(pool, natsConn, stream, log)
	closers.push("rebuild", rebuilds.Close)

	feed := projections.NewFeed(natsConn, stream, pool)
	closers.push("push dispatcher", feed.Close)

	hub := api.NewHub()
	handler := api.New(api.Deps{
		Commands:       store,
		Users:          projections.NewUsers(pool),
		Conversations:  projections.NewConversations(pool),
		Messages:       projections.NewMessages(pool),
		Projector:      projector,
		Rebuilds:       rebuilds,
		Feed:           feed,
		Presence:       presence,
		Hub:            hub,
		Web:            web.App(origins),
		WS:             api.WSConfig{AllowedOrigins: origins, SendQueue: cfg.WSSendQueue, MaxReplay: cfg.WSMaxReplay},
		Auth:           auth,
		Metrics:        m,
		MetricsHandler: promhttp.HandlerFor(registry, promhttp.HandlerOpts{}),
		Log:            log,
		MinSeqTimeout:  cfg.MinSeqTimeout,
		MaxBodyBytes:   int64(cfg.MaxBodyBytes),
		Checks: []api.Check{
			{Name: "nats", Check: func(context.Context) error {
				if s := natsConn.Status(); s != nats.CONNECTED {
					return fmt.Errorf("nats connection is %s", s)
				}
				return nil
			}},
			{Name: "postgres", Check: func(ctx context.Context) error { return pool.Ping(ctx) }},
		},
	})

	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if demoLn != nil {
		demo := &http.Server{Handler: web.Demo(web.DemoConfig{ChatURL: publicURL, ServiceKey: serviceKey, Users: web.DemoUsers}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = demo.Serve(demoLn) }()
		closers.push("demo listener", func() { _ = demo.Close() })
		fmt.Fprintf(stdout, "chatd demo host site on http://%s (open it to try the chat)\n", displayAddr(demoLn.Addr()))
	}
	fmt.Fprintf(stdout, "chatd listening on %s\n", publicURL)
	if cfg.AdminAddr != "" {
		admin, err := serveAdmin(cfg.AdminAddr, log)
		if err != nil {
			return err
		}
		closers.push("admin listener", func() { _ = admin.Close() })
		fmt.Fprintf(stdout, "chatd admin (pprof) listening on http://%s\n", admin.Addr)
	}

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http shutdown", "err", err)
	}
	// Hijacked WebSocket connections are not closed by Shutdown: say "going away" to each, and
	// wait until each has taken back its user's presence (NATS closes after this).
	if err := hub.CloseAll(shutdownCtx); err != nil {
		log.Warn("websocket shutdown", "err", err)
	}
	return nil
}

// serveAdmin serves the pprof endpoints on their own listener, which should be loopback only:
// profiles reveal internals and cost CPU.
func serveAdmin(addr string, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen on %s: %w", addr, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("the admin (pprof) listener is not on loopback", "addr", ln.Addr())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: ln.Addr().String(), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// closers runs shutdown steps in reverse order of start, logging how long each took.
type closers struct {
	log   *slog.Logger
	names []string
	fns   []func()
}

func (c *closers) push(name string, fn func()) {
	c.names, c.fns = append(c.names, name), append(c.fns, fn)
}

func (c *closers) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		start := time.Now()
		c.fns[i]()
		c.log.Debug("stopped", "part", c.names[i], "took", time.Since(start))
	}
}

// drain flushes what the connection still has to send and waits (bounded) until it is closed.
func drain(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		return
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
	}
}

// displayAddr turns ":8080" into "127.0.0.1:8080"-style text a person can click.
func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	return fmt.Sprintf("localhost:%d", tcp.Port)
}

// loopbackOrigins are the origins a browser on this machine uses for a listener: the demo is
// reached as http://localhost:port as often as by its address.
func loopbackOrigins(a net.Addr) []string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !(tcp.IP.IsLoopback() || tcp.IP.IsUnspecified()) {
		return []string{"http://" + a.String()}
	}
	return []string{fmt.Sprintf("http://localhost:%d", tcp.Port), fmt.Sprintf("http://127.0.0.1:%d", tcp.Port)}
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// natsConnectWait bounds how long chatd waits at start for an external NATS to answer.
var natsConnectWait = 10 * time.Second

// connectNATS connects to CHAT_NATS_URL, or starts the embedded server and connects to it.
func connectNATS(cfg Config, log *slog.Logger) (*nats.Conn, func(), error) {
	opts := []nats.Option{
		nats.Name("chatd"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		// No buffering while disconnected: an append then fails at once (503) instead of waiting
		// out its timeout, and nothing is half-sent after the reconnect.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats", "subject", sub.Subject, "err", err) // dropped pushes: see Feed
				return
			}
			log.Warn("nats", "err", err)
		}),
	}
	if cfg.NATSURL != "" {
		nc, err := nats.Connect(cfg.NATSURL, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(cfg.NATSURL), err)
		}
		// The connection retries in the background (RetryOnFailedConnect); without waiting,
		// a NATS that is not there yet would surface as the first request's unrelated error.
		for deadline := time.Now().Add(natsConnectWait); !nc.IsConnected(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				last := nc.LastError()
				nc.Close()
				return nil, nil, fmt.Errorf("cannot reach NATS at %s within %v (is it running, and is CHAT_NATS_URL right?): %v",
					redactURLs(cfg.NATSURL), natsConnectWait, last)
			}
		}
		return nc, nc.Close, nil
	}
	sync := time.Duration(0)
	if cfg.NATSSync != "always" {
		sync, _ = time.ParseDuration(cfg.NATSSync) // validated
	}
	storeDir := cfg.DataDir + "/nats"
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create NATS store: %w", err)
	}
	ns, err := streams.RunServer(streams.ServerConfig{StoreDir: storeDir, Listen: cfg.NATSListen, SyncInterval: sync})
	if err != nil {
		return nil, nil, err
	}
	log.Info("embedded NATS running", "url", ns.ClientURL(), "store", storeDir, "sync", cfg.NATSSync)
	nc, err := nats.Connect(ns.ClientURL(), opts...)
	if err != nil {
		ns.Shutdown()
		return nil, nil, fmt.Errorf("connect to embedded NATS: %w", err)
	}
	return nc, func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}, nil
}

// migrate brings the read-model schema up to date.
func migrate(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL for migrations: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return migrations.Migrate(ctx, conn)
}

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, _, err := parseConfig("chatd migrate", args, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	dbURL, stop, err := database(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer stop()
	if err := migrate(ctx, dbURL); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}
