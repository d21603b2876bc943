package projections

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
)

// pushLog records what a projector publishes, and checks that each push names the one before it
// to the same subject as its prev (0 for the first).
type pushLog struct {
	t      *testing.T
	mu     sync.Mutex
	pushes []string
	checks []string
	last   map[string]uint64
}

func (l *pushLog) publish(subject string, seq, prev uint64, data []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]uint64{}
	}
	if push, ok := streams.PushSubjectOfCheck(subject); ok {
		if seq != 0 || data != nil || prev != l.last[push] {
			l.t.Errorf("check to %s: seq %d, prev %d, frame %q; want 0, the last push %d, none", subject, seq, prev, data, l.last[push])
		}
		l.checks = append(l.checks, fmt.Sprintf("%s %d", push, prev))
		return nil
	}
	if prev != l.last[subject] {
		l.t.Errorf("push %d to %s names %d as the one before, want %d", seq, subject, prev, l.last[subject])
	}
	l.last[subject] = seq
	l.pushes = append(l.pushes, fmt.Sprintf("%s %d %s", subject, seq, data))
	return nil
}

func (l *pushLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.pushes)
}

func (f *fixture) waitLeading(p *Projector) {
	f.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		p.mu.Lock()
		state := p.state
		p.mu.Unlock()
		if state == stateLeading {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("projector %s, not leading", state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A leader that dies between committing a batch and publishing its pushes leaves clients on
// other nodes without them until they reconnect. The next leader pushes the last events again,
// exactly as the old leader would have: to the members each event had (membership changes in
// the window included, of conversations created before it), and not the parked events.
func TestNewLeaderPushesWhatTheOldOneMayNotHave(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	send := func(conv, id string) uint64 {
		m, _, _, err := f.store.SendMessage(f.ctx, "alice", conv, id, "message "+id)
		f.check(err)
		return m.Seq
	}
	g, _, gSeq, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "club", []string{"bob"})
	f.check(err)
	d, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindDirect, "", []string{"dave"})
	f.check(err)
	h, _, hSeq, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "chess", []string{"dave"})
	f.check(err)
	send(d.ID, "d1")
	first := send(g.ID, "1") // the window starts here: bob and alice hear it, carol does not
	_, _, err = f.store.AddMember(f.ctx, "alice", g.ID, "carol")
	f.check(err)
	send(g.ID, "2")
	_, _, err = f.store.RemoveMember(f.ctx, "alice", g.ID, "bob")
	f.check(err)
	send(g.ID, "3")
	send(h.ID, "h1") // dave hears it, then leaves
	_, _, err = f.store.RemoveMember(f.ctx, "alice", h.ID, "dave")
	f.check(err)
	_, err = f.store.MarkRead(f.ctx, "dave", d.ID, f.lastSeq())
	f.check(err)
	// A conversation whose first message PostgreSQL refuses (see TestPoisonEventIsParked): that
	// message and the next are parked, never pushed.
	poisoned, _, _, err := f.store.CreateConversation(f.ctx, "bob", domain.KindDirect, "", []string{"carol"})
	f.check(err)
	f.poison(poisoned.ID, "bob")
	_, _, _, err = f.store.SendMessage(f.ctx, "bob", poisoned.ID, "after", "waits with the poison")
	f.check(err)
	send(g.ID, "4")
	// Batches of 3 make the window the last 12 events.
	const batch = 3
	from := f.lastSeq() - 4*batch
	if first != from+1 || gSeq > from || hSeq > from {
		t.Fatalf("the window starts after %d: want message 1 (%d) first in it, the groups (%d, %d) before it", from, first, gSeq, hSeq)
	}

	// The old leader commits everything and "dies" before any push leaves: its log is what it
	// would have published.
	old, next := pushLog{t: t}, pushLog{t: t}
	a := f.projector()
	a.batchSize, a.Publish = batch, old.publish
	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { a.Run(ctxA); close(doneA) }()
	f.waitFor(a, f.lastSeq())
	stopA()
	<-doneA
	if a.Parked() != 2 {
		t.Fatalf("%d events parked, want 2", a.Parked())
	}
	var want []string
	for _, p := range old.list() {
		var subject string
		var seq uint64
		if _, err := fmt.Sscan(p, &subject, &seq); err != nil {
			t.Fatal(err)
		}
		if seq > from {
			want = append(want, p)
		}
	}
	// 2 for message 1, 3 each for carol's arrival (hers is conversation.created), message 2 and
	// bob's departure, 2 each for message 3, h1 and dave's departure, 1 for dave's read marker,
	// 2 for the poisoned conversation's creation, 2 for message 4.
	if len(want) != 22 {
		t.Fatalf("the old leader pushed %d frames in the window, want 22: %q", len(want), want)
	}

	// Had the old leader checked its pushes up to its end, the new one still pushes its last
	// four batches again (see repushFrom).
	_, err = f.pool.Exec(f.ctx, `UPDATE projector_checkpoints SET checked_seq = seq`)
	f.check(err)
	b := f.projector()
	b.batchSize, b.Publish = batch, next.publish
	f.run(b)
	f.waitLeading(b)
	if got := next.list(); !slices.Equal(got, want) {
		t.Fatalf("the new leader pushed\n%q\nwant what the old one would have:\n%q", got, want)
	}
	// And it goes on from there.
	send(g.ID, "5")
	f.waitFor(b, f.lastSeq())
	got := next.list()
	for deadline := time.Now().Add(10 * time.Second); len(got) < len(want)+2 && time.Now().Before(deadline); got = next.list() {
		time.Sleep(10 * time.Millisecond) // pushes leave just after the position moves
	}
	if len(got) != len(want)+2 || !strings.HasPrefix(got[len(got)-1], streams.PushSubject("carol")+" ") {
		t.Fatalf("after taking over: %q", got[len(want):])
	}
}

