package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/projections"
	"github.com/gorilla/websocket"
)

// Live frames come in stream order, so a frame at or below the last one sent is one the client
// has: a new projector leader pushes its predecessor's last events again. The connection drops
// those, before and after it goes live; frames without a seq (typing) always pass.
func TestConnectionDropsFramesItHasPassed(t *testing.T) {
	c := &wsConn{out: newFrameQueue(100), done: make(chan struct{}), cfg: &WSConfig{SendQueue: 100}, cancel: func() {}}
	for _, seq := range []uint64{3, 5, 0, 5, 6} { // while the replay runs: pending
		c.deliver(seq, 0, frameOf(seq))
	}
	if err := c.goLive(context.Background(), 4); err != nil { // the replay went up to 4
		t.Fatal(err)
	}
	for _, seq := range []uint64{6, 2, 7, 0, 7, 5, 9, 8} { // live
		c.deliver(seq, 0, frameOf(seq))
	}
	var got []string
	for _, f := range c.out.take() {
		got = append(got, string(f))
	}
	want := []string{"5", "typing", "6", "7", "typing", "9"}
	if !slices.Equal(got, want) {
		t.Fatalf("frames sent %v, want %v", got, want)
	}
}

func frameOf(seq uint64) []byte {
	if seq == 0 {
		return []byte("typing")
	}
	return []byte{byte('0' + seq)}
}

// A push names the push to the same user before it. A connection that has not sent that one
// lost it on the way (core NATS delivers at most once): it is closed with 4008, and the client
// resumes from its last seq. Pushes that follow the last one sent pass.
func TestConnectionClosesOnAMissedPush(t *testing.T) {
	t.Run("live", func(t *testing.T) {
		c, client := wsPair(t)
		go c.writer()
		if err := c.goLive(context.Background(), 4); err != nil { // the replay went up to 4
			t.Fatal(err)
		}
		c.deliver(5, 4, []byte("5")) // follows the replay
		c.deliver(6, 0, []byte("6")) // the projector knows no predecessor
		for _, want := range []string{"5", "6"} {
			if _, frame, err := client.ReadMessage(); err != nil || string(frame) != want {
				t.Fatalf("read %q, %v; want %q", frame, err, want)
			}
		}
		c.deliver(8, 7, []byte("8")) // 7 never came
		c.deliver(9, 8, []byte("9"))
		expectMissedClose(t, client)
	})
	t.Run("nothing after the gap", func(t *testing.T) {
		// A frame queued after the gap would reach the client before the close, and the client
		// would resume after it, past the frame it missed.
		c, _ := wsPair(t)
		if err := c.goLive(context.Background(), 4); err != nil {
			t.Fatal(err)
		}
		c.deliver(5, 4, []byte("5"))
		c.deliver(8, 7, []byte("8"))   // 7 never came
		c.deliver(10, 0, []byte("10")) // the projector knows no predecessor: passes the floor
		c.deliver(0, 0, []byte("typing"))
		var queued []string
		for _, f := range c.out.take() {
			queued = append(queued, string(f))
		}
		if !slices.Equal(queued, []string{"5"}) {
			t.Fatalf("queued %v, want only [5]", queued)
		}
	})
	t.Run("check", func(t *testing.T) {
		c, client := wsPair(t)
		go c.writer()
		if err := c.goLive(context.Background(), 4); err != nil {
			t.Fatal(err)
		}
		c.deliver(5, 4, []byte("5"))
		c.deliver(0, 5, nil) // the last push was 5: sent
		c.deliver(6, 5, []byte("6"))
		for _, want := range []string{"5", "6"} {
			if _, frame, err := client.ReadMessage(); err != nil || string(frame) != want {
				t.Fatalf("read %q, %v; want %q", frame, err, want)
			}
		}
		c.deliver(0, 7, nil) // 7 never came
		c.deliver(8, 7, []byte("8"))
		expectMissedClose(t, client)
	})
	t.Run("replay", func(t *testing.T) {
		c, client := wsPair(t)
		go c.writer()
		c.deliver(5, 4, []byte("5"))
		c.deliver(8, 7, []byte("8"))
		if err := c.goLive(context.Background(), 4); !errors.Is(err, errPushLost) {
			t.Fatalf("going live after a lost push: %v, want %v", err, errPushLost)
		}
		expectMissedClose(t, client)
	})
}

// expectMissedClose reads until the connection closes and checks it closed with 4008 for a
// missed push, sending nothing after "8".
func expectMissedClose(t *testing.T, client *websocket.Conn) {
	t.Helper()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, frame, err := client.ReadMessage()
		var closed *websocket.CloseError
		if errors.As(err, &closed) {
			if closed.Code != CloseTooSlow || !strings.Contains(closed.Text, "missed a push") {
				t.Fatalf("closed with %d %q, want %d", closed.Code, closed.Text, CloseTooSlow)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(frame) == "8" || string(frame) == "9" {
			t.Fatalf("frame %s sent after a missed push", frame)
		}
	}
}

// wsPair returns the server side of a WebSocket connection, as a wsConn whose writer has not
// started, and its client.
func wsPair(t *testing.T) (*wsConn, *websocket.Conn) {
	t.Helper()
	conns := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		conns <- ws
	}))
	t.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	cfg := &WSConfig{SendQueue: 100, PingInterval: time.Minute, WriteTimeout: 5 * time.Second}
	c := &wsConn{ws: <-conns, out: newFrameQueue(cfg.SendQueue), done: make(chan struct{}), cfg: cfg, cancel: func() {}}
	t.Cleanup(func() { c.close(websocket.CloseNormalClosure, "") })
	return c, client
}

