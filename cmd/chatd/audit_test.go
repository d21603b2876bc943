package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go/jetstream"
)

type exported struct {
	Seq      uint64  `json:"seq"`
	Subject  string  `json:"subject"`
	Position *uint64 `json:"position"`
	Event    struct {
		Type  string         `json:"type"`
		Actor string         `json:"actor"`
		Data  map[string]any `json:"data"`
	} `json:"event"`
}

func parseExport(t *testing.T, raw []byte) []exported {
	t.Helper()
	var out []exported
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e exported
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("line %s: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// Auditors get the raw log, edit and delete history included, over HTTP (admin tokens only)
// and from `chatd audit export`.
func TestAuditExport(t *testing.T) {
	env := dbEnv(t)
	externalNATS(t, env)
	c := start(t, env)
	c.provision("alice", "Alice")
	c.provision("bob", "Bob")
	alice := c.token("alice")
	admin := c.must(201, "POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "bob", "ttl_seconds": 600, "admin": true}).str("token")
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	m := c.must(201, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", alice, map[string]string{"client_msg_id": "1", "body": "original words"})
	c.must(200, "PATCH", "/api/v1/messages/"+m.str("id"), alice, `{"body":"second thoughts"}`)
	c.must(200, "DELETE", "/api/v1/messages/"+m.str("id"), alice, nil)

	if r := c.do("GET", "/api/v1/admin/events", alice, nil); r.status != 403 {
		t.Fatalf("export without the admin claim: %d", r.status)
	}
	r := c.must(200, "GET", "/api/v1/admin/events?conversation_id="+d.str("id"), admin, nil)
	if ct := r.header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("content type %q", ct)
	}
	events := parseExport(t, r.raw)
	var types []string
	for _, e := range events {
		types = append(types, e.Event.Type)
	}
	if strings.Join(types, ",") != "conversation.created,message.created,message.edited,message.deleted" {
		t.Fatalf("conversation export: %v", types)
	}
	if events[1].Event.Data["body"] != "original words" || events[2].Event.Data["body"] != "second thoughts" {
		t.Fatalf("edit history lost: %+v", events)
	}
	for i := 1; i < len(events); i++ {
		if events[i].Seq <= events[i-1].Seq {
			t.Fatalf("not in stream order: %+v", events)
		}
	}
	for i, e := range events { // a conversation's events carry their position in its chain
		if e.Position == nil || *e.Position != uint64(i) {
			t.Fatalf("event %d of the conversation exported with position %v", i, e.Position)
		}
	}
	for _, e := range parseExport(t, c.must(200, "GET", "/api/v1/admin/events?type=user.created", admin, nil).raw) {
		if e.Position != nil {
			t.Fatalf("a user event exported with a position: %+v", e)
		}
	}

	cases := map[string]int{
		"?type=user.created":               2,
		"?actor=service":                   2,
		"?actor=alice&type=message.edited": 1,
		"?from_seq=3&to_seq=4":             2,
		"?since=2000-01-01T00:00:00Z":      6,
		"?until=2000-01-01T00:00:00Z":      0,
	}
	for q, want := range cases {
		if got := parseExport(t, c.must(200, "GET", "/api/v1/admin/events"+q, admin, nil).raw); len(got) != want {
			t.Fatalf("export%s: %d events, want %d", q, len(got), want)
		}
	}
	for _, q := range []string{"?conversation_id=nope", "?since=yesterday", "?from_seq=-1"} {
		if r := c.do("GET", "/api/v1/admin/events"+q, admin, nil); r.status != 400 {
			t.Fatalf("export%s: %d, want 400", q, r.status)
		}
	}

	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"audit", "export", "--type", "message.deleted"}, func(k string) string { return env[k] }, &out, &errOut); err != nil {
		t.Fatalf("chatd audit export: %v\n%s", err, errOut.String())
	}
	if got := parseExport(t, out.Bytes()); len(got) != 1 || got[0].Event.Data["message_id"] != m.str("id") {
		t.Fatalf("chatd audit export: %s", out.String())
	}
}

// chatd audit verify passes on an intact log and names the first broken link of a log from which
// an event was deleted.
func TestAuditVerify(t *testing.T) {
	env := dbEnv(t)
	ns := externalNATS(t, env)
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	var last response
	for i := range 3 {
		last = c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": strconv.Itoa(i), "body": "hello"})
	}
	verify := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"audit", "verify"}, args...), func(k string) string { return env[k] }, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "0 problems") {
		t.Fatalf("intact log: %v\n%s", err, out)
	}

	// Remove the second message from the stream, as someone with NATS access could.
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), streams.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	gone := last.num("seq") - 1
	if err := stream.DeleteMsg(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	out, err := verify("--conversation", conv)
	if !errors.Is(err, errTampered) || !strings.Contains(out, fmt.Sprintf("seq %d (conversation %s", gone+1, conv)) || !strings.Contains(out, "broken link") {
		t.Fatalf("tampered log: %v\n%s", err, out)
	}
}
