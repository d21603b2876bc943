package streams_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// history writes a little of everything through the store: users, a direct conversation and a
// group with messages, an edit, a delete, read markers and membership changes.
func history(t *testing.T, st *streams.Store) (direct, group domain.Conversation) {
	t.Helper()
	ctx := ctxT(t)
	provision(t, st, "alice", "bob", "carol")
	if _, _, _, err := st.ProvisionUser(ctx, "alice", "Alice, renamed"); err != nil {
		t.Fatal(err)
	}
	direct, _, _, err := st.CreateConversation(ctx, "alice", domain.KindDirect, "", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	group, _, _, err = st.CreateConversation(ctx, "alice", domain.KindGroup, "club", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	var last domain.Message
	for i, c := range []domain.Conversation{direct, group, direct, group, direct} {
		if last, _, _, err = st.SendMessage(ctx, "bob", c.ID, "m"+string(rune('a'+i)), "hello <b>"+string(rune('a'+i))+"</b>"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := st.EditMessage(ctx, "bob", last.ID, "edited"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.DeleteMessage(ctx, "bob", last.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.MarkRead(ctx, "alice", direct.ID, last.Seq); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.AddMember(ctx, "alice", group.ID, "carol"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RemoveMember(ctx, "bob", group.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := st.SendMessage(ctx, "carol", group.ID, "c1", "hi all"); err != nil {
		t.Fatal(err)
	}
	return direct, group
}

func verify(t *testing.T, st jetstream.Stream, conv string) (streams.VerifyResult, []streams.Problem) {
	t.Helper()
	var problems []streams.Problem
	res, err := streams.Verify(ctxT(t), st, conv, func(p streams.Problem) error {
		problems = append(problems, p)
		return nil
	})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return res, problems
}

// copyStream copies every event of src into a fresh stream, in order, through edit, which may
// change an event or drop it (nil). It is how the tests tamper with "a copy of the stream".
func copyStream(t *testing.T, src jetstream.Stream, edit func(seq uint64, subject string, data []byte) []byte) jetstream.Stream {
	t.Helper()
	return copyMsgs(t, src, func(seq uint64, m *nats.Msg) bool {
		m.Data = edit(seq, m.Subject, m.Data)
		return m.Data != nil
	})
}

// copyMsgs is copyStream with the whole message to edit (subject, position header, data); edit
// returns false to drop it.
func copyMsgs(t *testing.T, src jetstream.Stream, edit func(seq uint64, m *nats.Msg) bool) jetstream.Stream {
	t.Helper()
	ctx := ctxT(t)
	js, dst := natstest.Stream(t, natstest.Connect(t, natstest.RunServer(t, "")), streams.Config{})
	info, err := src.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		raw, err := src.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(raw.Subject)
		m.Data = raw.Data
		if pos := raw.Header.Get(streams.PositionHeader); pos != "" { // not the expectations
			m.Header.Set(streams.PositionHeader, pos)
		}
		if edit(seq, m) {
			if _, err := js.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// change rewrites one JSON event with fn and, when rehash, gives it the hash of its new content,
// as a forger who knows the algorithm would.
func change(t *testing.T, data []byte, rehash bool, fn func(map[string]any)) []byte {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	fn(v)
	out, _ := json.Marshal(v)
	if rehash {
		h, err := domain.EventHash(out)
		if err != nil {
			t.Fatal(err)
		}
		v["hash"] = h
		out, _ = json.Marshal(v)
	}
	return out
}

func TestVerifyChains(t *testing.T) {
	s := natstest.RunServer(t, "")
	n := newNode(t, s, streams.Config{})
	direct, group := history(t, n.store)
	all := events(t, n.stream)

	res, problems := verify(t, n.stream, "")
	if len(problems) != 0 || res.Events != len(all) || res.Chains != 5 {
		t.Fatalf("intact stream: %+v, problems %v; want %d events in 5 chains (3 users, 2 conversations)", res, problems, len(all))
	}
	if res, problems := verify(t, n.stream, group.ID); len(problems) != 0 || res.Chains != 1 || res.Events != countIf(all, func(e domain.Event) bool { return e.ConversationID == group.ID }) {
		t.Fatalf("one conversation: %+v, %v", res, problems)
	}

	// The events the tampering is aimed at: a message of the direct conversation, and the
	// event of the same chain after it.
	var target, next domain.Event
	for i, e := range all {
		if e.Type == domain.TypeMessageCreated && e.ConversationID == direct.ID {
			target = e
			for _, f := range all[i+1:] {
				if f.ConversationID == direct.ID {
					next = f
					break
				}
			}
			break
		}
	}
	at := func(seq uint64, fn func([]byte) []byte) func(uint64, string, []byte) []byte {
		return func(s uint64, _ string, data []byte) []byte {
			if s == seq {
				return fn(data)
			}
			return data
		}
	}

	for _, tc := range []struct {
		name string
		edit func(uint64, string, []byte) []byte
		// wantSeq is the event reported (sequences of the copy), wantText part of its problem.
		wantSeq  uint64
		wantText string
	}{{
		name: "altered actor",
		edit: at(target.Seq, func(d []byte) []byte {
			return change(t, d, false, func(v map[string]any) { v["actor"] = "alice" })
		}),
		wantSeq: target.Seq, wantText: "the event was altered",
	}, {
		name: "altered body",
		edit: at(target.Seq, func(d []byte) []byte {
			return change(t, d, false, func(v map[string]any) { v["data"].(map[string]any)["body"] = "forged" })
		}),
		wantSeq: target.Seq, wantText: "body does not match",
	}, {
		name: "altered and rehashed",
		edit: at(target.Seq, func(d []byte) []byte {
			return change(t, d, true, func(v map[string]any) { v["time"] = "2020-01-01T00:00:00Z" })
		}),
		wantSeq: next.Seq, wantText: "broken link",
	}, {
		name:    "removed",
		edit:    at(target.Seq, func([]byte) []byte { return nil }),
		wantSeq: next.Seq - 1, wantText: "broken link", // the copy's sequences close the gap
	}} {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := verify(t, copyStream(t, n.stream, tc.edit), "")
			if len(problems) != 1 || problems[0].Seq != tc.wantSeq || !strings.Contains(problems[0].Problem, tc.wantText) ||
				problems[0].Chain != "conversation "+direct.ID {
				t.Fatalf("problems %v; want one %q at seq %d", problems, tc.wantText, tc.wantSeq)
			}
		})
	}

	// Events whose links are intact but that sit where no append of chatd puts them: a tool
	// that got the layout wrong, or a forger who moved one.
	for _, tc := range []struct {
		name     string
		edit     func(m *nats.Msg)
		wantText string
	}{{
		name: "wrong position",
		edit: func(m *nats.Msg) {
			pos, _ := strconv.Atoi(m.Header.Get(streams.PositionHeader))
			m.Header.Set(streams.PositionHeader, strconv.Itoa(pos+1))
		},
		wantText: "it is at position",
	}, {
		name: "wrong epoch",
		edit: func(m *nats.Msg) {
			parts := strings.Split(m.Subject, ".")
			epoch, _ := strconv.Atoi(parts[4])
			parts[4] = strconv.Itoa(epoch + 7)
			m.Subject = strings.Join(parts, ".")
		},
		wantText: "it is stored in epoch",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := copyMsgs(t, n.stream, func(seq uint64, m *nats.Msg) bool {
				if seq == target.Seq {
					tc.edit(m)
				}
				return true
			})
			_, problems := verify(t, cp, "")
			if len(problems) == 0 || problems[0].Seq != target.Seq || !strings.Contains(problems[0].Problem, tc.wantText) {
				t.Fatalf("problems %v; want %q at seq %d first", problems, tc.wantText, target.Seq)
			}
		})
	}

	t.Run("erased body", func(t *testing.T) {
		erased := copyStream(t, n.stream, at(target.Seq, func(d []byte) []byte {
			return change(t, d, false, func(v map[string]any) { delete(v["data"].(map[string]any), "body") })
		}))
		if _, problems := verify(t, erased, ""); len(problems) != 0 {
			t.Fatalf("an erased body must keep the chain verifiable: %v", problems)
		}
	})

	t.Run("deleted from the stream", func(t *testing.T) {
		cp := copyStream(t, n.stream, func(_ uint64, _ string, d []byte) []byte { return d })
		if err := cp.DeleteMsg(ctxT(t), target.Seq); err != nil {
			t.Fatal(err)
		}
		_, problems := verify(t, cp, "")
		if len(problems) != 2 || !strings.Contains(problems[0].Problem, "missing from the stream") ||
			problems[1].Seq != next.Seq || !strings.Contains(problems[1].Problem, "broken link") {
			t.Fatalf("problems %v", problems)
		}
	})
}

// Two nodes sending to one group at once keep its chain linear: every send lands once, and each
// links to the one before it.
func TestChainUnderConcurrentNodes(t *testing.T) {
	s := natstest.RunServer(t, "")
	a, b := newNode(t, s, streams.Config{}), newNode(t, s, streams.Config{})
	provision(t, a.store, "alice", "bob")
	g, _, _, err := a.store.CreateConversation(ctxT(t), "alice", domain.KindGroup, "busy", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	const perSender = 25
	var wg sync.WaitGroup
	errs := make(chan error, 4*perSender)
	for i, st := range []*streams.Store{a.store, b.store, a.store, b.store} {
		wg.Go(func() {
			for j := range perSender {
				if _, _, _, err := st.SendMessage(ctxT(t), "bob", g.ID, fmt.Sprintf("s%d-%d", i, j), "hi"); err != nil {
					errs <- err
				}
				if _, err := st.MarkRead(ctxT(t), "alice", g.ID, 1); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	res, problems := verify(t, a.stream, g.ID)
	if len(problems) != 0 || res.Events != 1+2*4*perSender {
		t.Fatalf("%+v %v", res, problems)
	}
}