// A leader whose lock session ended without its noticing commits nothing once another projector
// has taken the lead.
func TestDeposedLeaderCommitsNothing(t *testing.T) {
	f := newFixture(t)
	_, _, _, err := f.store.ProvisionUser(f.ctx, "alice", "alice")
	f.check(err)
	a, b := f.projector(), f.projector()
	_, err = a.takeOver(f.ctx)
	f.check(err)
	_, err = b.takeOver(f.ctx)
	f.check(err)
	if err := a.catchUp(f.ctx, f.lastSeq(), nil); !errors.Is(err, errDeposed) {
		t.Fatalf("the deposed leader's batch: %v, want %v", err, errDeposed)
	}
	if cp, err := a.checkpoint(f.ctx); err != nil || cp != 0 {
		t.Fatalf("checkpoint %d (%v) after the deposed leader's batch, want 0", cp, err)
	}
	f.check(b.catchUp(f.ctx, f.lastSeq(), nil))
}

// Every few seconds the leader tells each user it pushed to since the last time which push was
// the last, so that a node that lost it notices without waiting for the next one. (pushLog checks
// that every check names the last push to its user.)
func TestLeaderChecksItsLastPushes(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	log := pushLog{t: t}
	p := f.projector()
	p.Publish, p.checkEvery = log.publish, 20*time.Millisecond
	f.run(p)
	f.waitLeading(p)
	m, _, _, err := f.store.SendMessage(f.ctx, "alice", d.ID, "1", "hi")
	f.check(err)
	f.waitFor(p, m.Seq)
	checks := func() []string {
		log.mu.Lock()
		defer log.mu.Unlock()
		return slices.Clone(log.checks)
	}
	wantAfter := []string{fmt.Sprint(streams.PushSubject("alice"), " ", m.Seq), fmt.Sprint(streams.PushSubject("bob"), " ", m.Seq)}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := checks()
		if len(got) >= 2 && slices.Contains(got, wantAfter[0]) && slices.Contains(got, wantAfter[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checks %q, want ones naming the message for alice and bob", got)
		}
	}
	before := checks()
	time.Sleep(10 * p.checkEvery) // nobody was pushed to since: no more checks
	if got := checks(); len(got) != len(before) {
		t.Fatalf("checks %q after the message's, want none", got[len(before):])
	}
}

// A leader that finds itself deposed goes back through the lock: here nobody else holds it, so
// it takes the lead again, with a new term, and applies what comes next.
func TestDeposedLeaderTakesTheLeadAgain(t *testing.T) {
	f := newFixture(t)
	_, _, _, err := f.store.ProvisionUser(f.ctx, "alice", "alice")
	f.check(err)
	a := f.projector()
	f.run(a)
	f.waitFor(a, f.lastSeq())
	f.waitLeading(a)
	b := f.projector() // another node's projector took the lead (and then went away)
	_, err = b.takeOver(f.ctx)
	f.check(err)
	_, _, _, err = f.store.ProvisionUser(f.ctx, "bob", "bob")
	f.check(err)
	f.waitFor(a, f.lastSeq())
	var term uint64
	f.check(f.pool.QueryRow(f.ctx, `SELECT term FROM projector_checkpoints WHERE name = $1`, ProjectorName).Scan(&term))
	if term != 3 {
		t.Fatalf("term %d, want 3: a's, b's, a's again", term)
	}
	if err := a.Healthy(); err != nil {
		t.Fatal(err)
	}
}

