package streams_test

import (
	"context"
	"flag"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkSendMessage measures the command side of a send (idempotency lookup, decision on
// cached state, append with expectations) against an in-process NATS server with a file store.
//
//	go test -run '^$' -bench SendMessage -benchtime 5000x ./streams
func BenchmarkSendMessage(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		name := "serial"
		if parallel {
			name = "parallel"
		}
		b.Run(name, func(b *testing.B) {
			_, _, store, c := benchConversation(b)
			ctx := context.Background()
			body := fmt.Sprintf("%0100d", 0) // 100 bytes
			var n atomic.Int64
			b.ResetTimer()
			send := func() {
				id := fmt.Sprint(n.Add(1))
				if _, _, _, err := store.SendMessage(ctx, "alice", c.ID, id, body); err != nil {
					b.Error(err)
				}
			}
			if parallel {
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						send()
					}
				})
			} else {
				for b.Loop() {
					send()
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkSendMessageHistory measures a send into a conversation that already holds history
// messages. Every append expects the conversation's last sequence, which the server finds by
// matching every subject under the expectation's filter, and a message has a subject of its own.
// Epochs bound that filter to one epoch of the conversation (see streams.Layout); before them,
// the cost grew with the conversation's history (docs/benchmarks.md, "Sends slow down as a
// conversation grows").
//
//	go test -run '^$' -bench SendMessageHistory -benchtime 2000x ./streams
func BenchmarkSendMessageHistory(b *testing.B) {
	for _, history := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("history=%d", history), func(b *testing.B) {
			js, st, store, c := benchConversation(b)
			ctx := context.Background()
			body := fmt.Sprintf("%0100d", 0) // 100 bytes
			// The history goes straight into the stream, chained like the store's own appends.
			layout, err := streams.LayoutOf(st)
			if err != nil {
				b.Fatal(err)
			}
			tip, err := streams.ReadTip(ctx, js, c.ID)
			if err != nil {
				b.Fatal(err)
			}
			for i := range history {
				e, err := domain.SendMessage(c, "alice", fmt.Sprint("h", i), body, domain.DefaultLimits, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				var m *nats.Msg
				if m, tip, err = layout.Chain(&e, tip); err != nil {
					b.Fatal(err)
				}
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("history not stored within a minute")
			}
			n := 0
			for b.Loop() {
				n++
				if _, _, _, err := store.SendMessage(ctx, "alice", c.ID, fmt.Sprint("m", n), body); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// benchEpoch is the epoch size of the benchmarks' streams, to compare layouts.
var benchEpoch = flag.Uint64("send.epoch", streams.DefaultEpochSize, "epoch size of the send benchmarks' stream")

// benchConversation starts a server with the events stream and returns a store on it and a
// direct conversation between alice and bob.
func benchConversation(b *testing.B) (jetstream.JetStream, jetstream.Stream, *streams.Store, domain.Conversation) {
	s := natstest.RunServer(b, "")
	js, st := natstest.Stream(b, natstest.Connect(b, s), streams.Config{EpochSize: *benchEpoch})
	store, err := streams.NewStore(js, st, domain.DefaultLimits)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, u := range []string{"alice", "bob"} {
		if _, _, _, err := store.ProvisionUser(ctx, u, u); err != nil {
			b.Fatal(err)
		}
	}
	c, _, _, err := store.CreateConversation(ctx, "alice", domain.KindDirect, "", []string{"bob"})
	if err != nil {
		b.Fatal(err)
	}
	return js, st, store, c
}

// BenchmarkPresence measures the presence calls a WebSocket connection makes, against a bucket
// holding 2,000 other users' connections: connecting and closing the only connection of a user
// (Disconnect must then find them offline), one user's presence (what a disconnect announces),
// and the presence of a direct conversation's two members.
//
//	go test -run '^$' -bench Presence ./streams
func BenchmarkPresence(b *testing.B) {
	_, p := natstest.Presence(b)
	ctx := context.Background()
	for i := range 2000 {
		if _, _, err := p.Connect(ctx, fmt.Sprint("u", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("connect+disconnect", func(b *testing.B) {
		for b.Loop() {
			key, _, err := p.Connect(ctx, "alice")
			if err != nil {
				b.Fatal(err)
			}
			if still, err := p.Disconnect(ctx, key); err != nil || still {
				b.Fatalf("disconnect: still online %v, err %v", still, err)
			}
		}
	})
	b.Run("user-online", func(b *testing.B) {
		for b.Loop() {
			if online, err := p.UserOnline(ctx, "u1"); err != nil || !online {
				b.Fatalf("u1 online %v, err %v", online, err)
			}
		}
	})
	b.Run("online-of-2", func(b *testing.B) {
		for b.Loop() {
			if online, err := p.Online(ctx, []string{"u1", "alice"}); err != nil || len(online) != 1 {
				b.Fatalf("online %v, err %v", online, err)
			}
		}
	})
}
