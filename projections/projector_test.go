package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/internal/pgtest"
	"github.com/chatd-dev/chatd/metrics"
	"github.com/chatd-dev/chatd/streams"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type fixture struct {
	t      testing.TB
	ctx    context.Context
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	stream jetstream.Stream
	store  *streams.Store
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	js, st := natstest.Stream(t, natstest.Connect(t, natstest.RunServer(t, "")), streams.Config{})
	pool, err := pgxpool.New(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := streams.NewStore(js, st, domain.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, ctx: ctx, pool: pool, js: js, stream: st, store: store}
}

func (f *fixture) projector() *Projector {
	return NewProjector(f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// run runs p until the test ends.
func (f *fixture) run(p *Projector) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	f.t.Cleanup(func() { cancel(); <-done })
}

func (f *fixture) lastSeq() uint64 {
	info, err := f.stream.Info(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return info.State.LastSeq
}

func (f *fixture) waitFor(p *Projector, seq uint64) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, seq); err != nil {
		f.t.Fatalf("projector at %d, want %d: %v", p.Position(), seq, err)
	}
}

// direct provisions a and b and returns their direct conversation.
func (f *fixture) direct(a, b string) domain.Conversation {
	f.t.Helper()
	for _, u := range []string{a, b} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	d, _, _, err := f.store.CreateConversation(f.ctx, a, domain.KindDirect, "", []string{b})
	f.check(err)
	return d
}

// poison appends to conversation conv a message from actor that PostgreSQL refuses: its body
// holds a NUL, which the text type does not take. (The command side refuses such bodies; this
// one is written past it, as a bug or an old version might.)
func (f *fixture) poison(conv, actor string) {
	f.t.Helper()
	poison := fmt.Sprintf(`{"v":1,"id":"epoison","type":"message.created","conversation_id":%q,"actor":%q,`+
		`"time":"2026-11-23T10:00:00Z","data":{"message_id":"%s-aaaaaaaaaaaaaaaaaaaa","sender_id":%q,"client_msg_id":"p","body":"a\u0000b"}}`,
		conv, actor, conv, actor)
	_, err := f.js.Publish(f.ctx, "chat.evt.conv."+conv+".msg.aaaaaaaaaaaaaaaaaaaa", []byte(poison))
	f.check(err)
}

// sendMany sends n messages from alice into conv.
func (f *fixture) sendMany(conv string, n int) {
	f.t.Helper()
	for i := range n {
		_, _, _, err := f.store.SendMessage(f.ctx, "alice", conv, fmt.Sprint(i), "hi")
		f.check(err)
	}
}

// publishNewer appends to conv an event of a schema version newer than this build reads, and
// returns its sequence.
func (f *fixture) publishNewer(conv string) uint64 {
	f.t.Helper()
	newer := fmt.Sprintf(`{"v":%d,"id":"e-newer","type":"message.created","conversation_id":%q,"actor":"alice","time":"2026-11-30T00:00:00Z","data":{}}`,
		domain.SchemaVersion+1, conv)
	ack, err := f.js.Publish(f.ctx, "chat.evt.newer", []byte(newer))
	f.check(err)
	return ack.Sequence
}

// stoppedAt waits until p reports the newer event at seq, and checks it stopped just before it.
func (f *fixture) stoppedAt(p *Projector, seq uint64) {
	f.t.Helper()
	f.eventually("the projector reports the newer event", func() (bool, error) {
		st, err := p.Status(f.ctx)
		return strings.Contains(st.Error, "needs a newer chatd"), err
	})
	time.Sleep(200 * time.Millisecond) // it retries: it must keep stopping there
	if pos := p.Position(); pos != seq-1 {
		f.t.Fatalf("projector at %d, want %d, just before the newer event", pos, seq-1)
	}
}

func (f *fixture) check(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

// A projector that applies a batch which another projector has already applied, and more
// after it, must change nothing: old events must not overwrite newer state.
func TestProjectorSkipsWhatWasApplied(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	g, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "club", []string{"bob"})
	f.check(err)
	_, _, err = f.store.AddMember(f.ctx, "alice", g.ID, "carol")
	f.check(err)
	m, _, _, err := f.store.SendMessage(f.ctx, "alice", g.ID, "m1", "first")
	f.check(err)
	_, _, err = f.store.EditMessage(f.ctx, "alice", m.ID, "edited once")
	f.check(err)
	oldBatchEnd := f.lastSeq() // carol joined, the message edited once

	_, _, err = f.store.EditMessage(f.ctx, "alice", m.ID, "edited twice")
	f.check(err)
	_, _, err = f.store.RemoveMember(f.ctx, "alice", g.ID, "carol")
	f.check(err)

	a := f.projector()
	f.run(a)
	f.waitFor(a, f.lastSeq())

	// Projector b, which has taken the lead since, holds a batch of events 1..oldBatchEnd that a
	// has applied (a leader's term keeps a from committing more; the checkpoint keeps b from
	// applying these again).
	b := f.projector()
	_, err = b.takeOver(f.ctx)
	f.check(err)
	cons, err := f.stream.OrderedConsumer(f.ctx, jetstream.OrderedConsumerConfig{})
	f.check(err)
	batch, err := cons.Fetch(int(oldBatchEnd), jetstream.FetchMaxWait(5*time.Second))
	f.check(err)
	var msgs []jetstream.Msg
	for msg := range batch.Messages() {
		msgs = append(msgs, msg)
	}
	if len(msgs) != int(oldBatchEnd) {
		t.Fatalf("fetched %d events, want %d", len(msgs), oldBatchEnd)
	}
	d, err := b.decode(msgs)
	f.check(err)
	f.check(b.applyBatch(f.ctx, d))

	got, err := NewMessages(f.pool).Get(f.ctx, m.ID)
	f.check(err)
	if got.Body != "edited twice" {
		t.Fatalf("body %q after a stale batch, want the newest edit", got.Body)
	}
	if ok, err := NewConversations(f.pool).IsMember(f.ctx, "carol", g.ID); err != nil || ok {
		t.Fatalf("carol is a member again after a stale batch (err %v)", err)
	}
	var cp uint64
	f.check(f.pool.QueryRow(f.ctx, `SELECT seq FROM projector_checkpoints WHERE name = $1`, ProjectorName).Scan(&cp))
	if cp != f.lastSeq() {
		t.Fatalf("checkpoint %d, want %d", cp, f.lastSeq())
	}
}

// Two projectors running at once (two chatd nodes): one leads and applies every event exactly
// once, the other follows its checkpoint, so reads with min_seq work on both nodes.
func TestConcurrentProjectors(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	a, b := f.projector(), f.projector()
	f.run(a)
	f.run(b)
	var (
		last domain.Message
		err  error
	)
	for i := range 300 {
		last, _, _, err = f.store.SendMessage(f.ctx, "alice", d.ID, fmt.Sprint(i), fmt.Sprint("message ", i))
		f.check(err)
		if i%50 == 0 {
			_, _, err = f.store.EditMessage(f.ctx, "alice", last.ID, "edited")
			f.check(err)
		}
	}
	f.waitFor(a, f.lastSeq())
	f.waitFor(b, f.lastSeq())
	var n, edited int
	f.check(f.pool.QueryRow(f.ctx, `SELECT count(*), count(edited_at) FROM messages`).Scan(&n, &edited))
	if n != 300 || edited != 6 {
		t.Fatalf("%d messages (%d edited), want 300 (6)", n, edited)
	}
	v, err := NewConversations(f.pool).Get(f.ctx, "bob", d.ID)
	f.check(err)
	if v.UnreadCount != 300 || v.LastMessage == nil || v.LastMessage.ID != last.ID {
		t.Fatalf("bob's view: unread %d, last %+v", v.UnreadCount, v.LastMessage)
	}
	_, ea := a.Stats()
	_, eb := b.Stats()
	if ea+eb != f.lastSeq() || (ea != 0 && eb != 0) {
		t.Fatalf("projectors applied %d and %d events, want one of them all %d", ea, eb, f.lastSeq())
	}
	for _, p := range []*Projector{a, b} {
		if err := p.Healthy(); err != nil {
			t.Fatalf("projector not healthy: %v", err)
		}
	}
}

// When the leader stops, the standby takes over and applies what comes next.
func TestStandbyTakesOver(t *testing.T) {
	f := newFixture(t)
	_, _, _, err := f.store.ProvisionUser(f.ctx, "alice", "alice")
	f.check(err)
	a := f.projector()
	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { a.Run(ctxA); close(doneA) }()
	f.waitFor(a, f.lastSeq())
	b := f.projector()
	f.run(b)
	f.waitFor(b, f.lastSeq()) // b stands by and follows
	stopA()
	<-doneA
	_, _, _, err = f.store.ProvisionUser(f.ctx, "bob", "bob")
	f.check(err)
	f.waitFor(b, f.lastSeq())
	if _, events := b.Stats(); events != 1 {
		t.Fatalf("the standby applied %d events after taking over, want 1", events)
	}
}

// Events that are already in the stream when the projector starts are applied in batches, not
// one transaction each.
func TestProjectorBatches(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	f.sendMany(d.ID, 1000)
	p := f.projector()
	f.run(p)
	f.waitFor(p, f.lastSeq())
	batches, events := p.Stats()
	if events != f.lastSeq() || batches > 100 {
		t.Fatalf("%d events in %d batches, want %d events in at most 100 batches", events, batches, f.lastSeq())
	}
}

// An event PostgreSQL rejects is parked with the later events of its conversation; every other
// conversation goes on, and the checkpoint passes it.
func TestPoisonEventIsParked(t *testing.T) {
	f := newFixture(t)
	poisoned := f.direct("alice", "bob")
	_, _, _, err := f.store.ProvisionUser(f.ctx, "carol", "carol")
	f.check(err)
	healthy, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindDirect, "", []string{"carol"})
	f.check(err)

	f.poison(poisoned.ID, "alice")
	_, _, _, err = f.store.SendMessage(f.ctx, "alice", poisoned.ID, "after", "waits with the poison")
	f.check(err)
	ok, _, _, err := f.store.SendMessage(f.ctx, "alice", healthy.ID, "fine", "goes through")
	f.check(err)

	p := f.projector()
	m := metrics.New(prometheus.NewRegistry())
	p.Metrics = m
	f.run(p)
	f.waitFor(p, f.lastSeq())
	if _, err := NewMessages(f.pool).Get(f.ctx, ok.ID); err != nil {
		t.Fatalf("the healthy conversation's message: %v", err)
	}
	var n int
	f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM messages WHERE conversation_id = $1`, poisoned.ID).Scan(&n))
	if n != 0 {
		t.Fatalf("%d messages of the poisoned conversation applied, want 0 (order kept)", n)
	}
	f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM parked_events WHERE conversation_id = $1`, poisoned.ID).Scan(&n))
	if n != 2 || p.Parked() != 2 {
		t.Fatalf("%d parked rows, Parked() = %d, want 2", n, p.Parked())
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("projector stopped: %v", err)
	}
	// Operators see it in the metric and the admin status.
	if got := testutil.ToFloat64(m.ParkedEvents); got != 2 {
		t.Fatalf("parked events metric %v, want 2", got)
	}
	st, err := p.Status(f.ctx)
	if err != nil || st.ParkedEvents != 2 || st.LagEvents != 0 {
		t.Fatalf("status %+v, %v", st, err)
	}
	// A rebuild applies everything again and parks what still fails.
	if _, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM parked_events WHERE conversation_id = $1`, poisoned.ID).Scan(&n))
	if n != 2 {
		t.Fatalf("%d parked rows after a rebuild, want 2", n)
	}
	if _, err := NewMessages(f.pool).Get(f.ctx, ok.ID); err != nil {
		t.Fatalf("the healthy conversation's message after a rebuild: %v", err)
	}
}

// A projector that parks an event after a rebuild switched the read models over under it stops
// instead, as applyBatch does, and starts again from the new checkpoint: the rebuilt tables may
// well accept the event that the replaced ones rejected.
func TestParkAfterSwitchOver(t *testing.T) {
	f := newFixture(t)
	_, _, _, err := f.store.ProvisionUser(f.ctx, "alice", "alice")
	f.check(err)
	p := f.projector()
	f.check(p.catchUp(f.ctx, f.lastSeq(), nil))
	res, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{})
	f.check(err)

	_, _, _, err = f.store.ProvisionUser(f.ctx, "bob", "bob")
	f.check(err)
	raw, err := f.stream.GetMsg(f.ctx, f.lastSeq())
	f.check(err)
	m := streams.Stored{Seq: raw.Sequence, Subject: raw.Subject, Data: raw.Data}
	if err := p.park(f.ctx, m, errors.New("rejected by the replaced tables")); !errors.Is(err, errSwitched) {
		t.Fatalf("park after a switch-over: %v, want errSwitched", err)
	}
	var parked int
	var cp uint64
	f.check(f.pool.QueryRow(f.ctx, `SELECT (SELECT count(*) FROM parked_events), (SELECT seq FROM projector_checkpoints WHERE name = $1)`,
		ProjectorName).Scan(&parked, &cp))
	if parked != 0 || cp != res.Seq {
		t.Fatalf("the rebuilt tables have %d parked events and checkpoint %d, want 0 and %d", parked, cp, res.Seq)
	}
}

// An event that cannot be decoded is skipped, and the events after it applied; an event of a
// newer schema stops the projector before it, in the batch and in every batch after, since
// skipping it would leave read models that no rebuild by a newer chatd would.
func TestProjectorSkipsUndecodableAndStopsAtNewerSchema(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	send := func(text string) {
		_, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, text, text)
		f.check(err)
	}
	count := func() int {
		var n int
		f.check(f.pool.QueryRow(f.ctx, `SELECT count(*) FROM messages`).Scan(&n))
		return n
	}
	send("one")
	_, err := f.js.Publish(f.ctx, "chat.evt.garbage", []byte("not an event"))
	f.check(err)
	send("two")
	p := f.projector()
	f.run(p)
	f.waitFor(p, f.lastSeq())
	if n := count(); n != 2 {
		t.Fatalf("%d messages projected around the undecodable event, want 2", n)
	}

	newer := f.publishNewer(d.ID)
	send("three")
	f.stoppedAt(p, newer)
	if n := count(); n != 2 {
		t.Fatalf("%d messages projected, want 2: nothing after the newer event", n)
	}
}

// A read marker past PostgreSQL's bigint was accepted until the command side refused it
// (domain.MaxSeq). Such an event in the stream must not stop the projector: the marker is
// clamped like any marker from the future, to the conversation's last activity.
func TestReadMarkerPastBigintIsClamped(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	first, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "one", "one")
	f.check(err)
	marker := fmt.Sprintf(`{"v":1,"id":"e-marker","type":"read.updated","conversation_id":%q,"actor":"bob",`+
		`"time":"2026-11-23T10:00:00Z","data":{"user_id":"bob","seq":%d}}`, d.ID, uint64(math.MaxUint64))
	_, err = f.js.Publish(f.ctx, "chat.evt.conv."+d.ID+".read.bob", []byte(marker))
	f.check(err)
	after, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "two", "two")
	f.check(err)

	p := f.projector()
	f.run(p)
	f.waitFor(p, f.lastSeq())
	if err := p.Healthy(); err != nil {
		t.Fatalf("projector stopped: %v", err)
	}
	if _, err := NewMessages(f.pool).Get(f.ctx, after.ID); err != nil {
		t.Fatalf("the message after the marker: %v", err)
	}
	var read uint64
	f.check(f.pool.QueryRow(f.ctx, `SELECT last_read_seq FROM members WHERE conversation_id = $1 AND user_id = 'bob'`, d.ID).Scan(&read))
	if read != first.Seq {
		t.Fatalf("bob's marker at %d, want %d (the conversation's last activity when it was set)", read, first.Seq)
	}
	// A rebuild (a bulk load) gets past it too.
	if _, err := Rebuild(f.ctx, f.pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildOptions{}); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	f.check(f.pool.QueryRow(f.ctx, `SELECT last_read_seq FROM members WHERE conversation_id = $1 AND user_id = 'bob'`, d.ID).Scan(&read))
	if read != first.Seq {
		t.Fatalf("bob's marker at %d after a rebuild, want %d", read, first.Seq)
	}
}

// An event whose data does not fit the read models (a field of the wrong type, written past the
// command side) is parked like one PostgreSQL refuses, instead of stopping the projector.
func TestUnusableDataIsParked(t *testing.T) {
	f := newFixture(t)
	// One conversation each: an event after a parked one in its conversation is parked anyway.
	badBody, badMarker, healthy := f.direct("alice", "bob"), f.direct("bob", "carol"), f.direct("alice", "carol")
	for i, bad := range []struct{ conv, typ, data string }{
		{badBody.ID, "message.created", `{"message_id":"` + badBody.ID + `-aaaaaaaaaaaaaaaaaaaa","sender_id":"alice","client_msg_id":"p","body":5}`},
		{badMarker.ID, "read.updated", `{"user_id":"bob","seq":-1}`},
	} {
		e := fmt.Sprintf(`{"v":1,"id":"e-bad-%d","type":%q,"conversation_id":%q,"actor":"bob","time":"2026-11-23T10:00:00Z","data":%s}`, i, bad.typ, bad.conv, bad.data)
		_, err := f.js.Publish(f.ctx, fmt.Sprintf("chat.evt.conv.%s.msg.bad%d", bad.conv, i), []byte(e))
		f.check(err)
	}
	ok, _, _, err := f.store.SendMessage(f.ctx, "alice", healthy.ID, "fine", "goes through")
	f.check(err)

	p := f.projector()
	f.run(p)
	f.waitFor(p, f.lastSeq())
	if _, err := NewMessages(f.pool).Get(f.ctx, ok.ID); err != nil {
		t.Fatalf("the healthy conversation's message: %v", err)
	}
	if p.Parked() != 2 {
		t.Fatalf("%d events parked, want 2", p.Parked())
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("projector stopped: %v", err)
	}
}

// A lock held by someone else (a migration or a manual REINDEX, with a lock timeout on the
// projector's connections) is the database's state, not the event's: the projector waits and
// retries, and parks nothing.
func TestLockTimeoutParksNothing(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	cfg := f.pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "100ms"
	pool, err := pgxpool.NewWithConfig(f.ctx, cfg)
	f.check(err)
	t.Cleanup(pool.Close)
	p := NewProjector(pool, f.js.Conn(), f.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.run(p)
	f.waitFor(p, f.lastSeq())

	locker, err := f.pool.Begin(f.ctx)
	f.check(err)
	t.Cleanup(func() { _ = locker.Rollback(context.Background()) }) // on failure too: the pool closes only once it is back
	_, err = locker.Exec(f.ctx, `LOCK TABLE messages IN SHARE MODE`)
	f.check(err)
	m, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "1", "while locked")
	f.check(err)
	f.eventually("the projector fails against the lock", func() (bool, error) { return p.Healthy() != nil, nil })
	f.check(locker.Rollback(f.ctx))
	f.waitFor(p, m.Seq)
	if p.Parked() != 0 {
		t.Fatalf("%d events parked for a lock", p.Parked())
	}
	if _, err := NewMessages(f.pool).Get(f.ctx, m.ID); err != nil {
		t.Fatalf("the message sent while locked: %v", err)
	}
}

// The projector stops at an event from a newer chatd, not at the start of its batch: the events
// before it, of every conversation, are applied.
func TestProjectorAppliesWhatPrecedesANewerEvent(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	before, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "1", "before")
	f.check(err)
	newer := f.publishNewer(d.ID)
	_, _, _, err = f.store.SendMessage(f.ctx, "alice", d.ID, "2", "after")
	f.check(err)

	p := f.projector() // all of it arrives in its first batch
	f.run(p)
	f.stoppedAt(p, newer)
	if _, err := NewMessages(f.pool).Get(f.ctx, before.ID); err != nil {
		t.Fatalf("the message before the newer event: %v", err)
	}
}
