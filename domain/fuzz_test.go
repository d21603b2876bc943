package domain_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
)

func FuzzDecodeEvent(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden files to seed the corpus (%v)", err)
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"id":"e1","type":"t","actor":"","time":"2025-01-02T03:04:05+01:00","data":{"a":"<&>\u2028"}}`))
	f.Add([]byte(`{"V":1,"ID":"x","Type":"t","data":[1.50,1e3,null]}`))
	f.Add([]byte(`{"v":2,"id":"e1","type":"t","data":{}}`))
	f.Add([]byte(`{"v":1,"id":"e1","type":"t","data":{} }x`))

	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := domain.DecodeEvent(b)
		if err != nil {
			if !reflect.DeepEqual(e, domain.Event{}) {
				t.Fatalf("DecodeEvent refused %q but returned %+v", b, e)
			}
			return
		}
		if e.V < 1 || e.V > domain.SchemaVersion || e.ID == "" || e.Type == "" || len(e.Data) == 0 {
			t.Fatalf("DecodeEvent accepted an envelope it should refuse: %+v", e)
		}
		out, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("accepted event %+v does not marshal: %v", e, err)
		}
		again, err := domain.DecodeEvent(out)
		if err != nil {
			t.Fatalf("accepted event, marshalled as %s, is refused: %v", out, err)
		}
		sameEnvelope(t, e, again)
		out2, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("marshalling is not stable:\n%s\n%s", out, out2)
		}
	})
}

// sameEnvelope fails unless a and b are the same event: the same fields, the same instant in
// the same offset, and data that means the same JSON.
func sameEnvelope(t *testing.T, a, b domain.Event) {
	t.Helper()
	if a.V != b.V || a.ID != b.ID || a.Type != b.Type || a.ConversationID != b.ConversationID ||
		a.Actor != b.Actor || a.Seq != b.Seq {
		t.Fatalf("envelopes differ:\n%+v\n%+v", a, b)
	}
	if !a.Time.Equal(b.Time) || a.Time.Format(time.RFC3339Nano) != b.Time.Format(time.RFC3339Nano) {
		t.Fatalf("times differ: %v and %v", a.Time, b.Time)
	}
	if da, db := jsonValue(t, a.Data), jsonValue(t, b.Data); !reflect.DeepEqual(da, db) {
		t.Fatalf("data differ:\n%s\n%s", a.Data, b.Data)
	}
}

// jsonValue decodes raw, keeping numbers as written.
func jsonValue(t *testing.T, raw []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("data %q is not JSON: %v", raw, err)
	}
	return v
}

func FuzzSplitMessageID(f *testing.F) {
	direct := domain.DirectID("alice", "bob")
	for _, id := range []string{
		domain.MessageID(groupID, "bob", "c-1"),
		domain.MessageID(direct, "alice", "x"),
		"",
		"-",
		groupID + "-",
		groupID + "-" + "ABCDEFGHIJKLMNOPQRST",
		"e" + groupID[1:] + "-aaaaaaaaaaaaaaaaaaaa",
		groupID + "-aaaaaaaaaaaaaaaaaaaa-",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		conv, local, err := domain.SplitMessageID(id)
		if err != nil {
			if code := domain.ErrorCode(err); code != domain.CodeNotFound {
				t.Fatalf("SplitMessageID(%q): error code %s, want %s", id, code, domain.CodeNotFound)
			}
			if conv != "" || local != "" {
				t.Fatalf("SplitMessageID(%q) returned %q, %q with an error", id, conv, local)
			}
		} else {
			if conv+"-"+local != id {
				t.Fatalf("SplitMessageID(%q) = %q, %q, which do not make up the id", id, conv, local)
			}
			if !domain.ValidConversationID(conv) {
				t.Fatalf("SplitMessageID(%q): %q is not a conversation id", id, conv)
			}
			if len(local) != 20 || !isBase32(local) {
				t.Fatalf("SplitMessageID(%q): local part %q is not 20 base32 characters", id, local)
			}
			shaped := domain.MessageID(conv, "bob", "c-1")
			if len(shaped) != len(id) || shaped[:len(conv)+1] != id[:len(conv)+1] {
				t.Fatalf("accepted id %q is not shaped like the message id %q", id, shaped)
			}
		}

		// Whatever the sender and client_msg_id, a message id splits back into its conversation.
		for _, c := range []string{groupID, direct} {
			mid := domain.MessageID(c, id, id)
			gotConv, gotLocal, err := domain.SplitMessageID(mid)
			if err != nil || gotConv != c || c+"-"+gotLocal != mid {
				t.Fatalf("MessageID(%q, %q, %q) = %q splits into %q, %q, %v", c, id, id, mid, gotConv, gotLocal, err)
			}
		}
	})
}
