package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func startWithDB(t *testing.T) *instance { return start(t, dbEnv(t)) }

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestHealthAndAuth(t *testing.T) {
	c := startWithDB(t)
	c.must(200, "GET", "/healthz", "", nil)
	eventually(t, 10*time.Second, func() error {
		if r := c.do("GET", "/readyz", "", nil); r.status != 200 {
			return fmt.Errorf("readyz %d %s", r.status, r.raw)
		}
		return nil
	})
	c.provision("alice", "Alice")
	now := time.Now()
	hostSigned := signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()})
	cases := []struct {
		name, method, path, bearer string
		want                       int
	}{
		{"no token", "GET", "/api/v1/me", "", 401},
		{"garbage token", "GET", "/api/v1/me", "not-a-jwt", 401},
		{"expired", "GET", "/api/v1/me", signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice", "exp": now.Add(-time.Hour).Unix()}), 401},
		{"no expiry", "GET", "/api/v1/me", signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice"}), 401},
		{"wrong secret", "GET", "/api/v1/me", signed(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef0123"), jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()}), 401},
		{"alg none", "GET", "/api/v1/me", signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()}), 401},
		{"HS512 not pinned", "GET", "/api/v1/me", signed(t, jwt.SigningMethodHS512, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix()}), 401},
		{"bad subject", "GET", "/api/v1/me", signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "a.b", "exp": now.Add(time.Hour).Unix()}), 401},
		{"host-signed token", "GET", "/api/v1/me?min_seq=1", hostSigned, 200},
		{"user token on service API", "PUT", "/api/v1/users/bob", hostSigned, 401},
		{"service key as user token", "GET", "/api/v1/me", testServiceKey, 401},
		{"wrong service key", "POST", "/api/v1/tokens", "x" + testServiceKey, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do(tc.method, tc.path, tc.bearer, `{"display_name":"Bob"}`)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.raw)
			}
			if tc.want == 401 && r.errCode() != "unauthenticated" {
				t.Fatalf("error body %s", r.raw)
			}
		})
	}
}

func TestProvisioningAndTokens(t *testing.T) {
	c := startWithDB(t)
	r := c.must(201, "PUT", "/api/v1/users/alice", testServiceKey, map[string]string{"display_name": "Alice"})
	if r.str("id") != "alice" || r.header.Get("X-Chat-Seq") == "" {
		t.Fatalf("provision answer %s %v", r.raw, r.header)
	}
	c.must(200, "PUT", "/api/v1/users/alice", testServiceKey, map[string]string{"display_name": "Alice"})
	r = c.must(200, "PUT", "/api/v1/users/alice", testServiceKey, map[string]string{"display_name": "Alice Liddell"})
	seq := r.header.Get("X-Chat-Seq")

	bad := []struct{ name, path, body string }{
		{"empty body", "/api/v1/users/bob", ""},
		{"not json", "/api/v1/users/bob", "display_name=bob"},
		{"unknown field", "/api/v1/users/bob", `{"display_name":"Bob","admin":true}`},
		{"empty name", "/api/v1/users/bob", `{"display_name":"  "}`},
		{"bad utf-8", "/api/v1/users/bob", "{\"display_name\":\"B\xffb\"}"},
		{"name too long", "/api/v1/users/bob", `{"display_name":"` + strings.Repeat("b", 101) + `"}`},
		{"bad id", "/api/v1/users/b%20b", `{"display_name":"Bob"}`},
		{"body too large", "/api/v1/users/bob", `{"display_name":"` + strings.Repeat("b", 70_000) + `"}`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("PUT", tc.path, testServiceKey, tc.body)
			if r.status != 400 || r.errCode() != "invalid" {
				t.Fatalf("status %d %s, want 400 invalid", r.status, r.raw)
			}
		})
	}

	if r := c.do("POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "nobody", "ttl_seconds": 60}); r.status != 404 {
		t.Fatalf("token for unknown user: %d %s", r.status, r.raw)
	}
	if r := c.do("POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "alice", "ttl_seconds": 86401}); r.status != 400 {
		t.Fatalf("token beyond max ttl: %d %s", r.status, r.raw)
	}
	r = c.must(201, "POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "alice", "ttl_seconds": 3600})
	exp, err := time.Parse(time.RFC3339, r.str("expires_at"))
	if err != nil || time.Until(exp) < 59*time.Minute || time.Until(exp) > 61*time.Minute {
		t.Fatalf("expires_at %q: %v", r.str("expires_at"), err)
	}
	me := c.must(200, "GET", "/api/v1/me?min_seq="+seq, r.str("token"), nil)
	if me.str("id") != "alice" || me.str("display_name") != "Alice Liddell" {
		t.Fatalf("me = %s", me.raw)
	}
}

