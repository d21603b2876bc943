package streams_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// node is one chatd's command side: its own connection and Store, hence its own caches.
type node struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	store  *streams.Store
}

func newStore(t *testing.T, js jetstream.JetStream, st jetstream.Stream) *streams.Store {
	t.Helper()
	store, err := streams.NewStore(js, st, domain.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func newNode(t *testing.T, s *server.Server, cfg streams.Config) node {
	t.Helper()
	js, st := natstest.Stream(t, natstest.Connect(t, s), cfg)
	return node{js: js, stream: st, store: newStore(t, js, st)}
}

// setupReplicated sets the stream up with three replicas on servers and waits until every server
// answers for it.
func setupReplicated(t *testing.T, ctx context.Context, servers []*server.Server) jetstream.Stream {
	t.Helper()
	first, err := jetstream.New(natstest.Connect(t, servers[0]))
	if err != nil {
		t.Fatal(err)
	}
	// A young in-process cluster on a busy machine now and then leaves a JetStream API request
	// unanswered (a meta leader change): ask again rather than wait it out.
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := streams.Setup(attempt, first, streams.Config{Replicas: 3, EpochSize: natstest.TestEpochSize})
		cancel()
		if err == nil {
			natstest.AwaitStream(t, servers, streams.StreamName)
			return st
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
	}
}

// onEachTopology runs test on a single server and on a cluster of three with a replicated
// stream, where replicas answer direct gets, the leader checks expectations, and an append can
// be refused while another is still in flight. newNode connects each node to the next server.
func onEachTopology(t *testing.T, test func(t *testing.T, newNode func() node)) {
	t.Run("single", func(t *testing.T) {
		s := natstest.RunServer(t, "")
		test(t, func() node { return newNode(t, s, streams.Config{}) })
	})
	t.Run("cluster", func(t *testing.T) {
		servers := natstest.RunCluster(t, 3)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		setupReplicated(t, ctx, servers)
		next := 0
		test(t, func() node {
			next++
			return newClusterNode(t, ctx, servers[next%len(servers)])
		})
	})
}

func provision(t *testing.T, st *streams.Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, _, _, err := st.ProvisionUser(ctxT(t), id, "User "+id); err != nil {
			t.Fatalf("provision %s: %v", id, err)
		}
	}
}

// events returns every event of the stream in order.
func events(t *testing.T, st jetstream.Stream) []domain.Event {
	t.Helper()
	ctx := ctxT(t)
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []domain.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get %d: %v", seq, err)
		}
		if raw.Subject == probeSubject {
			continue
		}
		e, err := domain.DecodeEvent(raw.Data)
		if err != nil {
			t.Fatal(err)
		}
		e.Seq = seq
		out = append(out, e)
	}
	return out
}

func count(evs []domain.Event, typ string) int {
	return countIf(evs, func(e domain.Event) bool { return e.Type == typ })
}

func countIf(evs []domain.Event, match func(domain.Event) bool) int {
	n := 0
	for _, e := range evs {
		if match(e) {
			n++
		}
	}
	return n
}

