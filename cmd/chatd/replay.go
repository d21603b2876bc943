package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/chatd-dev/chatd/projections"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// runReplay is `chatd replay`: rebuild the read models from the stream into fresh tables while
// the live ones keep serving, then switch over to them. With --verify it rebuilds into a scratch
// schema instead, compares with the live read models, and fails if they differ.
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verify := fs.Bool("verify", false, "rebuild into a scratch schema and compare with the live read models (changes nothing)")
	keepOld := fs.Bool("keep-old", false, "keep the replaced tables in a schema of their own instead of dropping them")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg, _, err := parseConfig("chatd", nil, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	nc, stream, err := toolStream(ctx, cfg, "chatd replay")
	if err != nil {
		return err
	}
	defer nc.Close()
	dbURL, stop, err := database(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer stop()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()

	if !*verify {
		res, err := projections.Rebuild(ctx, pool, nc, stream, log, projections.RebuildOptions{KeepOld: *keepOld, Progress: progress(stderr)})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "read models rebuilt from %d events and switched over at seq %d in %s (%.0f events/s)\n",
			res.Events, res.Seq, res.Took.Round(time.Millisecond), float64(res.Events)/res.Took.Seconds())
		if res.OldSchema != "" {
			fmt.Fprintf(stdout, "the replaced tables are in schema %s; drop it with: DROP SCHEMA %s CASCADE\n", res.OldSchema, res.OldSchema)
		}
		return nil
	}
	res, err := projections.Verify(ctx, pool, nc, stream, log, progress(stderr))
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "table\tlive rows\trebuilt rows\tsame\n")
	for _, t := range res.Tables {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\n", t.Table, t.LiveRows, t.RebuiltRows, t.Equal())
	}
	_ = tw.Flush()
	if !res.Equal() {
		return fmt.Errorf("the read models differ from a rebuild of the stream up to seq %d", res.Seq)
	}
	fmt.Fprintf(stdout, "read models identical to a rebuild of the stream up to seq %d\n", res.Seq)
	return nil
}

// progress shows a bar on a terminal and plain lines otherwise.
func progress(w io.Writer) func(done, total uint64) {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		var bar *progressbar.ProgressBar
		return func(done, total uint64) {
			if bar == nil {
				bar = progressbar.NewOptions64(int64(total), progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("rebuilding"),
					progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"), progressbar.OptionSetPredictTime(true))
			}
			bar.ChangeMax64(int64(total))
			_ = bar.Set64(int64(done))
		}
	}
	var last uint64
	return func(done, total uint64) {
		if done-last >= 10_000 || done == total {
			last = done
			fmt.Fprintf(w, "rebuilt %d of %d events\n", done, total)
		}
	}
}
