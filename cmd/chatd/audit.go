package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// toolStream connects a command-line tool to the events stream: CHAT_NATS_URL, or the running
// chatd's embedded server at CHAT_NATS_LISTEN (the tool cannot open the store chatd holds).
func toolStream(ctx context.Context, cfg Config, name string) (*nats.Conn, jetstream.Stream, error) {
	url := cfg.NATSURL
	if url == "" {
		url = "nats://" + cfg.NATSListen
	}
	nc, err := nats.Connect(url, nats.Name(name))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s (is chatd running, or set CHAT_NATS_URL): %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	stream, err := js.Stream(ctx, streams.StreamName)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("stream %s: %w", streams.StreamName, err)
	}
	return nc, stream, nil
}

// runAudit is `chatd audit export`: the event log as JSON Lines on standard output. It reads
// the stream over NATS, from CHAT_NATS_URL or the running chatd's embedded server
// (CHAT_NATS_LISTEN), and never touches PostgreSQL.
func runAudit(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		return errors.New("usage: chatd audit export [flags] (see chatd audit export -h)")
	}
	fs := flag.NewFlagSet("chatd audit export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f streams.ExportFilter
	var since, until string
	fs.StringVar(&f.ConversationID, "conversation", "", "only this conversation's events")
	fs.StringVar(&f.Actor, "actor", "", "only events by this user (or \"service\")")
	fs.StringVar(&f.Type, "type", "", "only events of this type, e.g. message.deleted")
	fs.Uint64Var(&f.FromSeq, "from-seq", 0, "first stream sequence")
	fs.Uint64Var(&f.ToSeq, "to-seq", 0, "last stream sequence")
	fs.StringVar(&since, "since", "", "first time (RFC 3339)")
	fs.StringVar(&until, "until", "", "last time (RFC 3339)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	for _, t := range []struct {
		v   string
		dst *time.Time
	}{{since, &f.Since}, {until, &f.Until}} {
		if t.v == "" {
			continue
		}
		var err error
		if *t.dst, err = time.Parse(time.RFC3339, t.v); err != nil {
			return fmt.Errorf("%q is not an RFC 3339 time: %w", t.v, err)
		}
	}
	cfg, _, err := parseConfig("chatd", nil, getenv, stderr)
	if err != nil {
		return err
	}
	nc, stream, err := toolStream(ctx, cfg, "chatd audit")
	if err != nil {
		return err
	}
	defer nc.Close()
	n, err := streams.Export(ctx, stream, f, stdout)
	fmt.Fprintf(stderr, "exported %d events\n", n)
	return err
}
