package streams_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
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
			s := natstest.RunServer(b, "")
			js, st := natstest.Stream(b, natstest.Connect(b, s), streams.Config{})
			store := streams.NewStore(js, st, domain.DefaultLimits)
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
			body := fmt.Sprintf("%0100d", 0) // 100 bytes
			var n atomic.Int64
			b.ResetTimer()
			send := func() {
				id := fmt.Sprint(n.Add(1))
				if _, _, err := store.SendMessage(ctx, "alice", c.ID, id, body); err != nil {
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