// panickyFeed fails the way a bug would: it panics when a connection subscribes.
type panickyFeed struct{ Feed }

func (panickyFeed) Subscribe(string, func(seq, prev uint64, frame []byte), func()) (func(), error) {
	panic("a bug")
}

// A connection runs in a goroutine of its own after the upgrade (serveConn), out of reach of
// echo's Recover middleware: a panic in it closes that connection with 1011 and leaves the
// server running. (Its writer, the push dispatcher and timers were never under the middleware.)
func TestConnectionPanicClosesOnlyIt(t *testing.T) {
	auth, err := NewAuth(strings.Repeat("k", 32), strings.Repeat("s", 32), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Deps{Auth: auth, Feed: panickyFeed{}, Hub: NewHub(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	token, _, err := auth.Mint("alice", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second connection finds the server still there
		client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/api/v1/ws?token="+token, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err = client.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseInternalServerErr) {
			t.Fatalf("read after the panic: %v, want close 1011", err)
		}
		client.Close()
	}
}

// testServer serves the WebSocket endpoint over feed, with a hub the test can close; it returns
// the hub and a dial function for alice.
func testServer(t *testing.T, feed Feed, cfg WSConfig) (*Hub, func() *websocket.Conn) {
	t.Helper()
	return testServerWith(t, Deps{Feed: feed, WS: cfg})
}

// testServerWith is testServer with more of the server's dependencies.
func testServerWith(t *testing.T, d Deps) (*Hub, func() *websocket.Conn) {
	t.Helper()
	auth, err := NewAuth(strings.Repeat("k", 32), strings.Repeat("s", 32), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hub := NewHub()
	d.Auth, d.Hub, d.Log = auth, hub, slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := httptest.NewServer(New(d))
	t.Cleanup(srv.Close)
	token, _, err := auth.Mint("alice", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	return hub, func() *websocket.Conn {
		client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/api/v1/ws?token="+token, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		return client
	}
}

// stuckFeed answers no position until the connection's context ends, as a PostgreSQL that hangs
// would (the position is read from the read models' checkpoint).
type stuckFeed struct {
	Feed
	asked chan struct{}
}

func (stuckFeed) Subscribe(string, func(seq, prev uint64, frame []byte), func()) (func(), error) {
	return func() {}, nil
}

func (f stuckFeed) Position(ctx context.Context) (projections.Position, error) {
	f.asked <- struct{}{}
	<-ctx.Done()
	return projections.Position{}, ctx.Err()
}

// connectsCounted is a presence that only counts the users it is told came online.
type connectsCounted struct {
	Presence
	connects atomic.Int32
}

func (p *connectsCounted) Connect(context.Context, string) (string, uint64, error) {
	p.connects.Add(1)
	return "", 0, errors.New("not kept")
}

// Closing a connection ends what it was doing for its client: a shutdown does not wait for
// look-ups that would never end on their own. A connection closed before it started never
// says its user came online.
func TestClosingEndsTheConnectionsWork(t *testing.T) {
	feed := stuckFeed{asked: make(chan struct{}, 1)}
	presence := &connectsCounted{}
	hub, dial := testServerWith(t, Deps{Feed: feed, Presence: presence})
	client := dial()
	select {
	case <-feed.asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection never asked for the position")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hub.CloseAll(ctx); err != nil {
		t.Fatalf("close all: %v", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := client.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("read after close all: %v, want 1001", err)
	}
	if n := presence.connects.Load(); n != 0 {
		t.Fatalf("the connection closed during its start said alice came online %d times", n)
	}
}

// liveFeed is live at once, and lets the test push frames to alice's connection.
type liveFeed struct {
	Feed
	deliver chan func(seq, prev uint64, frame []byte)
}

func (f liveFeed) Subscribe(_ string, deliver func(seq, prev uint64, frame []byte), _ func()) (func(), error) {
	f.deliver <- deliver
	return func() {}, nil
}

func (liveFeed) Position(context.Context) (projections.Position, error) {
	return projections.Position{Epoch: "e", First: 1, Last: 1, Committed: 1}, nil
}

// A client that stopped reading holds its connection's writer in a write for up to the write
// timeout. Shutdown must still close every connection promptly: a close waits at most a second
// for the write in progress, and connections close in parallel.
func TestShutdownIsNotHeldUpByAStalledClient(t *testing.T) {
	feed := liveFeed{deliver: make(chan func(seq, prev uint64, frame []byte), 3)}
	hub, dial := testServer(t, feed, WSConfig{WriteTimeout: time.Minute, SendQueue: 1024})
	var clients []*websocket.Conn
	for range 3 {
		clients = append(clients, dial())
	}
	var delivers []func(seq, prev uint64, frame []byte)
	for range 3 {
		select {
		case d := <-feed.deliver:
			delivers = append(delivers, d)
		case <-time.After(10 * time.Second):
			t.Fatal("a connection never subscribed")
		}
	}
	for _, c := range clients { // ready: every connection is live
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	// The clients read nothing more: the frames fill the socket buffers on both sides, and
	// every writer ends up blocked in a write.
	big := []byte(`"` + strings.Repeat("x", 1<<20) + `"`)
	for seq := uint64(2); seq < 66; seq++ {
		for _, d := range delivers {
			d(seq, 0, big)
		}
	}
	time.Sleep(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hub.CloseAll(ctx); err != nil {
		t.Fatalf("close all with stalled clients: %v", err)
	}
}
