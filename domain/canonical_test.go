package domain

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Chain hashes its own encoding with appendCanonical; verifiers hash what the stream stores
// (json.Marshal's encoding, HTML escaped) with EventHash's general path. They must agree on
// every event, whatever its strings hold.
func FuzzChainAgreesWithEventHash(f *testing.F) {
	f.Add("alice", "hello", "club", "")
	f.Add("a<b>&c", "<script>alert('x')</script> & \u2028\u2029", "ti\"tle\\", "prev")
	f.Add("ünï", "emoji 😀, tab\t, nul \x00, bell \a", "\x7f", "")
	f.Add("x", "invalid utf-8 \xff\xfe", "{\"body\":1}", "hash")
	f.Fuzz(func(t *testing.T, actor, body, title, prev string) {
		conv := Conversation{ID: "g.1", Kind: KindGroup, Title: title, CreatorID: actor, Members: []string{actor, body}}
		for _, data := range []any{
			MessageData{MessageID: "m", SenderID: actor, ClientMsgID: title, Body: body, BodySHA256: BodyHash(body)},
			MemberData{UserID: body, Conversation: conv},
			ConversationData{Conversation: conv},
			UserData{UserID: actor, DisplayName: body},
		} {
			for _, escapeHTML := range []bool{false, true} {
				var buf bytes.Buffer
				enc := json.NewEncoder(&buf)
				enc.SetEscapeHTML(escapeHTML)
				if err := enc.Encode(data); err != nil {
					t.Fatal(err)
				}
				raw := bytes.TrimSpace(buf.Bytes())
				e := Event{V: SchemaVersion, ID: body, Type: TypeMessageCreated, ConversationID: title, Actor: actor,
					Time: time.Date(2026, 11, 29, 1, 2, 3, 4, time.UTC), Data: raw}
				chained := Chain(&e, prev)
				stored, err := json.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				want, err := EventHash(stored)
				if err != nil {
					t.Fatal(err)
				}
				if e.Hash != want {
					t.Fatalf("Chain gave %s, EventHash of the stored event %s:\n%s", e.Hash, want, stored)
				}
				// What Chain returns to store is e, with its hash, encoded with HTML escaping off.
				var out bytes.Buffer
				enc = json.NewEncoder(&out)
				enc.SetEscapeHTML(false)
				if err := enc.Encode(e); err != nil {
					t.Fatal(err)
				}
				if want := bytes.TrimSuffix(out.Bytes(), []byte("\n")); !bytes.Equal(chained, want) {
					t.Fatalf("Chain returned\n%s\nwant\n%s", chained, want)
				}
			}
		}
	})
}

// The golden events, encoded as Chain encodes them (data encoded again from its struct with HTML
// escaping off, as newEvent does), take the fast path to what the general path makes of them.
func TestCanonicalFastPathOnGoldenEvents(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden events (%v)", err)
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		data := map[string]any{
			TypeUserCreated: &UserData{}, TypeUserUpdated: &UserData{},
			TypeConversationCreated: &ConversationData{},
			TypeMemberJoined:        &MemberData{}, TypeMemberLeft: &MemberData{},
			TypeMessageCreated: &MessageData{}, TypeMessageEdited: &MessageData{}, TypeMessageDeleted: &MessageData{},
			TypeReadUpdated: &ReadData{},
		}[e.Type]
		if data == nil {
			t.Fatalf("%s: no data type for %s", path, e.Type)
		}
		if err := json.Unmarshal(e.Data, data); err != nil {
			t.Fatal(err)
		}
		e.Data = newEvent(e.Type, "", "", time.Time{}, data).Data
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(e); err != nil {
			t.Fatal(err)
		}
		raw := bytes.TrimSpace(buf.Bytes())
		fast, err := appendCanonical(nil, raw)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if sum := sha256Hex(fast); sum != mustHash(t, raw) || sum != e.Hash {
			t.Errorf("%s: fast canonical form %s hashes to %s; general form %s, stored hash %s", path, fast, sum, mustHash(t, raw), e.Hash)
		}
		if bytes.Contains(fast, []byte(`"hash"`)) || (e.Type == TypeMessageCreated && bytes.Contains(fast, []byte(`"body"`))) {
			t.Errorf("%s: the canonical form keeps what it must leave out: %s", path, fast)
		}
	}
}

func TestCanonicalFastPathRefusesWhatItCannotRewrite(t *testing.T) {
	for _, raw := range []string{
		`{"a": 1}`,      // whitespace
		`{"\u0061":1}`,  // an escaped key
		`{"a":1,"a":2}`, // a duplicate key
		`{"a":1`,        // cut short
		`{"a":"x}`,      // an unterminated string
		`{"a":1}{}`,     // trailing data
		`{"a":[1,2}`,    // a bad array
		`{"a":,}`,       // a missing value
	} {
		if out, err := appendCanonical(nil, []byte(raw)); err == nil {
			t.Errorf("appendCanonical(%s) = %s, want a refusal", raw, out)
		}
	}
}

func mustHash(t *testing.T, raw []byte) string {
	t.Helper()
	h, err := EventHash(raw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
