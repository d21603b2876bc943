package api

import (
	"context"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
)

// slowRefresh is the real presence bucket, with renewals that take a while: long enough for a
// connection to close while one is under way, and longer than the close's own timeout.
type slowRefresh struct {
	*streams.Presence
	started chan struct{}
}

func (s slowRefresh) Refresh(ctx context.Context, key string, rev uint64) (uint64, error) {
	select {
	case s.started <- struct{}{}:
	default:
	}
	time.Sleep(600 * time.Millisecond)
	return s.Presence.Refresh(ctx, key, rev)
}

// A renewal under way when the connection closes, or one that starts after, does not put back
// the key that closing removed: the user is offline once their last connection has closed. The
// close's timeout counts from when the renewal is done, not from when the close began.
func TestPresenceRenewalDoesNotOutliveClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, p := natstest.Presence(t)
	key, rev, err := p.Connect(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	cp := &connPresence{p: slowRefresh{p, started}, key: key, rev: rev}
	renewed := make(chan error, 1)
	go func() { renewed <- cp.refresh(ctx) }()
	<-started
	if still, err := cp.close(500 * time.Millisecond); err != nil || still {
		t.Fatalf("close: still online %v, err %v", still, err)
	}
	if err := <-renewed; err != nil {
		t.Fatal(err)
	}
	if err := cp.refresh(ctx); err != nil { // a heartbeat after the close
		t.Fatal(err)
	}
	if online, err := p.UserOnline(ctx, "alice"); err != nil || online {
		t.Fatalf("alice online %v (err %v) after her only connection closed", online, err)
	}
}
