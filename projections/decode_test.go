package projections

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/chatd-dev/chatd/domain"
)

// decodeJSON tries goccy/go-json first. Whatever an event or its data holds, it must decode it
// as the standard library does: the same values, and an error exactly when it errs.
func FuzzDecodersAgree(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "domain", "testdata", "events", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden events (%v)", err)
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	good := `{"v":1,"id":"e1","type":"message.created","conversation_id":"dabc","actor":"u1","time":"2026-11-29T10:00:00.123456Z","data":{"message_id":"dabc-x","sender_id":"u1","client_msg_id":"1","body":"b"}}`
	f.Add([]byte(good))
	for _, c := range [][2]string{
		{`"actor":"u1",`, `"actor":"u1","actor":"u2",`}, // a key twice
		{`"actor"`, `"Actor"`},                          // another case
		{`"actor"`, `"act\u006fr"`},                     // an escaped key
		{`"v":1`, `"v":1.0`},
		{`"v":1`, `"v":01`},
		{`"v":1`, `"v":1e0`},
		{`"actor":"u1"`, `"actor":null`},
		{`10:00:00`, `25:00:00`},
		{`2026-11`, `2026\u002d11`},
		{`"body":"b"`, `"body":"a\"b\\c\n\u00e9\ud83d\udc4b"`},
		{`"body":"b"`, `"body":"\ud800"`},
		{`"body":"b"`, `"body":"\x"`},
		{`"body":"b"`, "\"body\":\"\xff\xfe\""},
		{`"body":"b"`, "\"body\":\"a\nb\""},
		{`"body":"b"`, `"body":"b",`},
		{`"body":"b"}}`, `"body":"b`},
		{`"data":{`, `"data":[{`},
		{`"}}`, `"}} x`},
		{`"v":1`, `"v":-1`},
		{`"v":1`, `"v":99999999999999999999`},
	} {
		f.Add([]byte(strings.Replace(good, c[0], c[1], 1)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		agree[domain.Event](t, b)
		agree[domain.MessageData](t, b)
		agree[domain.MemberData](t, b)
		agree[domain.ConversationData](t, b)
		agree[domain.ReadData](t, b)
		agree[domain.UserData](t, b)
	})
}

func agree[T any](t *testing.T, b []byte) {
	var want T
	wantErr := json.Unmarshal(b, &want)
	var got T
	gotErr := decodeJSON(b, &got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("decoding %q into %T: encoding/json says %v, decodeJSON %v", b, want, wantErr, gotErr)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("decoding %q into %T:\nencoding/json %+v\ndecodeJSON    %+v", b, want, want, got)
	}
}
