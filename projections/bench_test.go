package projections

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/bench"
	"github.com/chatd-dev/chatd/streams"
)

// BenchmarkProjector measures catching up: 20,000 messages (100-byte bodies, 100 direct
// conversations) already in the stream are applied to fresh read models.
//
//	go test -run '^$' -bench Projector -benchtime 3x ./projections
func BenchmarkProjector(b *testing.B) {
	const users, events = 100, 20_000
	for range b.N {
		b.StopTimer()
		f := newFixture(b)
		ctx := context.Background()
		for i := range users {
			if _, _, _, err := f.store.ProvisionUser(ctx, fmt.Sprint("u", i), "user"); err != nil {
				b.Fatal(err)
			}
		}
		convs := make([]string, users)
		for i := range users {
			c, _, _, err := f.store.CreateConversation(ctx, fmt.Sprint("u", i), domain.KindDirect, "", []string{fmt.Sprint("u", (i+1)%users)})
			if err != nil {
				b.Fatal(err)
			}
			convs[i] = c.ID
		}
		var wg sync.WaitGroup
		body := fmt.Sprintf("%0100d", 0)
		for w := range 16 {
			wg.Go(func() {
				for i := w; i < events; i += 16 {
					if _, _, _, err := f.store.SendMessage(ctx, fmt.Sprint("u", i%users), convs[i%users], fmt.Sprint(i), body); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		last := f.lastSeq()
		p := f.projector()
		b.StartTimer()
		start := time.Now()
		f.run(p)
		f.waitFor(p, last)
		b.ReportMetric(float64(last)/time.Since(start).Seconds(), "events/s")
		batches, _ := p.Stats()
		b.ReportMetric(float64(last)/float64(batches), "events/batch")
	}
}

var (
	replayEvents  = flag.Int("replay.events", 0, "events BenchmarkReplay publishes and rebuilds (default 1,000,000, or 50,000 with -short)")
	replayProfile = flag.String("replay.cpuprofile", "", "write a CPU profile of BenchmarkReplay's timed rebuild alone (not its setup) to this file")
	replayAllocs  = flag.String("replay.memprofile", "", "write heap profiles to this file and to this file .base, at the end and at the start of BenchmarkReplay's timed rebuild: go tool pprof -sample_index alloc_space -base FILE.base FILE shows what the rebuild alone allocated")
)

// startReplayProfile starts the CPU profile that -replay.cpuprofile asks for; -test.cpuprofile
// would profile the untimed setup too, which takes longer than the rebuild.
func startReplayProfile(b *testing.B) (stop func()) {
	stopHeap := func() {}
	if *replayAllocs != "" {
		writeHeapProfile(b, *replayAllocs+".base")
		stopHeap = func() { writeHeapProfile(b, *replayAllocs) }
	}
	if *replayProfile == "" {
		return stopHeap
	}
	out, err := os.Create(*replayProfile)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := out.Close(); err != nil {
			b.Error(err)
		}
		stopHeap()
	}
}

// writeHeapProfile writes the heap profile, allocations since the start included, to path.
func writeHeapProfile(b *testing.B, path string) {
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if err := pprof.Lookup("allocs").WriteTo(out, 0); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReplay measures chatd replay (Rebuild): N message events (100-byte bodies, 1,000
// direct conversations), published straight into the stream, rebuilt into fresh tables and
// switched over.
//
//	go test -run '^$' -bench Replay -benchtime 1x -timeout 30m ./projections   (N = 1,000,000)
//	go test -run '^$' -bench Replay -benchtime 1x -short ./projections         (N = 50,000)
//	go test ./projections -run '^$' -bench Replay -benchtime 1x -args -replay.events 200000
func BenchmarkReplay(b *testing.B) {
	const convs = 1000
	n := 1_000_000
	if testing.Short() {
		n = 50_000
	}
	if *replayEvents > 0 {
		n = *replayEvents
	}
	for range b.N {
		b.StopTimer()
		f := newFixture(b)
		ctx := context.Background()
		// Users and conversations through the command side, messages published directly.
		ids := make([]string, convs)
		for i := range convs {
			a, c := fmt.Sprint("u", i), fmt.Sprint("v", i)
			for _, u := range []string{a, c} {
				if _, _, _, err := f.store.ProvisionUser(ctx, u, u); err != nil {
					b.Fatal(err)
				}
			}
			conv, _, _, err := f.store.CreateConversation(ctx, a, domain.KindDirect, "", []string{c})
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = conv.ID
		}
		body := fmt.Sprintf("%0100d", 0)
		now := time.Now().UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano)
		layout, err := streams.LayoutOf(f.stream)
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			conv := ids[i%convs]
			msgID := domain.MessageID(conv, fmt.Sprint("u", i%convs), fmt.Sprint(i))
			data := fmt.Sprintf(`{"message_id":%q,"sender_id":"u%d","client_msg_id":"%d","body":%q}`, msgID, i%convs, i, body)
			event := fmt.Sprintf(`{"v":1,"id":"e%d","type":"message.created","conversation_id":%q,"actor":"u%d","time":%q,"data":%s}`,
				i, conv, i%convs, now, data)
			// Not chained: the projector does not check chains.
			subject, err := layout.Subject(domain.Event{Type: domain.TypeMessageCreated, ConversationID: conv, Data: json.RawMessage(data)}, uint64(1+i/convs))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.js.PublishAsync(subject, []byte(event)); err != nil {
				b.Fatal(err)
			}
			if i%10_000 == 9_999 {
				<-f.js.PublishAsyncComplete()
			}
		}
		<-f.js.PublishAsyncComplete()
		info, err := f.stream.Info(ctx) // f.ctx may have run out while publishing
		if err != nil {
			b.Fatal(err)
		}
		last := info.State.LastSeq
		// The live read models first (what chatd does when it starts on an empty database),
		// then the rebuild that chatd replay does, which is what is timed.
		p := f.projector()
		f.run(p)
		wait, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		err = p.WaitFor(wait, last)
		cancel()
		if err != nil {
			b.Fatalf("live projection reached %d of %d: %v", p.Position(), last, err)
		}
		stopProfile := startReplayProfile(b)
		cpuBefore, cpuErr := bench.MachineCPU()
		b.StartTimer()
		res, err := Rebuild(context.Background(), f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{})
		b.StopTimer()
		cpuAfter, cpuAfterErr := bench.MachineCPU()
		stopProfile()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.Events)/res.Took.Seconds(), "events/s")
		if cpuErr == nil && cpuAfterErr == nil {
			b.ReportMetric(float64((cpuAfter-cpuBefore).Microseconds())/float64(res.Events), "cpu-µs/event")
		}
		var rows int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&rows); err != nil {
			b.Fatal(err)
		}
		if rows != n {
			b.Fatalf("%d messages in the read model, want %d", rows, n)
		}
	}
}
