package streams_test

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
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
		key, _, err := p.Connect(ctx, user)
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

// A renewal expects the revision the connection last saw. One that lands after its connection
// closed (its caller gave up on it while it was on its way) is refused, so the user does not
// show online for a TTL after leaving. A renewal that finds another revision (an earlier one its
// caller gave up on did land) or no key (it expired while renewals failed) renews what it finds.
func TestPresenceRenewals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := natstest.RunServer(t, "")
	js, err := jetstream.New(natstest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	p, err := streams.SetupPresence(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The node whose renewal is late talks to NATS through a link that can hold what it sends.
	link := holdingLink(t, s.Addr().String())
	slowNC, err := nats.Connect("nats://" + link.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slowNC.Close()
	slowJS, err := jetstream.New(slowNC)
	if err != nil {
		t.Fatal(err)
	}
	slow, err := streams.SetupPresence(ctx, slowJS, 1)
	if err != nil {
		t.Fatal(err)
	}

	key, rev, err := slow.Connect(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	link.hold()
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = slow.Refresh(short, key, rev) // on its way, and given up on
	cancelShort()
	if err == nil {
		t.Fatal("a renewal that could not reach NATS succeeded")
	}
	if _, err := p.Disconnect(ctx, key); err != nil { // the connection closes, through another node
		t.Fatal(err)
	}
	link.release()
	if err := slowNC.FlushWithContext(ctx); err != nil { // after the held renewal
		t.Fatal(err)
	}
	if online, err := p.UserOnline(ctx, "alice"); err != nil || online {
		t.Fatalf("alice online %v (err %v) after her only connection closed: the late renewal put her key back", online, err)
	}

	// Another revision than expected: a renewal that landed unseen. Renewed all the same.
	key, rev, err = p.Connect(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, streams.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, key, nil, rev); err != nil {
		t.Fatal(err)
	}
	if rev, err = p.Refresh(ctx, key, rev); err != nil {
		t.Fatalf("renewal after one that landed unseen: %v", err)
	}
	// No key: it expired while renewals failed. The open connection gets it back.
	if err := kv.Purge(ctx, key); err != nil { // as the TTL would
		t.Fatal(err)
	}
	if _, err := p.Refresh(ctx, key, rev); err != nil {
		t.Fatalf("renewal of an expired key: %v", err)
	}
	if online, err := p.UserOnline(ctx, "bob"); err != nil || !online {
		t.Fatalf("bob online %v (err %v) after renewing his expired key", online, err)
	}
}

// link is a TCP proxy to a NATS server that can hold what the client sends.
type link struct {
	addr string
	mu   sync.Mutex
	held bool
	open *sync.Cond
}

func (l *link) hold() { l.mu.Lock(); l.held = true; l.mu.Unlock() }

func (l *link) release() { l.mu.Lock(); l.held = false; l.open.Broadcast(); l.mu.Unlock() }

func holdingLink(t *testing.T, server string) *link {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	l := &link{addr: ln.Addr().String()}
	l.open = sync.NewCond(&l.mu)
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			upstream, err := net.Dial("tcp", server)
			if err != nil {
				client.Close()
				return
			}
			t.Cleanup(func() { client.Close(); upstream.Close() })
			go io.Copy(client, upstream) //nolint:errcheck // ends with the connection
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := client.Read(buf)
					if err != nil {
						return
					}
					l.mu.Lock()
					for l.held {
						l.open.Wait()
					}
					l.mu.Unlock()
					if _, err := upstream.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l
}