// remembered returns what p remembers of conv's members and what the members table holds; a
// leader's memory must always equal the table.
func (f *fixture) remembered(p *Projector, conv string) (mem, table []string, ok bool) {
	f.t.Helper()
	mem, ok = p.members.Get(conv)
	f.check(f.pool.QueryRow(f.ctx, `SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') FROM members WHERE conversation_id = $1`, conv).Scan(&table))
	mem = slices.Sorted(slices.Values(mem))
	return mem, table, ok
}

// A leader reads each conversation's members from PostgreSQL once, and then keeps them as its own
// commits change them: after every batch, what it remembers is what the table holds, and each
// message goes to the members it had when it was sent.
func TestLeaderRemembersMembersAsItsCommitsLeaveThem(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	g, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "club", []string{"bob", "carol"})
	f.check(err)
	log := pushLog{t: t}
	p := f.projector()
	p.Publish = log.publish
	f.run(p)
	sent := map[uint64]string{} // the message's seq: who should hear it
	step := func(seq uint64, audience string) {
		t.Helper()
		f.waitFor(p, seq)
		mem, table, ok := f.remembered(p, g.ID)
		if !ok || !slices.Equal(mem, table) {
			t.Fatalf("after seq %d the leader remembers %q (%v), the table holds %q", seq, mem, ok, table)
		}
		if audience != "" {
			sent[seq] = audience
		}
	}
	send := func(id, audience string) {
		m, _, _, err := f.store.SendMessage(f.ctx, "alice", g.ID, id, "hi")
		f.check(err)
		step(m.Seq, audience)
	}
	send("1", "alice bob carol")
	_, seq, err := f.store.RemoveMember(f.ctx, "bob", g.ID, "bob")
	f.check(err)
	step(seq, "")
	send("2", "alice carol")
	_, seq, err = f.store.AddMember(f.ctx, "alice", g.ID, "dave")
	f.check(err)
	step(seq, "")
	send("3", "alice carol dave")
	pushedTo := func() map[uint64]string { // pushes go out after the position moves
		got := map[uint64][]string{}
		for _, push := range log.list() {
			var subject string
			var seq uint64
			if _, err := fmt.Sscanf(push, "%s %d", &subject, &seq); err != nil {
				t.Fatal(err)
			}
			if _, ok := sent[seq]; ok {
				got[seq] = append(got[seq], strings.TrimPrefix(subject, streams.PushSubject("")))
			}
		}
		users := map[uint64]string{}
		for seq, us := range got {
			users[seq] = strings.Join(slices.Sorted(slices.Values(us)), " ")
		}
		return users
	}
	for deadline := time.Now().Add(10 * time.Second); !maps.Equal(pushedTo(), sent) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := pushedTo(); !maps.Equal(got, sent) {
		t.Errorf("messages pushed to %v, want %v", got, sent)
	}
}

// A leader forgets the members it remembered when it takes the lead again: while another leader
// led, memberships may have changed.
func TestLeaderForgetsMembersBetweenTerms(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	g, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "club", []string{"bob", "carol"})
	f.check(err)
	_, _, _, err = f.store.SendMessage(f.ctx, "alice", g.ID, "1", "hi")
	f.check(err)
	log := pushLog{t: t}
	a, b := f.projector(), f.projector()
	a.Publish, b.Publish = log.publish, func(string, uint64, uint64, []byte) error { return nil }
	_, err = a.takeOver(f.ctx)
	f.check(err)
	f.check(a.catchUp(f.ctx, f.lastSeq(), nil))
	if mem, _, ok := f.remembered(a, g.ID); !ok || len(mem) != 3 {
		t.Fatalf("a remembers %q (%v), want the three members", mem, ok)
	}
	// b leads while bob leaves, then a leads again.
	_, err = b.takeOver(f.ctx)
	f.check(err)
	_, _, err = f.store.RemoveMember(f.ctx, "bob", g.ID, "bob")
	f.check(err)
	f.check(b.catchUp(f.ctx, f.lastSeq(), nil))
	_, err = a.takeOver(f.ctx)
	f.check(err)
	log.mu.Lock()
	log.last = nil // a new term's first pushes name none before them
	log.mu.Unlock()
	m, _, _, err := f.store.SendMessage(f.ctx, "alice", g.ID, "2", "hi")
	f.check(err)
	f.check(a.catchUp(f.ctx, f.lastSeq(), nil))
	for _, push := range log.list() {
		if strings.HasPrefix(push, fmt.Sprint(streams.PushSubject("bob"), " ", m.Seq, " ")) {
			t.Fatalf("bob, who left while another leader led, got the message after it: %s", push)
		}
	}
	if mem, table, ok := f.remembered(a, g.ID); !ok || !slices.Equal(mem, table) {
		t.Fatalf("a remembers %q (%v), the table holds %q", mem, ok, table)
	}
}