func TestDirectory(t *testing.T) {
	c := startWithDB(t)
	names := map[string]string{"ann": "Ann Arbor", "bea": "Bea Smith", "cal": "Cal Smithers", "dan": "Dan", "eve": "Eve Smith"}
	for id, name := range names {
		c.provision(id, name)
	}
	last := c.do("PUT", "/api/v1/users/fay", testServiceKey, map[string]string{"display_name": "fay smith"})
	tok := c.token("ann")
	seq := last.header.Get("X-Chat-Seq")

	r := c.must(200, "GET", "/api/v1/users?q=SMITH&limit=2&min_seq="+seq, tok, nil)
	var got []string
	for {
		for _, u := range r.list("users") {
			got = append(got, u["id"].(string))
		}
		cur := r.str("next_cursor")
		if cur == "" {
			break
		}
		r = c.must(200, "GET", "/api/v1/users?q=smith&limit=2&cursor="+cur, tok, nil)
	}
	want := "bea,cal,eve,fay" // by display name: Bea Smith, Cal Smithers, Eve Smith, fay smith
	if strings.Join(got, ",") != want {
		t.Fatalf("search smith = %v, want %s", got, want)
	}
	all := c.must(200, "GET", "/api/v1/users?limit=100", tok, nil).list("users")
	if len(all) != 6 {
		t.Fatalf("directory has %d users, want 6", len(all))
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?cursor=!!!", "?cursor=YWJj", "?limit=x"} {
		if r := c.do("GET", "/api/v1/users"+q, tok, nil); r.status != 400 {
			t.Fatalf("GET /users%s: %d, want 400", q, r.status)
		}
	}
}

