package api

import (
	"context"
	"slices"
	"testing"
)

// Live frames come in stream order, so a frame at or below the last one sent is one the client
// has: a new projector leader pushes its predecessor's last events again. The connection drops
// those, before and after it goes live; frames without a seq (typing) always pass.
func TestConnectionDropsFramesItHasPassed(t *testing.T) {
	c := &wsConn{out: newFrameQueue(100), done: make(chan struct{}), cfg: &WSConfig{SendQueue: 100}}
	for _, seq := range []uint64{3, 5, 0, 5, 6} { // while the replay runs: pending
		c.deliver(seq, frameOf(seq))
	}
	if err := c.goLive(context.Background(), 4); err != nil { // the replay went up to 4
		t.Fatal(err)
	}
	for _, seq := range []uint64{6, 2, 7, 0, 7, 5, 9, 8} { // live
		c.deliver(seq, frameOf(seq))
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