// A group that grows past what a leader keeps in memory is forgotten, not kept as it was.
func TestLeaderForgetsLargeGroups(t *testing.T) {
	p := newFixture(t).projector()
	small := []string{"alice", "bob"}
	p.remember(Audience{"g": small})
	if got, ok := p.members.Get("g"); !ok || !slices.Equal(got, small) {
		t.Fatalf("remembered %q (%v), want %q", got, ok, small)
	}
	large := make([]string, rememberedMembers+1)
	for i := range large {
		large[i] = fmt.Sprint("u", i)
	}
	p.remember(Audience{"g": large})
	if got, ok := p.members.Get("g"); ok {
		t.Fatalf("remembered %d members of a group of %d, want none", len(got), len(large))
	}
}

// A leader records how far its checks reach, and its successor pushes again everything after
// that, beyond its last four batches: a push lost before the takeover but after the last check
// would otherwise go unnoticed, since the successor's pushes name no predecessor.
func TestNewLeaderPushesWhatWasNotChecked(t *testing.T) {
	f := newFixture(t)
	d := f.direct("alice", "bob")
	f.sendMany(d.ID, 30)
	checked := func() (n uint64) {
		f.check(f.pool.QueryRow(f.ctx, `SELECT checked_seq FROM projector_checkpoints`).Scan(&n))
		return n
	}
	old, next := pushLog{t: t}, pushLog{t: t}
	a := f.projector()
	a.batchSize, a.Publish, a.checkEvery = 3, old.publish, 20*time.Millisecond
	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { a.Run(ctxA); close(doneA) }()
	last := f.lastSeq()
	f.waitFor(a, last)
	f.eventually("the leader records its checks", func() (bool, error) { return checked() == last, nil })
	stopA()
	<-doneA

	// As if it had died 20 events after its last check round.
	_, err := f.pool.Exec(f.ctx, `UPDATE projector_checkpoints SET checked_seq = $1`, last-20)
	f.check(err)
	b := f.projector()
	b.batchSize, b.Publish, b.checkEvery = 3, next.publish, time.Hour
	f.run(b)
	f.waitLeading(b)
	seqs := map[uint64]bool{}
	for _, p := range next.list() {
		var subject string
		var seq uint64
		if _, err := fmt.Sscan(p, &subject, &seq); err != nil {
			t.Fatal(err)
		}
		seqs[seq] = true
	}
	for seq := last - 19; seq <= last; seq++ {
		if !seqs[seq] {
			t.Fatalf("the new leader pushed %v again, want every event after %d", slices.Sorted(maps.Keys(seqs)), last-20)
		}
	}
	if len(seqs) != 20 {
		t.Fatalf("the new leader pushed %d events again, want the 20 after the last check", len(seqs))
	}
}

// A user the leader forgets (beyond pushedUsers) gets a check of their last push at once: their
// next push names no predecessor, so a loss before it would go unnoticed otherwise.
func TestForgottenUserIsChecked(t *testing.T) {
	defer func(was int) { pushedUsers = was }(pushedUsers)
	pushedUsers = 2
	f := newFixture(t)
	ab := f.direct("alice", "bob")
	cd := f.direct("carol", "dave")
	var mu sync.Mutex
	var checks []string
	p := f.projector()
	p.checkEvery = time.Hour
	p.Publish = func(subject string, _, prev uint64, _ []byte) error {
		if push, ok := streams.PushSubjectOfCheck(subject); ok {
			mu.Lock()
			checks = append(checks, fmt.Sprint(push, " ", prev))
			mu.Unlock()
		}
		return nil
	}
	f.run(p)
	f.waitLeading(p)
	first, _, _, err := f.store.SendMessage(f.ctx, "alice", ab.ID, "1", "hi")
	f.check(err)
	f.waitFor(p, first.Seq)
	second, _, _, err := f.store.SendMessage(f.ctx, "carol", cd.ID, "1", "hi") // carol and dave push alice and bob out
	f.check(err)
	f.waitFor(p, second.Seq)
	mu.Lock()
	defer mu.Unlock()
	for _, u := range []string{"alice", "bob"} {
		if want := fmt.Sprint(streams.PushSubject(u), " ", first.Seq); !slices.Contains(checks, want) {
			t.Fatalf("checks %q, want %q", checks, want)
		}
	}
}
