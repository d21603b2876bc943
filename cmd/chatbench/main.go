// Command chatbench drives a running chatd through its public API, the way real clients do, and
// reports throughput and latencies (see docs/benchmarks.md).
//
//	chatbench -url http://127.0.0.1:8080 -service-key "$(cat data/service-key)" -users 1000 -directs 500 -senders 32 -duration 30s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chatd-dev/chatd/internal/bench"
	"github.com/schollz/progressbar/v3"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chatbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := bench.Config{RunID: fmt.Sprintf("b%x", time.Now().UnixNano()&0xffffff)}
	keyFile := fs.String("service-key-file", "data/service-key", "file holding the service key (when -service-key is empty)")
	asJSON := fs.Bool("json", false, "print a machine-readable summary instead of the table")
	idle := fs.Int("idle", 0, "idle-connections mode: open this many WebSockets (over -users users) and report chatd's memory per connection")
	replay := fs.Int("replay", 0, "replay mode: generate this many message events straight into chatd's stream, then time chatd replay (POST /api/v1/admin/projections/rebuild); for a throwaway chatd")
	cpuProfile := fs.String("cpuprofile", "", "write chatbench's own CPU profile to this file (to see what the load tool costs)")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "replay mode: chatd's NATS server (the embedded one by default)")
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "chatd base URL")
	fs.StringVar(&cfg.ServiceKey, "service-key", os.Getenv("CHAT_SERVICE_KEY"), "the host site's service key")
	fs.IntVar(&cfg.Users, "users", 100, "users, each with one WebSocket")
	fs.IntVar(&cfg.Directs, "directs", 50, "direct conversations")
	fs.IntVar(&cfg.Groups, "groups", 0, "groups")
	fs.IntVar(&cfg.GroupSize, "group-size", 5, "members per group")
	fs.IntVar(&cfg.Senders, "senders", 16, "concurrent senders (closed loop), or the most requests in flight (open loop)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "total messages per second (open loop); 0 for closed loop")
	fs.IntVar(&cfg.Messages, "messages", 0, "messages to send; 0 sends for -duration")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to send when -messages is 0")
	fs.IntVar(&cfg.BodyBytes, "body", 100, "message body bytes")
	fs.DurationVar(&cfg.PushWait, "push-timeout", 10*time.Second, "a push not delivered this long after the last send counts as lost")
	fs.IntVar(&cfg.SampleRead, "sample-read", 50, "poll every Nth message over REST for visibility (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.ServiceKey == "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return errors.New("no service key: pass -service-key, set CHAT_SERVICE_KEY, or point -service-key-file at chatd's data/service-key")
		}
		cfg.ServiceKey = strings.TrimSpace(string(b))
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *replay > 0 {
		return runReplay(ctx, bench.ReplayConfig{URL: cfg.URL, ServiceKey: cfg.ServiceKey, RunID: cfg.RunID, NATSURL: *natsURL,
			Events: *replay, Conversations: cfg.Directs, BodyBytes: cfg.BodyBytes}, *asJSON, stdout, stderr)
	}
	if *idle > 0 {
		res, err := bench.Idle(ctx, bench.IdleConfig{URL: cfg.URL, ServiceKey: cfg.ServiceKey, RunID: cfg.RunID,
			Users: cfg.Users, Connections: *idle, Settle: 3 * time.Second})
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(res)
		}
		fmt.Fprintf(stdout, "connections %d\nchatd RSS   %.1f MiB before, %.1f MiB after\nper conn    %.1f KiB\ngoroutines  %.0f\n",
			res.Connections, res.RSSBefore/(1<<20), res.RSSAfter/(1<<20), res.BytesPerConnection/1024, res.GoroutinesAfter)
		return nil
	}
	total := int64(cfg.Messages)
	if total == 0 {
		total = -1 // unknown: a spinner with counts
	}
	bar := progressbar.NewOptions64(total, progressbar.OptionSetWriter(stderr), progressbar.OptionSetDescription("sending"),
		progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("msg"),
		progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	cfg.Progress = func(int) { _ = bar.Add(1) }
	res, err := bench.Run(ctx, cfg)
	_ = bar.Finish()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	report(stdout, res)
	return nil
}

func report(w io.Writer, r bench.Result) {
	fmt.Fprintf(w, "messages    %d sent, %d acknowledged, %d errors in %s\n", r.Sent, r.Acked, r.Errors, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "throughput  %.0f msg/s\n", r.Throughput)
	fmt.Fprintf(w, "pushes      %d of %d delivered, %d lost, %d duplicated\n", r.Pushes, r.ExpectedPushes, r.LostPushes, r.Duplicates)
	if r.ChatdCPU > 0 {
		fmt.Fprintf(w, "chatd CPU   %.0f µs per message (the whole process but PostgreSQL)\n", float64(r.ChatdCPU)/float64(time.Microsecond))
	}
	if r.MachineCPU > 0 {
		fmt.Fprintf(w, "machine CPU %.0f µs per message (every process, every core; chatbench itself %.0f)\n",
			float64(r.MachineCPU)/float64(time.Microsecond), float64(r.BenchCPU)/float64(time.Microsecond))
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error %s\n", r.FirstError)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "latency\tn\tp50\tp90\tp99\tmax\t\n")
	for _, l := range []struct {
		name string
		l    bench.Latency
	}{{"POST", r.POST}, {"send→push", r.Push}, {"send→REST visible", r.ReadVisible}} {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", l.name, l.l.N, ms(l.l.P50), ms(l.l.P90), ms(l.l.P99), ms(l.l.Max))
	}
	_ = tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// runReplay runs the replay benchmark with a progress bar per stage and prints the result.
func runReplay(ctx context.Context, cfg bench.ReplayConfig, asJSON bool, stdout, stderr io.Writer) error {
	var bar *progressbar.ProgressBar
	stage := ""
	cfg.Progress = func(s string, done, total uint64) {
		if s != stage {
			if bar != nil {
				_ = bar.Finish()
				fmt.Fprintln(stderr)
			}
			stage = s
			bar = progressbar.NewOptions64(int64(total), progressbar.OptionSetWriter(stderr), progressbar.OptionSetDescription(s),
				progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"), progressbar.OptionSetPredictTime(true))
		}
		bar.ChangeMax64(int64(max(total, 1)))
		_ = bar.Set64(int64(done))
	}
	res, err := bench.Replay(ctx, cfg)
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "generated\t%d events into the stream in %s\n", res.Generated, res.GenerateTime.Round(time.Millisecond))
	fmt.Fprintf(tw, "projected\tby the live projector in %s\n", res.CatchUpTime.Round(time.Millisecond))
	fmt.Fprintf(tw, "replay\t%d events rebuilt and switched over in %s: %.0f events/s\n", res.RebuildEvents, res.RebuildTime.Round(time.Millisecond), res.EventsPerSec)
	return tw.Flush()
}