func TestConversationsAndMessages(t *testing.T) {
	c := startWithDB(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		c.provision(u, strings.ToUpper(u[:1])+u[1:])
	}
	alice, bob, carol := c.token("alice"), c.token("bob"), c.token("carol")

	// One direct conversation per pair, whoever asks.
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	dID := d.str("id")
	if again := c.must(200, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"alice"}}); again.str("id") != dID {
		t.Fatalf("bob's direct conversation %s, alice's %s", again.str("id"), dID)
	}
	for _, body := range []string{
		`{"kind":"direct","members":[]}`, `{"kind":"direct","members":["alice"]}`, `{"kind":"direct","members":["bob","carol"]}`,
		`{"kind":"direct","members":["nobody"]}`, `{"kind":"channel","members":["bob"]}`, `{"kind":"group","title":"","members":["bob"]}`,
	} {
		if r := c.do("POST", "/api/v1/conversations", alice, body); r.status != 400 {
			t.Fatalf("create %s: %d %s, want 400", body, r.status, r.raw)
		}
	}

	// 20 messages; a retried send answers 200 with the original.
	var seqs []uint64
	for i := range 20 {
		m := c.must(201, "POST", "/api/v1/conversations/"+dID+"/messages", alice,
			map[string]string{"client_msg_id": fmt.Sprintf("a-%d", i), "body": fmt.Sprintf("message %d", i)})
		if m.str("conversation_id") != dID || m.str("sender_id") != "alice" || m.str("id") == "" || m.str("created_at") == "" {
			t.Fatalf("message answer %s", m.raw)
		}
		seqs = append(seqs, m.num("seq"))
	}
	retry := c.must(200, "POST", "/api/v1/conversations/"+dID+"/messages", alice, map[string]string{"client_msg_id": "a-3", "body": "message 3"})
	if retry.num("seq") != seqs[3] {
		t.Fatalf("retry seq %d, want %d", retry.num("seq"), seqs[3])
	}
	for _, body := range []string{`{"client_msg_id":"x","body":""}`, `{"client_msg_id":"","body":"hi"}`,
		`{"client_msg_id":"x","body":"` + strings.Repeat("é", 2001) + `"}`, `{"client_msg_id":"x","body":"a\u0000b"}`} {
		if r := c.do("POST", "/api/v1/conversations/"+dID+"/messages", alice, body); r.status != 400 {
			t.Fatalf("send %.60s: %d, want 400", body, r.status)
		}
	}
	lastSeq := strconv.FormatUint(seqs[19], 10)

	// History: newest 15 first, then the rest with before.
	page := c.must(200, "GET", "/api/v1/conversations/"+dID+"/messages?min_seq="+lastSeq, bob, nil)
	msgs := page.list("messages")
	if len(msgs) != 15 || page.body["has_more"] != true || uint64(msgs[0]["seq"].(float64)) != seqs[19] || uint64(msgs[14]["seq"].(float64)) != seqs[5] {
		t.Fatalf("first page: %d messages, has_more %v", len(msgs), page.body["has_more"])
	}
	older := c.must(200, "GET", fmt.Sprintf("/api/v1/conversations/%s/messages?before=%d", dID, seqs[5]), bob, nil)
	if om := older.list("messages"); len(om) != 5 || older.body["has_more"] != false || uint64(om[4]["seq"].(float64)) != seqs[0] {
		t.Fatalf("second page: %s", older.raw)
	}
	after := c.must(200, "GET", fmt.Sprintf("/api/v1/conversations/%s/messages?after=%d&limit=3", dID, seqs[1]), bob, nil)
	if am := after.list("messages"); len(am) != 3 || uint64(am[0]["seq"].(float64)) != seqs[4] || uint64(am[2]["seq"].(float64)) != seqs[2] {
		t.Fatalf("after page: %s", after.raw)
	}
	for _, q := range []string{"?limit=101", "?limit=0", "?before=-1", "?before=5&after=9", "?min_seq=abc"} {
		if r := c.do("GET", "/api/v1/conversations/"+dID+"/messages"+q, bob, nil); r.status != 400 {
			t.Fatalf("history%s: %d, want 400", q, r.status)
		}
	}

	// Unread counts and read markers.
	list := c.must(200, "GET", "/api/v1/conversations", bob, nil).list("conversations")
	if len(list) != 1 || list[0]["unread_count"].(float64) != 20 {
		t.Fatalf("bob's list: %v", list)
	}
	if lm := list[0]["last_message"].(map[string]any); lm["body"] != "message 19" {
		t.Fatalf("last message %v", lm)
	}
	rd := c.must(200, "POST", "/api/v1/conversations/"+dID+"/read", bob, map[string]any{"seq": seqs[9]})
	conv := c.must(200, "GET", "/api/v1/conversations/"+dID+"?min_seq="+rd.header.Get("X-Chat-Seq"), bob, nil)
	if conv.num("unread_count") != 10 || conv.num("last_read_seq") != seqs[9] {
		t.Fatalf("after reading to %d: %s", seqs[9], conv.raw)
	}
	if r := c.do("POST", "/api/v1/conversations/"+dID+"/read", bob, map[string]any{"seq": 0}); r.status != 400 {
		t.Fatalf("read seq 0: %d", r.status)
	}

	// Outsiders learn nothing: 404 everywhere.
	msgID := msgs[0]["id"].(string)
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/api/v1/conversations/" + dID, ""},
		{"GET", "/api/v1/conversations/" + dID + "/messages", ""},
		{"POST", "/api/v1/conversations/" + dID + "/messages", `{"client_msg_id":"c","body":"hi"}`},
		{"POST", "/api/v1/conversations/" + dID + "/read", `{"seq":1}`},
		{"GET", "/api/v1/messages/" + msgID, ""},
		{"PATCH", "/api/v1/messages/" + msgID, `{"body":"mine now"}`},
		{"DELETE", "/api/v1/messages/" + msgID, ""},
		{"GET", "/api/v1/conversations/gaaaaaaaaaaaaaaaaaaaaaaaaaa", ""},
		{"GET", "/api/v1/messages/nonsense", ""},
	} {
		var body any
		if req.body != "" {
			body = req.body
		}
		if r := c.do(req.method, req.path, carol, body); r.status != 404 || r.errCode() != "not_found" {
			t.Fatalf("carol %s %s: %d %s, want 404", req.method, req.path, r.status, r.raw)
		}
	}

	// Edit and delete.
	if r := c.do("PATCH", "/api/v1/messages/"+msgID, bob, `{"body":"not yours"}`); r.status != 403 {
		t.Fatalf("bob edits alice's message: %d", r.status)
	}
	ed := c.must(200, "PATCH", "/api/v1/messages/"+msgID, alice, `{"body":"message 19, edited"}`)
	got := c.must(200, "GET", "/api/v1/messages/"+msgID+"?min_seq="+ed.header.Get("X-Chat-Seq"), bob, nil)
	if got.str("body") != "message 19, edited" || got.str("edited_at") == "" {
		t.Fatalf("edited message: %s", got.raw)
	}
	if r := c.do("DELETE", "/api/v1/messages/"+msgID, bob, nil); r.status != 403 {
		t.Fatalf("bob deletes alice's direct message: %d", r.status)
	}
	del := c.must(200, "DELETE", "/api/v1/messages/"+msgID, alice, nil)
	got = c.must(200, "GET", "/api/v1/messages/"+msgID+"?min_seq="+del.header.Get("X-Chat-Seq"), bob, nil)
	if got.body["deleted"] != true || got.str("body") != "" {
		t.Fatalf("deleted message: %s", got.raw)
	}
	if r := c.do("DELETE", "/api/v1/messages/"+msgID, alice, nil); r.status != 409 {
		t.Fatalf("second delete: %d, want 409", r.status)
	}
	// A late retry of the deleted message's send answers with it as it is now: deleted.
	// Its X-Chat-Seq is the delete's: a read with that min_seq shows the same.
	if r := c.must(200, "POST", "/api/v1/conversations/"+dID+"/messages", alice, map[string]string{"client_msg_id": "a-19", "body": "message 19"}); r.body["deleted"] != true || r.str("body") != "" ||
		r.header.Get("X-Chat-Seq") != del.header.Get("X-Chat-Seq") {
		t.Fatalf("retry of a deleted message: X-Chat-Seq %s (the delete's %s), %s", r.header.Get("X-Chat-Seq"), del.header.Get("X-Chat-Seq"), r.raw)
	}

	// A read marker never moves past the conversation's last event, so later messages count.
	far := c.must(200, "POST", "/api/v1/conversations/"+dID+"/read", bob, map[string]any{"seq": 1 << 40})
	late := c.must(201, "POST", "/api/v1/conversations/"+dID+"/messages", alice, map[string]string{"client_msg_id": "late", "body": "after the far marker"})
	conv = c.must(200, "GET", "/api/v1/conversations/"+dID+"?min_seq="+late.header.Get("X-Chat-Seq"), bob, nil)
	if conv.num("unread_count") != 1 || conv.num("last_read_seq") >= late.num("seq") {
		t.Fatalf("after a marker at 2^40 (event %s) and one more message: %s", far.header.Get("X-Chat-Seq"), conv.raw)
	}

	// Unknown paths and wrong methods say so, whatever the credentials.
	for _, req := range []struct {
		method, path, bearer string
		want                 int
	}{
		{"GET", "/api/v1/nope", "", 404},
		{"GET", "/api/v1/tokens", testServiceKey, 405},
		{"DELETE", "/api/v1/me", alice, 405},
	} {
		if r := c.do(req.method, req.path, req.bearer, nil); r.status != req.want {
			t.Fatalf("%s %s: %d %s, want %d", req.method, req.path, r.status, r.raw, req.want)
		}
	}
	if r := c.do("POST", "/api/v1/conversations/gaaaaaaaaaaaaaaaaaaaaaaaaaa/members", alice, `{"user_id":"ghost"}`); r.status != 404 {
		t.Fatalf("add to a missing conversation: %d %s", r.status, r.raw)
	}

	// Groups: members add, the creator removes, members leave.
	g := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "group", "title": "Chess club", "members": []string{"bob"}})
	gID := g.str("id")
	c.must(200, "POST", "/api/v1/conversations/"+gID+"/members", bob, map[string]string{"user_id": "carol"})
	cm := c.must(201, "POST", "/api/v1/conversations/"+gID+"/messages", carol, map[string]string{"client_msg_id": "c1", "body": "hi all"})
	if r := c.do("DELETE", "/api/v1/conversations/"+gID+"/members/alice", bob, nil); r.status != 403 {
		t.Fatalf("bob removes the creator: %d", r.status)
	}
	if r := c.do("POST", "/api/v1/conversations/"+dID+"/members", alice, `{"user_id":"carol"}`); r.status != 400 {
		t.Fatalf("add to a direct conversation: %d", r.status)
	}
	c.must(200, "DELETE", "/api/v1/messages/"+cm.str("id"), alice, nil) // the creator moderates
	rm := c.must(200, "DELETE", "/api/v1/conversations/"+gID+"/members/carol", alice, nil)
	if r := c.do("POST", "/api/v1/conversations/"+gID+"/messages", carol, `{"client_msg_id":"c2","body":"hello?"}`); r.status != 404 {
		t.Fatalf("removed member sends: %d", r.status)
	}
	if r := c.do("GET", "/api/v1/conversations/"+gID+"/messages?min_seq="+rm.header.Get("X-Chat-Seq"), carol, nil); r.status != 404 {
		t.Fatalf("removed member reads: %d", r.status)
	}
	left := c.must(200, "DELETE", "/api/v1/conversations/"+gID+"/members/bob", bob, nil)
	if len(left.list("members")) != 1 {
		t.Fatalf("after bob left: %s", left.raw)
	}
	// The last member leaving a group gets its members as an empty list, not null.
	solo := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "group", "title": "Notes", "members": []string{}})
	if gone := c.must(200, "DELETE", "/api/v1/conversations/"+solo.str("id")+"/members/alice", alice, nil); !bytes.Contains(gone.raw, []byte(`"members":[]`)) {
		t.Fatalf("after the last member left: %s", gone.raw)
	}

	// Alice's list: most recent activity first, with members.
	al := c.must(200, "GET", "/api/v1/conversations?min_seq="+left.header.Get("X-Chat-Seq"), alice, nil).list("conversations")
	if len(al) != 2 || al[0]["id"] != gID || al[1]["id"] != dID || al[0]["title"] != "Chess club" {
		t.Fatalf("alice's list: %v", al)
	}
	if p := c.must(200, "GET", "/api/v1/conversations?limit=1", alice, nil); p.body["has_more"] != true {
		t.Fatalf("paged list: %s", p.raw)
	}
}

// A read with min_seq waits for the read models, and only so long: a write's X-Chat-Seq makes
// the next read see it; a sequence that never comes answers 503 after CHAT_MIN_SEQ_TIMEOUT.
func TestMinSeqIsBounded(t *testing.T) {
	env := dbEnv(t, "CHAT_MIN_SEQ_TIMEOUT", "300ms")
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	m := c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": "1", "body": "hi"})
	r := c.must(200, "GET", "/api/v1/messages/"+m.str("id")+"?min_seq="+m.header.Get("X-Chat-Seq"), alice, nil)
	if r.str("body") != "hi" {
		t.Fatalf("read-your-write: %s", r.raw)
	}
	r = c.do("GET", "/api/v1/conversations/"+conv+"/messages?min_seq=999999", alice, nil)
	if r.status != 503 || r.errCode() != "unavailable" {
		t.Fatalf("min_seq from the future: %d %s", r.status, r.raw)
	}
}
