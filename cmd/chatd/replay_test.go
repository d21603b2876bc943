package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// chatd replay --verify finds the live read models identical to a rebuild of the stream, and
// finds the difference when someone changed them behind the projector's back.
func TestReplayVerify(t *testing.T) {
	env := dbEnv(t)
	externalNATS(t, env)
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	c.provision("carol", "Carol")
	g := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "group", "title": "G", "members": []string{"bob", "carol"}})
	var ids []string
	for i := range 40 {
		target := conv
		if i%4 == 0 {
			target = g.str("id")
		}
		ids = append(ids, c.must(201, "POST", "/api/v1/conversations/"+target+"/messages", alice, map[string]string{"client_msg_id": fmt.Sprint(i), "body": fmt.Sprint("m", i)}).str("id"))
	}
	c.must(200, "PATCH", "/api/v1/messages/"+ids[1], alice, `{"body":"edited"}`)
	c.must(200, "DELETE", "/api/v1/messages/"+ids[2], alice, nil)
	last := c.must(200, "DELETE", "/api/v1/conversations/"+g.str("id")+"/members/carol", alice, nil).header.Get("X-Chat-Seq")
	c.must(200, "GET", "/api/v1/me?min_seq="+last, alice, nil)

	replay := func() (string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"replay", "--verify"}, func(k string) string { return env[k] }, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	out, err := replay()
	if err != nil || !strings.Contains(out, "identical") {
		t.Fatalf("verify on untouched read models: %v\n%s", err, out)
	}

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE messages SET body = 'tampered' WHERE id = $1`, ids[5]); err != nil {
		t.Fatal(err)
	}
	out, err = replay()
	if err == nil || !strings.Contains(out, "messages") || !strings.Contains(out, "false") {
		t.Fatalf("verify after tampering: %v\n%s", err, out)
	}
	if err := run(context.Background(), []string{"replay"}, func(k string) string { return env[k] }, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("chatd replay without --verify pretended to work")
	}
}