// A node whose cached state still says bob is a member must not append bob's message after
// another node removed him: the append expects the conversation's meta subject unchanged.
func TestSendAfterRemovalOnAnotherNodeIsRefused(t *testing.T) {
	s := natstest.RunServer(t, "")
	a, b := newNode(t, s, streams.Config{}), newNode(t, s, streams.Config{})
	provision(t, a.store, "alice", "bob")
	ctx := ctxT(t)
	g, _, _, err := a.store.CreateConversation(ctx, "alice", domain.KindGroup, "club", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	// bob's node learns the conversation (and caches it) by sending.
	if _, created, _, err := b.store.SendMessage(ctx, "bob", g.ID, "b1", "hi"); err != nil || !created {
		t.Fatalf("first send: created=%v err=%v", created, err)
	}
	if _, _, err := a.store.RemoveMember(ctx, "alice", g.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = b.store.SendMessage(ctx, "bob", g.ID, "b2", "still here?")
	if domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("send after removal: err = %v, want not_found", err)
	}
	evs := events(t, a.stream)
	if n := count(evs, domain.TypeMessageCreated); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
}

// Under a real race, no message from bob may follow the event that removed him.
func TestMembershipRace(t *testing.T) {
	onEachTopology(t, testMembershipRace)
}

func testMembershipRace(t *testing.T, newNode func() node) {
	a, b := newNode(), newNode()
	provision(t, a.store, "alice", "bob")
	ctx := ctxT(t)
	for i := range 30 {
		g, _, _, err := a.store.CreateConversation(ctx, "alice", domain.KindGroup, "race", []string{"bob"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := b.store.SendMessage(ctx, "bob", g.ID, "warm", "x"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for j := range 5 {
			wg.Go(func() {
				_, _, _, err := b.store.SendMessage(ctx, "bob", g.ID, fmt.Sprintf("m%d-%d", i, j), "racing")
				if err != nil && domain.ErrorCode(err) != domain.CodeNotFound {
					t.Errorf("send: %v", err)
				}
			})
		}
		wg.Go(func() {
			if _, _, err := a.store.RemoveMember(ctx, "alice", g.ID, "bob"); err != nil {
				t.Errorf("remove: %v", err)
			}
		})
		wg.Wait()
	}
	removed := map[string]bool{}
	for _, e := range events(t, a.stream) {
		switch e.Type {
		case domain.TypeMemberLeft:
			removed[e.ConversationID] = true
		case domain.TypeMessageCreated:
			if removed[e.ConversationID] {
				t.Fatalf("message at seq %d in %s appended after bob was removed", e.Seq, e.ConversationID)
			}
		}
	}
	if len(removed) != 30 {
		t.Fatalf("%d removals, want 30", len(removed))
	}
}

func directWithMessage(t *testing.T, n node, clientMsgID string) domain.Message {
	t.Helper()
	ctx := ctxT(t)
	provision(t, n.store, "alice", "bob")
	c, _, _, err := n.store.CreateConversation(ctx, "alice", domain.KindDirect, "", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	m, created, _, err := n.store.SendMessage(ctx, "alice", c.ID, clientMsgID, "hello")
	if err != nil || !created {
		t.Fatalf("send: created=%v err=%v", created, err)
	}
	return m
}

func assertRetry(t *testing.T, st *streams.Store, want domain.Message) {
	t.Helper()
	got, created, _, err := st.SendMessage(ctxT(t), want.SenderID, want.ConversationID, want.ClientMsgID, "a different body")
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if created || got.ID != want.ID || got.Seq != want.Seq || got.Body != want.Body || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Fatalf("retry = %+v (created %v), want the original %+v", got, created, want)
	}
}

// probeSubject carries the test's window probes, which are not events.
const probeSubject = "chat.evt.probe"

// Beyond JetStream's duplicate window, the message's own subject still finds the original.
func TestIdempotentBeyondDuplicateWindow(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{DuplicateWindow: time.Second})
	m := directWithMessage(t, n, "c1")

	// Wait until the window has provably passed: a probe published after the message stops
	// being reported as a duplicate.
	ctx := ctxT(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ack, err := n.js.Publish(ctx, probeSubject, []byte("{}"), jetstream.WithMsgID("probe"))
		if err != nil {
			t.Fatal(err)
		}
		if !ack.Duplicate && ack.Sequence > m.Seq+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("duplicate window never passed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	fresh := newStore(t, n.js, n.stream) // no caches
	assertRetry(t, fresh, m)
	if got := count(events(t, n.stream), domain.TypeMessageCreated); got != 1 {
		t.Fatalf("%d messages in the stream, want 1", got)
	}
}

// A restarted NATS server (same store) still finds the original.
func TestIdempotentAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := natstest.RunServer(t, dir)
	n := newNode(t, s, streams.Config{})
	m := directWithMessage(t, n, "c1")
	s.Shutdown()
	s.WaitForShutdown()

	s2 := natstest.RunServer(t, dir)
	n2 := newNode(t, s2, streams.Config{})
	assertRetry(t, n2.store, m)
	if got := count(events(t, n2.stream), domain.TypeMessageCreated); got != 1 {
		t.Fatalf("%d messages in the stream, want 1", got)
	}
}

// Concurrent retries from several nodes create one message between them.
func TestConcurrentRetriesCreateOneMessage(t *testing.T) {
	onEachTopology(t, testConcurrentRetriesCreateOneMessage)
}

func testConcurrentRetriesCreateOneMessage(t *testing.T, newNode func() node) {
	n := newNode()
	provision(t, n.store, "alice", "bob")
	c, _, _, err := n.store.CreateConversation(ctxT(t), "alice", domain.KindDirect, "", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		ids     = map[string]uint64{}
	)
	for range 8 {
		node := newNode()
		wg.Go(func() {
			m, ok, _, err := node.store.SendMessage(ctxT(t), "alice", c.ID, "same", "hello")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				created++
			}
			ids[m.ID] = m.Seq
		})
	}
	wg.Wait()
	if created != 1 || len(ids) != 1 {
		t.Fatalf("created %d times with ids %v, want once with one id", created, ids)
	}
	if got := count(events(t, n.stream), domain.TypeMessageCreated); got != 1 {
		t.Fatalf("%d messages in the stream, want 1", got)
	}
}

// Both members asking for their direct conversation at once get the same one.
func TestDirectConversationIsUnique(t *testing.T) {
	onEachTopology(t, testDirectConversationIsUnique)
}

func testDirectConversationIsUnique(t *testing.T, newNode func() node) {
	a, b := newNode(), newNode()
	provision(t, a.store, "alice", "bob")
	var wg sync.WaitGroup
	results := make([]domain.Conversation, 2)
	created := make([]bool, 2)
	wg.Go(func() {
		var err error
		results[0], created[0], _, err = a.store.CreateConversation(ctxT(t), "alice", domain.KindDirect, "", []string{"bob"})
		if err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() {
		var err error
		results[1], created[1], _, err = b.store.CreateConversation(ctxT(t), "bob", domain.KindDirect, "", []string{"alice"})
		if err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if results[0].ID != results[1].ID || created[0] == created[1] {
		t.Fatalf("got %s (created %v) and %s (created %v), want one conversation created once",
			results[0].ID, created[0], results[1].ID, created[1])
	}
	if got := count(events(t, a.stream), domain.TypeConversationCreated); got != 1 {
		t.Fatalf("%d conversation.created events, want 1", got)
	}
}

func TestEditAndDeleteRules(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	ctx := ctxT(t)
	m := directWithMessage(t, n, "c1")
	if _, _, err := n.store.EditMessage(ctx, "bob", m.ID, "hijack"); domain.ErrorCode(err) != domain.CodeForbidden {
		t.Fatalf("edit by bob: %v, want forbidden", err)
	}
	edited, _, err := n.store.EditMessage(ctx, "alice", m.ID, "hello, edited")
	if err != nil || edited.Body != "hello, edited" || edited.EditedAt == nil {
		t.Fatalf("edit: %+v %v", edited, err)
	}
	if _, _, err := n.store.DeleteMessage(ctx, "alice", m.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.store.EditMessage(ctx, "alice", m.ID, "resurrect"); domain.ErrorCode(err) != domain.CodeConflict {
		t.Fatalf("edit after delete: %v, want conflict", err)
	}
	got, _, err := n.store.Message(ctx, m.ID)
	if err != nil || !got.Deleted || got.Body != "" || got.EditedAt == nil || !got.EditedAt.Equal(*edited.EditedAt) {
		t.Fatalf("message after delete: %+v %v; want a tombstone that keeps its edit's time, as the read models do", got, err)
	}
	if _, _, err := n.store.Message(ctx, m.ConversationID+"-aaaaaaaaaaaaaaaaaaaa"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("unknown message: %v", err)
	}
	// An outsider learns nothing from an edit or delete: not even whether the conversation
	// exists (direct conversation ids are derived from user ids).
	existing := m.ConversationID + "-aaaaaaaaaaaaaaaaaaaa"
	never := domain.DirectID("bob", "carol") + "-aaaaaaaaaaaaaaaaaaaa"
	for _, id := range []string{m.ID, existing, never} {
		_, _, editErr := n.store.EditMessage(ctx, "carol", id, "probe")
		_, _, deleteErr := n.store.DeleteMessage(ctx, "carol", id)
		for _, err := range []error{editErr, deleteErr} {
			if domain.ErrorCode(err) != domain.CodeNotFound || domain.ErrorMessage(err) != "message not found" {
				t.Fatalf("carol changing %s: %v, want not_found \"message not found\"", id, err)
			}
		}
	}
}

// While NATS is down, writes fail fast as unavailable instead of hanging.
func TestWritesFailFastWhenNATSIsDown(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	m := directWithMessage(t, n, "c1")
	s.Shutdown()
	s.WaitForShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, _, _, err := n.store.SendMessage(ctx, "alice", m.ConversationID, "c2", "anyone?")
	if domain.ErrorCode(err) != domain.CodeUnavailable {
		t.Fatalf("send with NATS down: %v, want unavailable", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && err == nil {
		t.Fatal("send hung")
	}
}

// With DenyDelete the log can only grow, and a later start without it keeps it so.
func TestDenyDelete(t *testing.T) {
	s := natstest.RunServer(t, "")
	nc := natstest.Connect(t, s)
	_, st := natstest.Stream(t, nc, streams.Config{DenyDelete: true})
	ctx := ctxT(t)
	if err := st.Purge(ctx); err == nil {
		t.Fatal("purge allowed on a deny-delete stream")
	}
	_, st = natstest.Stream(t, nc, streams.Config{}) // a restart without the setting
	if err := st.Purge(ctx); err == nil {
		t.Fatal("purge allowed after a restart without DenyDelete")
	}
	if err := st.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("delete allowed")
	}
}

// A node whose cache still lists carol must not answer "already a member" after another node
// removed her: the no-op is decided again on fresh state, and the re-add is appended.
func TestReAddAfterRemovalOnAnotherNode(t *testing.T) {
	s := natstest.RunServer(t, "")
	a, b := newNode(t, s, streams.Config{}), newNode(t, s, streams.Config{})
	provision(t, a.store, "alice", "bob", "carol")
	ctx := ctxT(t)
	g, _, _, err := a.store.CreateConversation(ctx, "alice", domain.KindGroup, "club", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	_, removed, err := b.store.RemoveMember(ctx, "alice", g.ID, "carol")
	if err != nil {
		t.Fatal(err)
	}
	c, seq, err := a.store.AddMember(ctx, "alice", g.ID, "carol")
	if err != nil || seq <= removed || !c.IsMember("carol") {
		t.Fatalf("re-add on the stale node: seq %d (removal at %d), members %v, err %v", seq, removed, c.Members, err)
	}
	if n := count(events(t, a.stream), domain.TypeMemberJoined); n != 1 {
		t.Fatalf("%d member.joined events, want 1", n)
	}
	// Conversation() is what visibility checks use: it must never answer from the stale cache.
	if _, _, err := b.store.RemoveMember(ctx, "alice", g.ID, "carol"); err != nil {
		t.Fatal(err)
	}
	if c, _, err := a.store.Conversation(ctx, g.ID); err != nil || c.IsMember("carol") {
		t.Fatalf("Conversation on the stale node lists %v (err %v)", c.Members, err)
	}
}

// A retry answers only a member: a sender removed since the first attempt gets what every
// non-member gets, not the message.
func TestRetryAfterRemovalIsNotFound(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	provision(t, n.store, "alice", "bob")
	ctx := ctxT(t)
	g, _, _, err := n.store.CreateConversation(ctx, "alice", domain.KindGroup, "club", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := n.store.SendMessage(ctx, "bob", g.ID, "b1", "hello"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.store.RemoveMember(ctx, "alice", g.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := n.store.SendMessage(ctx, "bob", g.ID, "b1", "hello"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("retry after removal: %v, want not_found", err)
	}
}

// A request that ends while its append waits to try again is answered as unavailable (503),
// like every other read or append its end cuts short, not as an internal error.
func TestBackOffEndsUnavailable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := streams.BackOff(ctx, 5)
	if domain.ErrorCode(err) != domain.CodeUnavailable || !errors.Is(err, context.Canceled) {
		t.Fatalf("backOff after the request ended: %v, want unavailable wrapping context.Canceled", err)
	}
}
