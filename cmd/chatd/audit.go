package main

import (
	"context"
	"encoding/json"
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
		return nil, nil, fmt.Errorf("connect to NATS at %s (is chatd running, or set CHAT_NATS_URL): %w", redactURLs(url), err)
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

// runAudit is `chatd audit export|verify`. Both read the stream over NATS, from CHAT_NATS_URL or
// the running chatd's embedded server (CHAT_NATS_LISTEN), and never touch PostgreSQL.
func runAudit(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	switch {
	case len(args) > 0 && args[0] == "export":
		return runAuditExport(ctx, args[1:], getenv, stdout, stderr)
	case len(args) > 0 && args[0] == "verify":
		return runAuditVerify(ctx, args[1:], getenv, stdout, stderr)
	}
	return errors.New("usage: chatd audit export|verify [flags] (see chatd audit export -h)")
}

// auditStream connects an audit command to the events stream, configured as chatd is.
func auditStream(ctx context.Context, getenv func(string) string, stderr io.Writer) (*nats.Conn, jetstream.Stream, error) {
	cfg, _, err := parseConfig("chatd", nil, getenv, stderr)
	if err != nil {
		return nil, nil, err
	}
	return toolStream(ctx, cfg, "chatd audit")
}

// errTampered is the result of a verification that found problems.
var errTampered = errors.New("the event log failed verification")

// runAuditVerify is `chatd audit verify [--conversation id] [--json]`: it checks the hash chains
// and prints each problem, first broken link first; it fails when there is any.
func runAuditVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conv := fs.String("conversation", "", "verify only this conversation's chain")
	asJSON := fs.Bool("json", false, "print problems and the summary as JSON Lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nc, stream, err := auditStream(ctx, getenv, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	enc := json.NewEncoder(stdout)
	res, err := streams.Verify(ctx, stream, *conv, func(p streams.Problem) error {
		if *asJSON {
			return enc.Encode(p)
		}
		_, err := fmt.Fprintln(stdout, p)
		return err
	})
	if err != nil {
		return err
	}
	if *asJSON {
		_ = enc.Encode(map[string]any{"summary": res})
	} else {
		fmt.Fprintf(stdout, "verified %d events in %d chains up to seq %d: %d problems\n", res.Events, res.Chains, res.LastSeq, res.Problems)
	}
	if res.Problems > 0 {
		return errTampered
	}
	return nil
}

func runAuditExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
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
	if err := fs.Parse(args); err != nil {
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
	nc, stream, err := auditStream(ctx, getenv, stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	n, err := streams.Export(ctx, stream, f, stdout)
	fmt.Fprintf(stderr, "exported %d events\n", n)
	return err
}
