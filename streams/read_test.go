package streams_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ReadRange returns every message of a range exactly once, in order, with its sequence, at any
// span size: spans without gaps from the batched direct gets, spans with deleted messages (or,
// on a cluster, from a lagging replica) from the leader.
func TestReadRange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 60
	nc, st := streamOf(t, ctx, n, "m%d")
	deleted := []uint64{1, 7, 8, 20, 31, 32, 33, 34, 35, 36, 60}
	for _, seq := range deleted {
		if err := st.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	name := st.CachedInfo().Config.Name
	for _, r := range []struct{ from, to uint64 }{{1, n}, {5, 40}, {21, 30}, {31, 36}} {
		for _, batch := range []int{1, 3, 6, 10, 1000} {
			var got []uint64
			var throughs []uint64
			err := streams.ReadRange(ctx, nc, name, r.from, r.to, batch, func(msgs []streams.Stored, through uint64) error {
				for _, m := range msgs {
					if string(m.Data) != fmt.Sprint("m", m.Seq) || (m.Subject != "" && m.Subject != fmt.Sprint("chat.evt.test.", m.Seq)) {
						t.Errorf("%d..%d by %d: message %d is %q on %q", r.from, r.to, batch, m.Seq, m.Data, m.Subject)
					}
					got = append(got, m.Seq)
				}
				throughs = append(throughs, through)
				return nil
			})
			if err != nil {
				t.Fatalf("%d..%d by %d: %v", r.from, r.to, batch, err)
			}
			var want []uint64
			for seq := r.from; seq <= r.to; seq++ {
				if !slices.Contains(deleted, seq) {
					want = append(want, seq)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%d..%d by %d: read %v, want %v", r.from, r.to, batch, got, want)
			}
			if len(throughs) == 0 || throughs[len(throughs)-1] != r.to || !slices.IsSorted(throughs) {
				t.Errorf("%d..%d by %d: spans through %v", r.from, r.to, batch, throughs)
			}
		}
	}
}

// An answer that the server cuts at its size limit (its max pending, unless the request asks for
// less) is a complete start of its span: ReadRange takes it and asks for the rest, rather than
// reading the span from the leader message by message (which would come with subjects).
func TestReadRangeTakesCutAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 60
	nc, st := streamOf(t, ctx, n, "m%d "+strings.Repeat("0", 100))
	defer streams.SetReadMaxBytes(1000)() // about 8 messages an answer
	var got []uint64
	parts := 0
	err := streams.ReadRange(ctx, nc, st.CachedInfo().Config.Name, 1, n, n, func(msgs []streams.Stored, through uint64) error {
		parts++
		for _, m := range msgs {
			if !bytes.HasPrefix(m.Data, fmt.Appendf(nil, "m%d ", m.Seq)) || m.Subject != "" {
				t.Errorf("message %d: %.10q on %q, want its own, without subject (not from the leader)", m.Seq, m.Data, m.Subject)
			}
			got = append(got, m.Seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || !slices.IsSorted(got) || got[0] != 1 || parts < 5 {
		t.Fatalf("read %d messages in %d parts: %v", len(got), parts, got)
	}
}

// streamOf returns a connection to a fresh server and a stream holding n messages, the i-th on
// subject chat.evt.test.<i> with data format applied to i.
func streamOf(t *testing.T, ctx context.Context, n int, format string) (*nats.Conn, jetstream.Stream) {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t, ""))
	js, st := natstest.Stream(t, nc, streams.Config{})
	for i := 1; i <= n; i++ {
		if _, err := js.Publish(ctx, fmt.Sprintf("chat.evt.test.%d", i), fmt.Appendf(nil, format, i)); err != nil {
			t.Fatal(err)
		}
	}
	return nc, st
}
