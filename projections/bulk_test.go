package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
)

// A bulk load defers the conversations' last activity and the senders' read markers and copies
// new messages (see bulk.go), and still leaves exactly the tables the live projector leaves,
// wherever its batches begin and end: with read markers (whose clamp reads the conversation's
// last activity) and membership changes between messages, a message stored twice, edits and
// deletes (one stored before its message, one after a delete, one that PostgreSQL rejects), and
// a message PostgreSQL rejects.
func TestBulkLoadMatchesLiveProjector(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		_, _, _, err := f.store.ProvisionUser(f.ctx, u, u)
		f.check(err)
	}
	direct := f.direct("alice", "bob")
	group, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "club", []string{"bob", "carol"})
	f.check(err)
	joined, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindGroup, "later", []string{"bob"})
	f.check(err)
	other, _, _, err := f.store.CreateConversation(f.ctx, "alice", domain.KindDirect, "", []string{"dave"})
	f.check(err)
	n := 0
	send := func(from string, conv domain.Conversation) {
		t.Helper()
		n++
		_, _, _, err := f.store.SendMessage(f.ctx, from, conv.ID, fmt.Sprint("m", n), fmt.Sprint("message ", n))
		f.check(err)
	}
	layout, err := streams.LayoutOf(f.stream)
	f.check(err)
	publish := func(e domain.Event) {
		t.Helper()
		tip, err := streams.ReadTip(f.ctx, f.js, e.ConversationID)
		f.check(err)
		m, _, err := layout.Chain(&e, tip)
		f.check(err)
		_, err = f.js.PublishMsg(f.ctx, m)
		f.check(err)
	}
	const far = 1 << 40 // clamped to the conversation's last activity

	send("alice", group)
	send("bob", direct)
	send("carol", group) // carol's marker moves with her message; then her membership ends
	_, _, err = f.store.RemoveMember(f.ctx, "alice", group.ID, "carol")
	f.check(err)
	send("alice", group)
	_, _, err = f.store.AddMember(f.ctx, "alice", group.ID, "carol") // her new marker is at 0
	f.check(err)
	send("alice", group)
	_, err = f.store.MarkRead(f.ctx, "bob", group.ID, far) // at alice's last message
	f.check(err)
	send("alice", joined)
	_, _, err = f.store.AddMember(f.ctx, "alice", joined.ID, "dave") // later than the last message
	f.check(err)
	send("alice", direct)

	// Written past the command side, as a bug or an old version might: a message stored twice
	// (the first one counts), an edit stored before its message (it changes nothing), and a
	// message PostgreSQL rejects (parked, with its conversation's later events).
	twice, err := domain.SendMessage(direct, "bob", "twice", "the first copy", domain.DefaultLimits, time.Now())
	f.check(err)
	publish(twice)
	send("alice", group)
	twiceData, err := domain.DecodeData[domain.MessageData](twice)
	f.check(err)
	_, _, err = f.store.EditMessage(f.ctx, "bob", twiceData.MessageID, "the first copy, edited")
	f.check(err)
	early, err := domain.SendMessage(direct, "alice", "early", "as sent", domain.DefaultLimits, time.Now())
	f.check(err)
	earlyData, err := domain.DecodeData[domain.MessageData](early)
	f.check(err)
	edit, err := domain.EditMessage(direct, domain.Message{ID: earlyData.MessageID, SenderID: "alice"}, "alice", "edited too early", domain.DefaultLimits, time.Now())
	f.check(err)
	publish(edit)
	send("bob", direct)
	publish(early)
	again, err := domain.SendMessage(direct, "bob", "twice", "the second copy", domain.DefaultLimits, time.Now())
	f.check(err)
	publish(again)
	send("dave", other)
	// Edits and deletes in their place: edited twice; edited, deleted, then edited and deleted
	// again past the command side (the edit changes nothing, the second delete its time).
	kept, _, _, err := f.store.SendMessage(f.ctx, "alice", group.ID, "kept", "as sent")
	f.check(err)
	gone, _, _, err := f.store.SendMessage(f.ctx, "alice", group.ID, "gone", "as sent")
	f.check(err)
	send("bob", group)
	for _, body := range []string{"edited once", "edited twice"} {
		_, _, err = f.store.EditMessage(f.ctx, "alice", kept.ID, body)
		f.check(err)
	}
	_, _, err = f.store.EditMessage(f.ctx, "alice", gone.ID, "edited before its delete")
	f.check(err)
	_, _, err = f.store.DeleteMessage(f.ctx, "alice", gone.ID)
	f.check(err)
	late, err := domain.EditMessage(group, domain.Message{ID: gone.ID, SenderID: "alice"}, "alice", "edited after its delete", domain.DefaultLimits, time.Now())
	f.check(err)
	publish(late)
	deleteAgain, err := domain.DeleteMessage(group, domain.Message{ID: gone.ID, SenderID: "alice"}, "alice", time.Now().Add(time.Hour))
	f.check(err)
	publish(deleteAgain)
	// An edit PostgreSQL rejects (parked, with its conversation's later events), and a message.
	victim, _, _, err := f.store.SendMessage(f.ctx, "alice", joined.ID, "edited-badly", "as sent")
	f.check(err)
	badEdit, err := domain.EditMessage(joined, victim, "alice", "x", domain.DefaultLimits, time.Now())
	f.check(err)
	badEdit.Data = json.RawMessage(strings.Replace(string(badEdit.Data), `"body":"x"`, `"body":"a\u0000b"`, 1))
	publish(badEdit)
	send("dave", joined)
	poison, err := domain.SendMessage(other, "alice", "poison", "x", domain.DefaultLimits, time.Now())
	f.check(err)
	poison.Data = json.RawMessage(`{"message_id":"` + other.ID + `-aaaaaaaaaaaaaaaaaaaa","sender_id":"alice","client_msg_id":"poison","body":"a\u0000b"}`)
	publish(poison)
	send("alice", other)
	send("bob", direct)

	live := f.projector()
	f.run(live)
	target := f.lastSeq()
	f.waitFor(live, target)
	// What the live projector made of it, which the bulk load must match.
	var carol, bob uint64
	var joinedLast *uint64
	var first, sent, edited, deleted string
	var parked int
	var goneAt time.Time
	f.check(f.pool.QueryRow(f.ctx, `SELECT
		(SELECT last_read_seq FROM members WHERE conversation_id = $1 AND user_id = 'carol'),
		(SELECT last_read_seq FROM members WHERE conversation_id = $1 AND user_id = 'bob'),
		(SELECT last_message_seq FROM conversations WHERE id = $2),
		(SELECT body FROM messages WHERE client_msg_id = 'twice'),
		(SELECT body FROM messages WHERE client_msg_id = 'early'),
		(SELECT body FROM messages WHERE client_msg_id = 'kept'),
		(SELECT body || coalesce(edited_at::text, 'never edited') FROM messages WHERE client_msg_id = 'gone'),
		(SELECT deleted_at FROM messages WHERE client_msg_id = 'gone'),
		(SELECT count(*) FROM parked_events)`, group.ID, joined.ID).Scan(&carol, &bob, &joinedLast, &first, &sent, &edited, &deleted, &goneAt, &parked))
	if carol != 0 || bob == 0 || joinedLast == nil || first != "the first copy, edited" || sent != "as sent" || edited != "edited twice" ||
		deleted == "never edited" || !strings.HasPrefix(deleted, "2") || goneAt.Before(time.Now()) || parked != 4 {
		t.Fatalf("live: carol read %d, bob %d, last message %v, bodies %q, %q, %q and %q (deleted at %v), %d parked",
			carol, bob, joinedLast, first, sent, edited, deleted, goneAt, parked)
	}

	for _, tc := range []struct {
		size    int
		waiting int // maxWaitingChanges
	}{{1, 0}, {2, 0}, {3, 0}, {5, 0}, {8, 0}, {rebuildBatch, 0}, {1, 1 << 30}, {2, 1 << 30}, {3, 1 << 30}, {5, 1 << 30}, {8, 1 << 30}, {rebuildBatch, 1 << 30}} {
		size := tc.size
		name := fmt.Sprint(size, " events a batch, indexed at the first change")
		if tc.waiting > 0 {
			name = fmt.Sprint(size, " events a batch, indexed when a batch is rejected")
		}
		t.Run(name, func(t *testing.T) {
			defer func(was int) { maxWaitingChanges = was }(maxWaitingChanges)
			maxWaitingChanges = tc.waiting
			sc, err := newScratch(f.ctx, f.pool, "chatd_test")
			f.check(err)
			t.Cleanup(func() { sc.drop(context.Background(), nil) })
			p := NewProjector(sc.pool, f.js.Conn(), f.stream, discardLog())
			p.batchSize = size
			if err := sc.bulkLoad(f.ctx, p, target, nil); err != nil {
				t.Fatalf("bulk load: %v", err)
			}
			res, same, err := compare(f.ctx, f.pool, sc.pool, target)
			f.check(err)
			if !same {
				t.Fatal("the live read models moved")
			}
			for _, c := range res.Tables {
				if !c.Equal() {
					t.Errorf("%s: %d rows (%s) after the bulk load, %d (%s) live", c.Table, c.RebuiltRows, c.RebuiltDigest, c.LiveRows, c.LiveDigest)
				}
			}
		})
	}
}
