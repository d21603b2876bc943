package streams_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// Guarantee 10 on a cluster: the stream's leader is shut down while sends are under way. Every
// acknowledged send is in the stream exactly once; a send that failed is either there once or
// not at all (some are known to be there: stored, but their acknowledgement lost), and retrying
// it with its client_msg_id settles which without a second copy; and
// every conversation's hash chain is still one line (an election in the middle of an append
// forks nothing).
func TestAcknowledgedSendsSurviveLosingTheLeader(t *testing.T) {
	servers := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := setupReplicated(t, ctx, servers)
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var leader, client *server.Server
	for _, s := range servers {
		switch {
		case s.Name() == info.Cluster.Leader:
			leader = s
		case client == nil:
			client = s
		}
	}
	if leader == nil {
		t.Fatalf("no server is the stream leader %q", info.Cluster.Leader)
	}
	// The command side talks to a server that stays up: what is tested is the stream losing its
	// leader, not the client losing its connection.
	n := newClusterNode(t, ctx, client)
	direct := func(a, b string) domain.Conversation {
		t.Helper()
		for _, u := range []string{a, b} {
			if _, _, _, err := n.store.ProvisionUser(ctx, u, u); err != nil {
				t.Fatal(err)
			}
		}
		c, _, _, err := n.store.CreateConversation(ctx, a, domain.KindDirect, "", []string{b})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	const convs = 6
	ids := make([]string, convs)
	for i := range convs {
		ids[i] = direct(fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)).ID
	}

	type send struct{ conv, sender, clientMsgID string }
	var (
		mu     sync.Mutex
		acked  = map[string]send{} // message id → send
		failed []send
	)

	// Sends that the stream stored but whose acknowledgement never reached the client: written
	// straight into the stream, as the store would have, and retried below after the leader is
	// gone. Each must be found, not stored again.
	const lostAcks = 3
	for i := range lostAcks {
		a := fmt.Sprintf("lost-a%d", i)
		c := direct(a, fmt.Sprintf("lost-b%d", i))
		if _, err := n.js.PublishMsg(ctx, chainedMessage(t, n, c, a, "unacked")); err != nil {
			t.Fatal(err)
		}
		failed = append(failed, send{c.ID, a, "unacked"})
	}
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for i, conv := range ids {
		senders.Go(func() {
			sender := fmt.Sprintf("a%d", i)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				s := send{conv, sender, fmt.Sprintf("m%d", k)}
				sendCtx, cancelSend := context.WithTimeout(ctx, 5*time.Second)
				m, _, _, err := n.store.SendMessage(sendCtx, sender, conv, s.clientMsgID, "hello")
				cancelSend()
				mu.Lock()
				if err != nil {
					failed = append(failed, s)
				} else {
					acked[m.ID] = s
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	leader.Shutdown()
	leader.WaitForShutdown()
	time.Sleep(2 * time.Second)
	close(stop)
	senders.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d sends acknowledged, %d failed while the leader was lost", len(acked), len(failed))
	if len(acked) == 0 {
		t.Fatal("no send was acknowledged")
	}

	// A failed send is retried until it is answered, as a client would, each attempt with a
	// timeout of its own: a request in flight while the cluster settles may go unanswered.
	landed := 0 // failed sends that the stream had stored after all
	for _, s := range failed {
		for attempt := 0; ; attempt++ {
			sendCtx, cancelSend := context.WithTimeout(ctx, 5*time.Second)
			m, created, _, err := n.store.SendMessage(sendCtx, s.sender, s.conv, s.clientMsgID, "hello")
			cancelSend()
			if err == nil {
				acked[m.ID] = s
				if !created {
					landed++
				}
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("retrying %v: %v", s, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	t.Logf("%d of the failed sends had been stored: their retries found them", landed)
	if landed < lostAcks {
		t.Fatalf("only %d retries found their stored send, want at least the %d whose acknowledgement was lost", landed, lostAcks)
	}

	// Read the stream back from a surviving server.
	var out bytes.Buffer
	eventually(t, ctx, func() error {
		out.Reset()
		_, err := n.store.Export(ctx, streams.ExportFilter{}, &out)
		return err
	})
	stored := map[string]int{}
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct{ Event domain.Event }
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		if line.Event.Type == domain.TypeMessageCreated {
			d, err := domain.DecodeData[domain.MessageData](line.Event)
			if err != nil {
				t.Fatal(err)
			}
			stored[d.MessageID]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for id, count := range stored {
		if count != 1 {
			t.Errorf("message %s stored %d times", id, count)
		}
		if _, ok := acked[id]; !ok {
			t.Errorf("message %s stored but never acknowledged, even on retry", id)
		}
	}
	for id, s := range acked {
		if stored[id] != 1 {
			t.Errorf("acknowledged message %s (%v) stored %d times", id, s, stored[id])
		}
	}

	var problems []streams.Problem
	eventually(t, ctx, func() error {
		problems = problems[:0]
		_, err := streams.Verify(ctx, n.stream, "", func(p streams.Problem) error {
			problems = append(problems, p)
			return nil
		})
		return err
	})
	for _, p := range problems {
		t.Errorf("chain: %s", p)
	}
}

func newClusterNode(t *testing.T, ctx context.Context, s *server.Server) node {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, streams.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return node{js: js, stream: st, store: newStore(t, js, st)}
}

// eventually runs read until it succeeds: a cluster that has just lost a server answers some
// requests with "no responders" until the new leader's interest has spread.
func eventually(t *testing.T, ctx context.Context, read func() error) {
	t.Helper()
	for {
		err := read()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Presence on a cluster: a replicated bucket answers nothing until it has a leader, so
// SetupPresence returns only once appends reach it; a connection recorded through one server is
// seen online through another, and offline once it goes, at once for the node that closed it
// (which asks the leader, not a replica that may not have seen the delete yet).
func TestPresenceAcrossACluster(t *testing.T) {
	servers := natstest.RunCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A young in-process cluster now and then leaves a JetStream API request unanswered (see
	// setupReplicated): each step is asked again rather than waited out.
	retry := func(step func(ctx context.Context) error) {
		t.Helper()
		for {
			attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := step(attempt)
			cancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
		}
	}
	node := func(s *server.Server) (js jetstream.JetStream, p *streams.Presence) {
		t.Helper()
		js, err := jetstream.New(natstest.Connect(t, s))
		if err != nil {
			t.Fatal(err)
		}
		retry(func(ctx context.Context) (err error) {
			p, err = streams.SetupPresence(ctx, js, 3)
			return err
		})
		return js, p
	}
	js, first := node(servers[0])
	// Right after setup, with no wait: the bucket has its leader, and an append reaches it.
	bucket, err := js.Stream(ctx, "KV_"+streams.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if c := bucket.CachedInfo().Cluster; c == nil || c.Leader == "" || len(c.Replicas) != 2 {
		t.Fatalf("presence bucket right after setup: cluster %+v, want a leader and two replicas", c)
	}
	key, _, err := first.Connect(ctx, "alice")
	if err != nil {
		t.Fatalf("the first connection right after setup: %v", err)
	}
	_, other := node(servers[2])            // a second node sets up the same bucket
	retry(func(ctx context.Context) error { // a replica may answer the listing a moment behind
		online, err := other.Online(ctx, []string{"alice", "bob"})
		if err == nil && !slices.Equal(online, []string{"alice"}) {
			err = fmt.Errorf("online through the other server: %v, want alice", online)
		}
		return err
	})
	retry(func(ctx context.Context) error {
		still, err := first.Disconnect(ctx, key)
		if err == nil && still {
			t.Fatal("alice's only connection closed, and she is still online")
		}
		return err
	})
	retry(func(ctx context.Context) error {
		online, err := other.Online(ctx, []string{"alice"})
		if err == nil && len(online) != 0 {
			err = fmt.Errorf("online %v after the disconnect", online)
		}
		return err
	})
}
