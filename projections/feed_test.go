package projections

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats-server/v2/server"
)

// When the node falls so far behind that NATS drops pushes, the connections of the users who
// lost some are told, so they resume from their last sequence; other users are left alone.
func TestDroppedPushesAreReported(t *testing.T) {
	s := natstest.RunServer(t, "")
	f := NewFeed(natstest.Connect(t, s), nil, nil)
	defer f.Close()

	release := make(chan struct{})
	var delivered atomic.Int64
	aliceLost, bobLost := make(chan struct{}, 1), make(chan struct{}, 1)
	signal := func(c chan struct{}) func() {
		return func() {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	// alice's first push holds the dispatcher, as a stuck node would.
	stopAlice, err := f.Subscribe("alice", func(uint64, uint64, []byte) {
		if delivered.Add(1) == 1 {
			<-release
		}
	}, signal(aliceLost))
	if err != nil {
		t.Fatal(err)
	}
	defer stopAlice()
	stopBob, err := f.Subscribe("bob", func(uint64, uint64, []byte) {}, signal(bobLost))
	if err != nil {
		t.Fatal(err)
	}
	defer stopBob()

	overflow(t, s, f, "alice")
	close(release)
	select {
	case <-aliceLost:
	case <-time.After(10 * time.Second):
		t.Fatal("alice's connection was not told that pushes were lost")
	}
	time.Sleep(2 * dropCheck) // bob's connection would have been told by now
	select {
	case <-bobLost:
		t.Fatal("bob lost nothing but was told he did")
	default:
	}
}

// overflow publishes more pushes to user than the dispatcher's channel holds, while its first
// delivery is held, and waits until NATS has dropped some.
func overflow(t *testing.T, s *server.Server, f *Feed, user string) {
	t.Helper()
	pub := natstest.Connect(t, s)
	for range pushBuffer + 1000 {
		if err := pub.Publish(streams.PushSubject(user), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for dropped(f, user) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("NATS never dropped a push")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dropped(f *Feed, user string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, _ := f.users[streams.PushSubject(user)].sub.Dropped()
	return n
}

// A push's seq and the seq of the push before it reach the connection with the frame, and a
// check (on a subject of its own) the seq of the last push: that is how a connection drops what
// it has and notices what it never got.
func TestPushCarriesItsPredecessor(t *testing.T) {
	s := natstest.RunServer(t, "")
	f := NewFeed(natstest.Connect(t, s), nil, nil)
	defer f.Close()
	got := make(chan string, 3)
	stop, err := f.Subscribe("alice", func(seq, prev uint64, frame []byte) {
		got <- fmt.Sprintf("%d %d %s", seq, prev, frame)
	}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	publish := PublishPush(natstest.Connect(t, s))
	for _, p := range []struct{ seq, prev uint64 }{{7, 0}, {9, 7}, {0, 0}} {
		if err := publish(streams.PushSubject("alice"), p.seq, p.prev, []byte("frame")); err != nil {
			t.Fatal(err)
		}
	}
	if err := publish(streams.CheckSubject("alice"), 0, 9, nil); err != nil { // a check
		t.Fatal(err)
	}
	for _, want := range []string{"7 0 frame", "9 7 frame", "0 0 frame", "0 9 "} {
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("delivered %q, want %q", g, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q never delivered", want)
		}
	}
}

// Once NATS dropped pushes for a user, the dispatcher tells the user's connections before it
// delivers them anything more: it cannot tell which waiting push came after the drop, and such a
// push would move the client's since past the dropped ones, which its resume would then skip.
// (The periodic look is off here, so only that order can pass.)
func TestNoPushOvertakesADrop(t *testing.T) {
	defer func(was time.Duration) { dropCheck = was }(dropCheck)
	dropCheck = time.Hour
	s := natstest.RunServer(t, "")
	f := NewFeed(natstest.Connect(t, s), nil, nil)
	defer f.Close()

	release := make(chan struct{})
	var delivered atomic.Int64
	var told, overtaken atomic.Bool
	stop, err := f.Subscribe("alice", func(_, _ uint64, frame []byte) {
		if delivered.Add(1) == 1 {
			<-release // the dispatcher is stuck until the drops happened
		}
		if !told.Load() && delivered.Load() > 1 {
			overtaken.Store(true)
		}
	}, func() { told.Store(true) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	overflow(t, s, f, "alice")
	deadline := time.Now().Add(10 * time.Second)
	close(release)
	for !told.Load() {
		if time.Now().After(deadline) {
			t.Fatal("alice's connection was never told that pushes were lost")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if overtaken.Load() {
		t.Fatal("a push waiting behind the drop reached the connection before it was told")
	}
}

// A resume replays what live delivery sent, and live delivery never sends a parked event (its
// frame would describe what no GET finds): so neither does the replay.
func TestReplaySkipsParkedEvents(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	before := f.lastSeq() // bob's conversation.created
	f.poison(d.ID, "alice")
	_, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "after", "waits with the poison")
	f.check(err)
	p := f.projector()
	f.run(p)
	f.waitFor(p, f.lastSeq())
	if p.Parked() != 2 {
		t.Fatalf("%d events parked, want 2", p.Parked())
	}

	feed := NewFeed(f.js.Conn(), f.stream, f.pool)
	defer feed.Close()
	spans, err := NewConversations(f.pool).Spans(f.ctx, "bob", 0)
	f.check(err)
	var got []uint64
	err = feed.Replay(f.ctx, "bob", spans, 0, f.lastSeq(), 100, func(seq uint64, _ []byte) error {
		got = append(got, seq)
		return nil
	})
	f.check(err)
	if len(got) == 0 || got[len(got)-1] != before {
		t.Fatalf("replayed %v, want the events up to %d and none of the parked ones after it", got, before)
	}
}
