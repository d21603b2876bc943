package domain_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The golden files in testdata/events are the JSON contract of the events: what the stream
// holds, and what auditors and future readers parse. A change to them must be deliberate.

const goldenDir = "testdata/events"

var allTypes = []string{
	domain.TypeUserCreated,
	domain.TypeUserUpdated,
	domain.TypeConversationCreated,
	domain.TypeMemberJoined,
	domain.TypeMemberLeft,
	domain.TypeMessageCreated,
	domain.TypeMessageEdited,
	domain.TypeMessageDeleted,
	domain.TypeReadUpdated,
}

var goldenTime = time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.UTC)

// The conversation and message that the golden events are about.
func goldenGroup() domain.Conversation {
	return domain.Conversation{
		ID:        groupID,
		Kind:      domain.KindGroup,
		Title:     "Book club",
		CreatorID: "alice",
		Members:   []string{"alice", "bob", "carol"},
		CreatedAt: goldenTime,
	}
}

var (
	goldenMessageID = domain.MessageID(groupID, "bob", "web-1")
	// goldenBody has what JSON encoders treat specially: HTML, quotes, a backslash, non-ASCII.
	goldenBody = "Hello <b>friends</b> & \"family\" \\ héllo 👋"
)

func goldenMessage() domain.Message {
	return domain.Message{ID: goldenMessageID, ConversationID: groupID, Seq: 9, SenderID: "bob", ClientMsgID: "web-1", Body: goldenBody, CreatedAt: goldenTime}
}

type goldenCase struct {
	event   domain.Event
	payload any                             // what Data was marshalled from
	decode  func(domain.Event) (any, error) // decodes Data into payload's type
}

func decodeAs[T any](e domain.Event) (any, error) { return domain.DecodeData[T](e) }

// goldenCases builds one fixed event of each type, by hand rather than through the Decide
// functions, whose ids are random.
func goldenCases(t *testing.T) map[string]goldenCase {
	t.Helper()
	joined := goldenGroup()
	joined.Members = []string{"alice", "bob", "carol", "dave"}
	left := goldenGroup()
	left.Members = []string{"alice", "carol"}

	cases := map[string]goldenCase{}
	tips := map[string]string{} // chain (conversation, else user) → hash of its last event
	add := func(typ, id, conv, actor string, payload any, decode func(domain.Event) (any, error)) {
		data, err := json.Marshal(payload)
		if err != nil {
			t.Fatal(err)
		}
		e := domain.Event{V: 1, ID: id, Type: typ, ConversationID: conv, Actor: actor, Time: goldenTime, Data: data}
		chain := conv
		if chain == "" {
			chain = "user"
		}
		domain.Chain(&e, tips[chain])
		tips[chain] = e.Hash
		cases[typ] = goldenCase{event: e, payload: payload, decode: decode}
	}
	add(domain.TypeUserCreated, "eaaaaaaaaaaaaaaaaaaaaaaaaaa", "", domain.ActorService,
		domain.UserData{UserID: "alice", DisplayName: "Alice"}, decodeAs[domain.UserData])
	add(domain.TypeUserUpdated, "ebbbbbbbbbbbbbbbbbbbbbbbbbb", "", domain.ActorService,
		domain.UserData{UserID: "alice", DisplayName: "Alice Liddell"}, decodeAs[domain.UserData])
	add(domain.TypeConversationCreated, "ecccccccccccccccccccccccccc", groupID, "alice",
		domain.ConversationData{Conversation: goldenGroup()}, decodeAs[domain.ConversationData])
	add(domain.TypeMemberJoined, "edddddddddddddddddddddddddd", groupID, "alice",
		domain.MemberData{UserID: "dave", Conversation: joined}, decodeAs[domain.MemberData])
	add(domain.TypeMemberLeft, "eeeeeeeeeeeeeeeeeeeeeeeeeee", groupID, "alice",
		domain.MemberData{UserID: "bob", Conversation: left}, decodeAs[domain.MemberData])
	add(domain.TypeMessageCreated, "effffffffffffffffffffffffff", groupID, "bob",
		domain.MessageData{MessageID: goldenMessageID, SenderID: "bob", ClientMsgID: "web-1", Body: goldenBody, BodySHA256: domain.BodyHash(goldenBody)}, decodeAs[domain.MessageData])
	add(domain.TypeMessageEdited, "egggggggggggggggggggggggggg", groupID, "bob",
		domain.MessageData{MessageID: goldenMessageID, SenderID: "bob", Body: "Hello, edited", BodySHA256: domain.BodyHash("Hello, edited")}, decodeAs[domain.MessageData])
	add(domain.TypeMessageDeleted, "ehhhhhhhhhhhhhhhhhhhhhhhhhh", groupID, "alice",
		domain.MessageData{MessageID: goldenMessageID, SenderID: "bob"}, decodeAs[domain.MessageData])
	add(domain.TypeReadUpdated, "eiiiiiiiiiiiiiiiiiiiiiiiiii", groupID, "carol",
		domain.ReadData{UserID: "carol", Seq: 42}, decodeAs[domain.ReadData])
	return cases
}

