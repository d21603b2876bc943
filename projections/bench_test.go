package projections

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
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
					if _, _, err := f.store.SendMessage(ctx, fmt.Sprint("u", i%users), convs[i%users], fmt.Sprint(i), body); err != nil {
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
