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
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Live frames come in stream order, so a frame at or below the last one sent is one the client
// has: a new projector leader pushes its predecessor's last events again. The connection drops
// those, before and after it goes live; frames without a seq (typing) always pass.
func TestConnectionDropsFramesItHasPassed(t *testing.T) {
	c := &wsConn{out: newFrameQueue(100), done: make(chan struct{}), cfg: &WSConfig{SendQueue: 100}}
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
	c := &wsConn{ws: <-conns, out: newFrameQueue(cfg.SendQueue), done: make(chan struct{}), cfg: cfg}
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
