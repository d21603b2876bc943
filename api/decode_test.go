package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/chatd-dev/chatd/domain"
)

// sendRequest is the body of a message send, the request decodeJSON sees most.
type sendRequest struct {
	ClientMsgID string `json:"client_msg_id"`
	Body        string `json:"body"`
}

const testMaxBytes = 64

// sized returns a send request body of exactly n bytes.
func sized(t *testing.T, n int) string {
	t.Helper()
	const prefix, suffix = `{"body":"`, `"}`
	pad := n - len(prefix) - len(suffix)
	if pad < 0 {
		t.Fatalf("no body of %d bytes", n)
	}
	return prefix + strings.Repeat("x", pad) + suffix
}

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    *sendRequest // nil: CodeInvalid expected
		wantMsg string       // part of the error message, when it matters
	}{
		{name: "valid", body: `{"client_msg_id":"c-1","body":"hello"}`, want: &sendRequest{"c-1", "hello"}},
		{name: "valid, surrounded by whitespace", body: " \r\n\t{\"body\":\"hi\"}\n ", want: &sendRequest{Body: "hi"}},
		{name: "empty object", body: `{}`, want: &sendRequest{}},
		{name: "escapes", body: `{"body":"caf\u00e9 \ud83d\udc4b \"q\" \\"}`, want: &sendRequest{Body: "café 👋 \"q\" \\"}},
		{name: "raw UTF-8", body: `{"body":"café 👋"}`, want: &sendRequest{Body: "café 👋"}},
		{name: "exactly max bytes", body: sized(t, testMaxBytes), want: &sendRequest{Body: strings.Repeat("x", testMaxBytes-11)}},

		{name: "empty body", body: ``, wantMsg: "empty"},
		{name: "whitespace only", body: " \t\r\n", wantMsg: "empty"},
		{name: "one byte over max", body: sized(t, testMaxBytes+1), wantMsg: "larger than"},
		{name: "far over max", body: strings.Repeat(" ", 10000) + `{}`, wantMsg: "larger than"},
		{name: "invalid UTF-8 in a string", body: "{\"body\":\"caf\xe9\"}", wantMsg: "UTF-8"},
		{name: "truncated UTF-8 in a string", body: "{\"body\":\"\xf0\x9f\x91\"}", wantMsg: "UTF-8"},
		{name: "invalid UTF-8 in a key", body: "{\"bo\xffdy\":\"x\"}", wantMsg: "UTF-8"},
		{name: "unknown field", body: `{"body":"hi","sender_id":"alice"}`, wantMsg: "sender_id"},
		{name: "trailing object", body: `{}{}`, wantMsg: "after the object"},
		{name: "trailing garbage", body: `{"body":"hi"} x`, wantMsg: "after the object"},
		{name: "trailing closing bracket", body: `{}]`, wantMsg: "after the object"},
		{name: "trailing closing brace", body: `{}}`, wantMsg: "after the object"},
		{name: "trailing comma", body: `{},`},
		{name: "wrong type for a field", body: `{"body":42}`, wantMsg: `"body"`},
		{name: "object for a string field", body: `{"body":{}}`, wantMsg: `"body"`},
		{name: "array instead of object", body: `[]`, wantMsg: "JSON object"},
		{name: "string instead of object", body: `"hello"`, wantMsg: "JSON object"},
		{name: "null instead of object", body: ` null`, wantMsg: "JSON object"},
		{name: "truncated", body: `{"body":"hi"`},
		{name: "not JSON", body: `body=hi`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got sendRequest
			err := decodeJSON(strings.NewReader(tt.body), testMaxBytes, &got)
			if tt.want != nil {
				if err != nil {
					t.Fatalf("decodeJSON(%q): %v", tt.body, err)
				}
				if got != *tt.want {
					t.Errorf("decodeJSON(%q) = %+v, want %+v", tt.body, got, *tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("decodeJSON(%q) = %+v, want an error", tt.body, got)
			}
			if code := domain.ErrorCode(err); code != domain.CodeInvalid {
				t.Errorf("decodeJSON(%q): %v has code %s, want %s", tt.body, err, code, domain.CodeInvalid)
			}
			if msg := domain.ErrorMessage(err); !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("decodeJSON(%q): message %q does not mention %q", tt.body, msg, tt.wantMsg)
			}
		})
	}
}