func goldenPath(typ string) string { return filepath.Join(goldenDir, typ+".json") }

func marshalGolden(t *testing.T, e domain.Event) []byte {
	t.Helper()
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		t.Fatalf("marshal %s: %v", e.Type, err)
	}
	return append(b, '\n')
}

func TestEventGoldenFiles(t *testing.T) {
	cases := goldenCases(t)
	for _, typ := range allTypes {
		t.Run(typ, func(t *testing.T) {
			c, ok := cases[typ]
			if !ok {
				t.Fatalf("no golden event of type %s", typ)
			}
			got := marshalGolden(t, c.event)
			path := goldenPath(typ)
			if *update {
				if err := os.MkdirAll(goldenDir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./domain -run TestEventGoldenFiles -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s changed; if that is deliberate, rerun with -update.\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

// TestGoldenFilesAreComplete fails on a golden file of no known type: a stale one, or a type
// added to the files but not to allTypes.
func TestGoldenFilesAreComplete(t *testing.T) {
	if len(goldenCases(t)) != len(allTypes) {
		t.Errorf("%d golden events for %d types", len(goldenCases(t)), len(allTypes))
	}
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	for _, typ := range allTypes {
		want = append(want, typ+".json")
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s holds %q, want %q", goldenDir, got, want)
	}
}

func TestGoldenFilesDecode(t *testing.T) {
	for typ, c := range goldenCases(t) {
		t.Run(typ, func(t *testing.T) {
			b, err := os.ReadFile(goldenPath(typ))
			if err != nil {
				t.Fatal(err)
			}
			e, err := domain.DecodeEvent(b)
			if err != nil {
				t.Fatalf("DecodeEvent: %v", err)
			}
			want := c.event
			if e.V != want.V || e.ID != want.ID || e.Type != want.Type || e.ConversationID != want.ConversationID ||
				e.Actor != want.Actor || e.Time != want.Time || e.Seq != 0 {
				t.Errorf("envelope decodes to %+v, want %+v", e, want)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, e.Data); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(compact.Bytes(), want.Data) {
				t.Errorf("data is %s, want %s", compact.Bytes(), want.Data)
			}
			payload, err := c.decode(e)
			if err != nil {
				t.Fatalf("decode data: %v", err)
			}
			if !reflect.DeepEqual(payload, c.payload) {
				t.Errorf("data decodes to %+v, want %+v", payload, c.payload)
			}
		})
	}
}

// TestDecideWritesGoldenEvents checks that the Decide functions write the events of the
// contract, not merely events of the same types: each event they decide, with its random ids
// replaced by the golden ones, is the golden event to the byte.
func TestDecideWritesGoldenEvents(t *testing.T) {
	group, msg := goldenGroup(), goldenMessage()
	decided := map[string]func() (*domain.Event, error){
		domain.TypeUserCreated: func() (*domain.Event, error) {
			return domain.ProvisionUser(nil, "alice", "Alice", lim, goldenTime)
		},
		domain.TypeUserUpdated: func() (*domain.Event, error) {
			return domain.ProvisionUser(&domain.User{ID: "alice", DisplayName: "Alice"}, "alice", "Alice Liddell", lim, goldenTime)
		},
		domain.TypeConversationCreated: func() (*domain.Event, error) {
			e, err := domain.CreateGroup("alice", "Book club", []string{"carol", "bob"}, lim, goldenTime)
			if err != nil {
				return nil, err
			}
			// The group's id is random: give it the golden one.
			d, err := domain.DecodeData[domain.ConversationData](e)
			if err != nil || d.Conversation.ID != e.ConversationID {
				t.Fatalf("conversation id %q in data, %q in envelope (%v)", d.Conversation.ID, e.ConversationID, err)
			}
			d.Conversation.ID, e.ConversationID = groupID, groupID
			e.Data, err = json.Marshal(d)
			return &e, err
		},
		domain.TypeMemberJoined: func() (*domain.Event, error) {
			return domain.AddMember(group, "alice", "dave", lim, goldenTime)
		},
		domain.TypeMemberLeft: func() (*domain.Event, error) {
			e, err := domain.RemoveMember(group, "alice", "bob", goldenTime)
			return &e, err
		},
		domain.TypeMessageCreated: func() (*domain.Event, error) {
			e, err := domain.SendMessage(group, "bob", "web-1", goldenBody, lim, goldenTime)
			return &e, err
		},
		domain.TypeMessageEdited: func() (*domain.Event, error) {
			e, err := domain.EditMessage(group, msg, "bob", "Hello, edited", lim, goldenTime)
			return &e, err
		},
		domain.TypeMessageDeleted: func() (*domain.Event, error) {
			e, err := domain.DeleteMessage(group, msg, "alice", goldenTime)
			return &e, err
		},
		domain.TypeReadUpdated: func() (*domain.Event, error) {
			e, err := domain.MarkRead(group, "carol", 42, goldenTime)
			return &e, err
		},
	}
	cases := goldenCases(t)
	for _, typ := range allTypes {
		t.Run(typ, func(t *testing.T) {
			decide, ok := decided[typ]
			if !ok {
				t.Fatalf("no Decide function writes %s", typ)
			}
			e, err := decide()
			if err != nil || e == nil {
				t.Fatalf("decide: %v, %v", e, err)
			}
			if !validEventID(e.ID) {
				t.Errorf("event id %q", e.ID)
			}
			// Decisions are not chained yet: the store links them when it appends.
			golden := cases[typ].event
			e.ID, e.Prev, e.Hash = golden.ID, golden.Prev, golden.Hash
			got, want := marshalGolden(t, *e), marshalGolden(t, golden)
			if !bytes.Equal(got, want) {
				t.Errorf("decided event\n%s\ndiffers from the golden one\n%s", got, want)
			}
		})
	}
}

func TestDecodeEventRejects(t *testing.T) {
	// valid is accepted (see the first case); every other case breaks one thing in it.
	const valid = `{"v":1,"id":"e1","type":"user.created","actor":"service","time":"2025-01-02T03:04:05Z","data":{}}`
	without := func(field string) string {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(valid), &m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m[field]; !ok {
			t.Fatalf("valid has no field %s", field)
		}
		delete(m, field)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	with := func(field, value string) string {
		return strings.Replace(valid, `"`+field+`":`, `"`+field+`":`+value+`,"old_`+field+`":`, 1)
	}

	if _, err := domain.DecodeEvent([]byte(valid)); err != nil {
		t.Fatalf("DecodeEvent(%s): %v; the cases below start from it", valid, err)
	}
	if e, err := domain.DecodeEvent([]byte(with("v", "1"))); err != nil || e.V != 1 {
		t.Fatalf("with() does not replace a field: %+v, %v", e, err)
	}

	tests := []struct{ name, input string }{
		{"version 0", with("v", "0")},
		{"version 2", with("v", "2")},
		{"negative version", with("v", "-1")},
		{"huge version", with("v", "4294967297")},
		{"no version", without("v")},
		{"version as a string", with("v", `"1"`)},
		{"fractional version", with("v", "1.5")},
		{"no type", without("type")},
		{"empty type", with("type", `""`)},
		{"no id", without("id")},
		{"empty id", with("id", `""`)},
		{"no data", without("data")},
		{"null data", with("data", "null")},
		{"string data", with("data", `"x"`)},
		{"array data", with("data", `[]`)},
		{"no time", without("time")},
		{"malformed time", with("time", `"yesterday"`)},
		{"not JSON", "not json"},
		{"empty input", ""},
		{"whitespace", " \n"},
		{"truncated", valid[:len(valid)-1]},
		{"two events", valid + valid},
		{"trailing garbage", valid + "x"},
		{"array", "[" + valid + "]"},
		{"null", "null"},
		{"string", `"event"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.DecodeEvent([]byte(tt.input))
			if err == nil {
				t.Fatalf("DecodeEvent(%s) = %+v, want an error", tt.input, e)
			}
			if !reflect.DeepEqual(e, domain.Event{}) {
				t.Errorf("got %+v with the error, want the zero event", e)
			}
		})
	}
}
