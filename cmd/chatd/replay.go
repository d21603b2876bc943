package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/chatd-dev/chatd/projections"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// runReplay is `chatd replay --verify`: rebuild the read models from the stream into a scratch
// schema, compare them with the live ones, and fail if they differ. (Rebuilding into fresh
// tables and switching over is not built yet; to rebuild today, start chatd on an empty
// database.)
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatd replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verify := fs.Bool("verify", false, "rebuild into a scratch schema and compare with the live read models")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !*verify {
		return errors.New("chatd replay: only --verify exists so far; to rebuild the read models, start chatd on an empty database (docs/operations.md)")
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

	res, err := projections.Verify(ctx, pool, stream, log, progress(stderr))
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
