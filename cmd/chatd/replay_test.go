package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

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

	// chatd replay rebuilds the read models and switches the running chatd over to them: the
	// tampered message reads as it was sent.
	var out2, errOut bytes.Buffer
	if err := run(context.Background(), []string{"replay"}, func(k string) string { return env[k] }, &out2, &errOut); err != nil || !strings.Contains(out2.String(), "switched over") {
		t.Fatalf("chatd replay: %v\n%s%s", err, out2.String(), errOut.String())
	}
	if body := c.must(200, "GET", "/api/v1/messages/"+ids[5], alice, nil).str("body"); body != "m5" {
		t.Fatalf("after the rebuild the message reads %q, want %q", body, "m5")
	}
	if out, err := replay(); err != nil || !strings.Contains(out, "identical") {
		t.Fatalf("verify after the rebuild: %v\n%s", err, out)
	}
}

// Admins rebuild through the API and watch it in the projections' status.
func TestAdminRebuild(t *testing.T) {
	c := start(t, dbEnv(t))
	alice, conv := c.aliceAndBob()
	var last string
	for i := range 20 {
		last = c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": fmt.Sprint(i), "body": "hi"}).header.Get("X-Chat-Seq")
	}
	// The live read models hold them before the rebuild starts, which rebuilds up to there: on a
	// busy machine the live projector may not have started yet when the sends are acknowledged.
	c.must(200, "GET", "/api/v1/conversations/"+conv+"/messages?min_seq="+last, alice, nil)
	lastSeq, err := strconv.ParseUint(last, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	admin := c.must(201, "POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "bob", "ttl_seconds": 600, "admin": true}).str("token")
	for _, path := range []string{"/api/v1/admin/projections"} {
		if r := c.do("GET", path, alice, nil); r.status != 403 {
			t.Fatalf("GET %s without the admin claim: %d", path, r.status)
		}
	}
	if r := c.do("POST", "/api/v1/admin/projections/rebuild", alice, nil); r.status != 403 {
		t.Fatalf("rebuild without the admin claim: %d", r.status)
	}
	r := c.must(202, "POST", "/api/v1/admin/projections/rebuild", admin, nil)
	if r.header.Get("Location") != "/api/v1/admin/projections" {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	var status struct {
		Projections []struct {
			Name       string
			Checkpoint uint64
			LagEvents  uint64 `json:"lag_events"`
			State      string
		}
		Rebuild struct {
			State  string
			Error  string
			Result struct{ Seq, Events uint64 }
		}
	}
	eventually(t, 30*time.Second, func() error {
		if err := json.Unmarshal(c.must(200, "GET", "/api/v1/admin/projections", admin, nil).raw, &status); err != nil {
			return err
		}
		if status.Rebuild.State != "done" {
			return fmt.Errorf("rebuild %+v", status.Rebuild)
		}
		return nil
	})
	p := status.Projections
	if len(p) != 1 || p[0].Name != "main" || p[0].Checkpoint < lastSeq || p[0].State != "leading" ||
		status.Rebuild.Result.Seq < lastSeq || status.Rebuild.Result.Events != status.Rebuild.Result.Seq {
		t.Fatalf("status %+v", status)
	}
	// Reads and writes carry on over the new tables.
	seq := c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": "after", "body": "after"}).header.Get("X-Chat-Seq")
	if n := len(c.must(200, "GET", "/api/v1/conversations/"+conv+"/messages?limit=100&min_seq="+seq, alice, nil).list("messages")); n != 21 {
		t.Fatalf("%d messages after the rebuild, want 21", n)
	}
}
