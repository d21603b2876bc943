// Command chatd is the chat backend: the REST API, the projector and, by default, an embedded
// NATS server and a private PostgreSQL cluster, all in one process.
//
//	chatd             run the server (the default)
//	chatd migrate     bring the read-model schema up to date and exit
//	chatd token --user alice [--ttl 1h] [--admin]   print a user token for local use
//	chatd audit export [--conversation ID] [--actor U] [--type T] [--from-seq N] [--to-seq N]
//	                   [--since T] [--until T]       write the event log as JSON Lines
//	chatd replay --verify   rebuild the read models into a scratch schema and compare
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chatd:", err)
		os.Exit(1)
	}
}

// run is chatd's whole life, with its dependencies passed in so tests can start it on port 0.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "serve" || args[0] == "migrate" || args[0] == "token" || args[0] == "audit" || args[0] == "replay") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "migrate":
		return runMigrate(ctx, args, getenv, stdout, stderr)
	case "token":
		return runToken(args, getenv, stdout, stderr)
	case "audit":
		return runAudit(ctx, args, getenv, stdout, stderr)
	case "replay":
		return runReplay(ctx, args, getenv, stdout, stderr)
	}
	return runServe(ctx, args, getenv, stdout, stderr)
}
