package streams_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Every event of a conversation carries its position, and lands in the epoch of that position;
// a store that has cached nothing finds the tip however many epochs the conversation spans.
func TestEventsLandInTheirPositionsEpoch(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	provision(t, n.store, "alice", "bob")
	ctx := ctxT(t)
	c, _, _, err := n.store.CreateConversation(ctx, "alice", domain.KindGroup, "long", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	const sends = 11 * natstest.TestEpochSize
	for i := range sends {
		fresh := newStore(t, n.js, n.stream) // no cached tip, no known epoch
		if i%3 == 2 {
			_, err = fresh.MarkRead(ctx, "bob", c.ID, 1)
		} else {
			_, _, _, err = fresh.SendMessage(ctx, "alice", c.ID, strconv.Itoa(i), "hi")
		}
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}

	checkChain(t, n.stream, c.ID, 1+sends)
}

// Events written straight into the stream with Layout.Chain (as the load and replay tools do)
// continue the conversation's chain, and the store appends after them.
func TestChainedWritesContinueTheChain(t *testing.T) {
	n, c := directWithOneMessage(t)
	const written = 3*natstest.TestEpochSize + 1
	for i := range written {
		if _, err := n.js.PublishMsg(ctxT(t), chainedMessage(t, n, c, "bob", "direct"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	// The store's cached tip is behind: its append is refused, and it finds the new tip.
	if _, _, _, err := n.store.SendMessage(ctxT(t), "alice", c.ID, "after", "hi"); err != nil {
		t.Fatal(err)
	}
	checkChain(t, n.stream, c.ID, 2+written+1)
}

// checkChain checks that the conversation's chain is whole and holds events events, each
// carrying its position and stored in that position's epoch.
func checkChain(t *testing.T, st jetstream.Stream, conv string, events int) {
	t.Helper()
	res, problems := verify(t, st, conv)
	if len(problems) != 0 || res.Events != events {
		t.Fatalf("%+v %v", res, problems)
	}
	ctx := ctxT(t)
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pos := 0
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.Subject, "chat.evt.conv."+conv+".") {
			continue
		}
		if got := m.Header.Get(streams.PositionHeader); got != strconv.Itoa(pos) {
			t.Fatalf("seq %d: position %q, want %d", seq, got, pos)
		}
		epoch := strings.Split(m.Subject, ".")[4]
		if want := strconv.Itoa(pos / natstest.TestEpochSize); epoch != want {
			t.Fatalf("seq %d at position %d is in epoch %s, want %s (%s)", seq, pos, epoch, want, m.Subject)
		}
		pos++
	}
	if pos != events {
		t.Fatalf("%d conversation events, want %d", pos, events)
	}
}

// A message keeps its identity across epochs: a retry finds it, and its later edits and its
// deletion, each in the epoch of its time, are what its state is made of.
func TestMessageStateAcrossEpochs(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	ctx := ctxT(t)
	m := directWithMessage(t, n, "first")
	sent := 0
	later := func() {
		t.Helper()
		for range 3 * natstest.TestEpochSize {
			sent++
			if _, _, _, err := n.store.SendMessage(ctx, "bob", m.ConversationID, "later"+strconv.Itoa(sent), "hi"); err != nil {
				t.Fatal(err)
			}
		}
	}
	later()
	assertRetry(t, newStore(t, n.js, n.stream), m)

	if _, _, err := n.store.EditMessage(ctx, "alice", m.ID, "edited"); err != nil {
		t.Fatal(err)
	}
	later()
	got, _, err := newStore(t, n.js, n.stream).Message(ctx, m.ID)
	if err != nil || got.Body != "edited" {
		t.Fatalf("message after an edit epochs later: %+v, %v", got, err)
	}
	if _, _, err := n.store.DeleteMessage(ctx, "alice", m.ID); err != nil {
		t.Fatal(err)
	}
	later()
	fresh := newStore(t, n.js, n.stream)
	if _, _, err := fresh.EditMessage(ctx, "alice", m.ID, "back from the dead"); domain.ErrorCode(err) == "" {
		t.Fatalf("edit of a message deleted epochs ago: %v, want refused", err)
	}
	if again, created, _, err := fresh.SendMessage(ctx, "alice", m.ConversationID, m.ClientMsgID, "again"); err != nil || created || !again.Deleted || again.Body != "" {
		t.Fatalf("retry of a deleted message: %+v created=%v err=%v", again, created, err)
	}
	if got := count(events(t, n.stream), domain.TypeMessageCreated); got != 1+sent {
		t.Fatalf("%d messages in the stream", got)
	}
}

// The epoch size is fixed when the stream is created; a stream in the layout of an older
// development build is refused, not appended to in another layout.
func TestSetupKeepsTheLayout(t *testing.T) {
	s := natstest.RunServer(t, "")
	nc := natstest.Connect(t, s)
	_, st := natstest.Stream(t, nc, streams.Config{EpochSize: 8})
	_, st = natstest.Stream(t, nc, streams.Config{EpochSize: 64})
	if l, err := streams.LayoutOf(st); err != nil || l.EpochSize != 8 {
		t.Fatalf("layout after a second setup: %+v, %v; want epoch size 8", l, err)
	}

	old := natstest.RunServer(t, "")
	js, err := jetstream.New(natstest.Connect(t, old))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: streams.StreamName, Subjects: []string{streams.SubjectRoot}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "chat.evt.conv.x.meta", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := streams.Setup(ctx, js, streams.Config{}); err == nil || !strings.Contains(err.Error(), "layout") {
		t.Fatalf("setup on a stream in an old layout: %v, want refused", err)
	}
}

// A stream that cannot be looked up is not a missing stream: Setup stops instead of writing the
// default layout over one it never read. Here the lookup fails (and nothing else does) through a
// relay of the JetStream API that answers stream info requests with an error.
func TestSetupStopsWhenTheStreamCannotBeRead(t *testing.T) {
	s := natstest.RunServer(t, "")
	nc := natstest.Connect(t, s)
	_, st := natstest.Stream(t, nc, streams.Config{EpochSize: 8})
	const prefix = "RELAY.API."
	relay, err := nc.Subscribe(prefix+">", func(m *nats.Msg) {
		api := strings.TrimPrefix(m.Subject, prefix)
		if api == "STREAM.INFO."+streams.StreamName {
			m.Respond([]byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`)) //nolint:errcheck // the caller times out otherwise
			return
		}
		answer, err := nc.Request(jetstream.DefaultAPIPrefix+api, m.Data, 5*time.Second)
		if err != nil {
			t.Errorf("relay %s: %v", api, err)
			return
		}
		m.Respond(answer.Data) //nolint:errcheck // the caller times out otherwise
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Unsubscribe() }) //nolint:errcheck // the connection closes anyway
	js, err := jetstream.NewWithAPIPrefix(natstest.Connect(t, s), prefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	setupCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := streams.Setup(setupCtx, js, streams.Config{}); err == nil || !strings.Contains(err.Error(), "look up stream") {
		t.Fatalf("setup when the stream cannot be read: %v, want it refused", err)
	}
	if _, err := st.Info(ctx); err != nil { // LayoutOf reads the info st holds
		t.Fatal(err)
	}
	if l, err := streams.LayoutOf(st); err != nil || l.EpochSize != 8 {
		t.Fatalf("layout after the failed setup: %+v, %v; want epoch size 8", l, err)
	}
}

// An append expects the last sequence of its own epoch only: 0 when it starts the epoch, else
// the sequence of the conversation's previous event. Expecting it over the whole conversation
// would pass every other test, at a cost that grows with the conversation's history.
func TestAppendsExpectOnlyTheirEpoch(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	provision(t, n.store, "alice", "bob")
	published, err := n.js.Conn().SubscribeSync("chat.evt.conv.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	c, _, _, err := n.store.CreateConversation(ctx, "alice", domain.KindDirect, "", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	const events = 3*natstest.TestEpochSize + 2
	for i := 1; i < events; i++ {
		if _, _, _, err := n.store.SendMessage(ctx, "alice", c.ID, strconv.Itoa(i), "hi"); err != nil {
			t.Fatal(err)
		}
	}
	var prevSeq uint64
	for pos := range events {
		m, err := published.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("position %d: %v", pos, err)
		}
		epoch := pos / natstest.TestEpochSize
		wantFilter := fmt.Sprintf("chat.evt.conv.%s.%d.>", c.ID, epoch)
		wantSeq := strconv.FormatUint(prevSeq, 10)
		if pos%natstest.TestEpochSize == 0 {
			wantSeq = "0"
		}
		if got := m.Header.Get("Nats-Expected-Last-Subject-Sequence-Subject"); got != wantFilter {
			t.Fatalf("position %d expects over %q, want %q", pos, got, wantFilter)
		}
		if got := m.Header.Get("Nats-Expected-Last-Subject-Sequence"); got != wantSeq {
			t.Fatalf("position %d expects last sequence %s, want %s", pos, got, wantSeq)
		}
		stored, err := n.stream.GetLastMsgForSubject(ctx, m.Subject)
		if err != nil {
			t.Fatal(err)
		}
		prevSeq = stored.Sequence
	}
}

// A conversation whose last event carries no hash has no tip to chain to: appends are refused
// with that reason, not taken for appends to an empty conversation (which would conflict until
// the store gave up with "changed too often").
func TestNoChainingToAnEventWithoutHash(t *testing.T) {
	n, c := directWithOneMessage(t)
	msg := chainedMessage(t, n, c, "bob", "hashless")
	msg.Data = change(t, msg.Data, false, func(v map[string]any) { delete(v, "hash") })
	if _, err := n.js.PublishMsg(ctxT(t), msg); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := newStore(t, n.js, n.stream).SendMessage(ctxT(t), "alice", c.ID, "second", "hi")
	if err == nil || !strings.Contains(err.Error(), "no hash") {
		t.Fatalf("send after an event without hash: %v, want refused for that reason", err)
	}
}

// directWithOneMessage returns a node and a direct conversation between alice and bob that holds
// one message from alice.
func directWithOneMessage(t *testing.T) (node, domain.Conversation) {
	t.Helper()
	n := newNode(t, natstest.RunServer(t, ""), streams.Config{})
	m := directWithMessage(t, n, "first")
	c, _, err := n.store.Conversation(ctxT(t), m.ConversationID)
	if err != nil {
		t.Fatal(err)
	}
	return n, c
}

// chainedMessage returns, unpublished, the message that sender's send of clientMsgID to c would
// append after the conversation's current tip: what a send whose acknowledgement was lost left
// in the stream, or what a tool writes.
func chainedMessage(t *testing.T, n node, c domain.Conversation, sender, clientMsgID string) *nats.Msg {
	t.Helper()
	layout, err := streams.LayoutOf(n.stream)
	if err != nil {
		t.Fatal(err)
	}
	tip, err := streams.ReadTip(ctxT(t), n.js, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	e, err := domain.SendMessage(c, sender, clientMsgID, "hello", domain.DefaultLimits, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := layout.Chain(&e, tip)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set(jetstream.MsgIDHeader, domain.MessageID(c.ID, sender, clientMsgID)) // as the store sets it
	return m
}