func TestDecodeJSONReadErrors(t *testing.T) {
	boom := errors.New("connection reset")
	readers := map[string]io.Reader{
		"error at once":         iotest.ErrReader(boom),
		"error after some data": io.MultiReader(strings.NewReader(`{"body":"h`), iotest.ErrReader(boom)),
		"timeout":               iotest.TimeoutReader(strings.NewReader(`{"body":"hi"}`)),
	}
	for name, r := range readers {
		t.Run(name, func(t *testing.T) {
			var got sendRequest
			err := decodeJSON(r, testMaxBytes, &got)
			if code := domain.ErrorCode(err); code != domain.CodeInvalid {
				t.Fatalf("decodeJSON: %v (code %s), want code %s", err, code, domain.CodeInvalid)
			}
		})
	}
}

// endless is a body that never ends, as a hostile client may send. So that a decoder that reads
// it all fails the test rather than hanging it, it gives up after a mebibyte.
type endless struct{ read int }

func (e *endless) Read(p []byte) (int, error) {
	if e.read >= 1<<20 {
		return 0, errors.New("endless: read too much")
	}
	for i := range p {
		p[i] = ' '
	}
	e.read += len(p)
	return len(p), nil
}

func TestDecodeJSONReadsAtMostMaxPlusOneBytes(t *testing.T) {
	r := &endless{}
	var got sendRequest
	err := decodeJSON(r, testMaxBytes, &got)
	if code := domain.ErrorCode(err); code != domain.CodeInvalid {
		t.Fatalf("decodeJSON: %v (code %s), want code %s", err, code, domain.CodeInvalid)
	}
	if r.read > testMaxBytes+1 {
		t.Errorf("read %d bytes of an endless body, want at most %d", r.read, testMaxBytes+1)
	}
}

func FuzzDecodeJSON(f *testing.F) {
	const max = 128
	for _, seed := range []string{
		`{"client_msg_id":"c-1","body":"hello"}`,
		`{"body":"caf\u00e9 \ud83d\udc4b"}`,
		`{"body":"\ud800"}`,
		"{\"body\":\"caf\xe9\"}",
		`{"body":"\u0000"}`,
		`{}{}`,
		`{} x`,
		`{"body":42}`,
		`{"extra":1}`,
		` `,
		`null`,
		`{"BODY":"x","body":"y"}`,
		strings.Repeat(" ", max) + `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		var got sendRequest
		err := decodeJSON(bytes.NewReader(input), max, &got)
		if err != nil {
			if code := domain.ErrorCode(err); code != domain.CodeInvalid {
				t.Fatalf("decodeJSON(%q): %v has code %s, want %s", input, err, code, domain.CodeInvalid)
			}
			return
		}
		if !utf8.Valid(input) {
			t.Fatalf("decodeJSON accepted invalid UTF-8 %q", input)
		}
		if len(input) > max {
			t.Fatalf("decodeJSON accepted %d bytes, more than %d", len(input), max)
		}
		if !utf8.ValidString(got.Body) || !utf8.ValidString(got.ClientMsgID) {
			t.Fatalf("decodeJSON(%q) decoded invalid UTF-8: %+v", input, got)
		}
		// decodeJSON is stricter than json.Unmarshal, never more lenient or different.
		var want sendRequest
		if err := json.Unmarshal(input, &want); err != nil {
			t.Fatalf("decodeJSON accepted %q, which json.Unmarshal refuses: %v", input, err)
		}
		if got != want {
			t.Fatalf("decodeJSON(%q) = %+v, json.Unmarshal gives %+v", input, got, want)
		}
	})
}
