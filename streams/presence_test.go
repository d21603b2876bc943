package streams_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go/jetstream"
)

// A user is online while any of their connection keys is live. A closed connection's key is
// purged, leaving nothing on its subject; a delete marker that another KV client left is
// stepped over.
func TestPresence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, p := natstest.Presence(t)
	connect := func(user string) string {
		t.Helper()
		key, err := p.Connect(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	online := func(user string, want bool) {
		t.Helper()
		if got, err := p.UserOnline(ctx, user); err != nil || got != want {
			t.Fatalf("%s online: %v (err %v), want %v", user, got, err, want)
		}
	}
	kv, err := js.KeyValue(ctx, streams.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	// A marker on alice's first key, before her live one.
	if err := kv.Delete(ctx, connect("alice")); err != nil {
		t.Fatal(err)
	}
	online("alice", false)
	second := connect("alice")
	connect("alicia") // not one of alice's keys, though it starts like them
	online("alice", true)
	online("bob", false)
	if got, err := p.Online(ctx, []string{"alice", "bob", "alicia"}); err != nil || !slices.Equal(got, []string{"alice", "alicia"}) {
		t.Fatalf("online %v (err %v), want alice and alicia", got, err)
	}

	still, err := p.Disconnect(ctx, second)
	if err != nil || still {
		t.Fatalf("alice's last connection closed: still online %v (err %v)", still, err)
	}
	online("alice", false)
	bucket, err := js.Stream(ctx, "KV_"+streams.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bucket.GetLastMsgForSubject(ctx, "$KV."+streams.PresenceBucket+"."+second); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the closed connection's key left %v, want nothing", err)
	}
}
