package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/api"
	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/internal/pgtest"
	"github.com/chatd-dev/chatd/projections"
	"github.com/chatd-dev/chatd/streams"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// frame is a decoded WebSocket frame.
type frame struct {
	Type           string          `json:"type"`
	Seq            uint64          `json:"seq"`
	ConversationID string          `json:"conversation_id"`
	Actor          string          `json:"actor"`
	Data           json.RawMessage `json:"data"`
}

func (f frame) field(key string) any {
	var m map[string]any
	_ = json.Unmarshal(f.Data, &m)
	return m[key]
}

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

// dialWS connects as the holder of token; query carries since/epoch; origin may be empty.
func (in *instance) dialWS(token, query, origin string) (*wsClient, *http.Response, error) {
	u := strings.Replace(in.url, "http://", "ws://", 1) + "/api/v1/ws?token=" + url.QueryEscape(token)
	if query != "" {
		u += "&" + query
	}
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	conn, resp, err := websocket.DefaultDialer.Dial(u, h)
	if err != nil {
		return nil, resp, err
	}
	in.t.Cleanup(func() { conn.Close() })
	return &wsClient{t: in.t, conn: conn}, resp, nil
}

func (in *instance) mustWS(token, query string) *wsClient {
	in.t.Helper()
	c, resp, err := in.dialWS(token, query, "")
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		in.t.Fatalf("websocket: %v (status %d)", err, status)
	}
	return c
}

// next returns the next frame, failing the test after 10s.
func (c *wsClient) next() frame {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("frame %s: %v", data, err)
	}
	return f
}

// nextOf skips frames until one of type typ.
func (c *wsClient) nextOf(typ string) frame {
	c.t.Helper()
	for {
		if f := c.next(); f.Type == typ {
			return f
		}
	}
}

// closeCode reads until the server closes and returns the close code.
func (c *wsClient) closeCode() int {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, _, err := c.conn.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			c.t.Fatalf("connection ended without a close frame: %v", err)
		}
	}
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	if err := c.conn.WriteJSON(v); err != nil {
		c.t.Fatal(err)
	}
}

// twoNodes starts two chatd instances sharing one NATS server and one database.
func twoNodes(t *testing.T) (*instance, *instance) {
	ns := natstest.RunServer(t, "")
	db := pgtest.NewDB(t)
	var nodes []*instance
	for range 2 {
		env := baseEnv(t)
		env["CHAT_NATS_URL"] = ns.ClientURL()
		env["DATABASE_URL"] = db
		nodes = append(nodes, start(t, env))
	}
	return nodes[0], nodes[1]
}

func TestPushAcrossNodes(t *testing.T) {
	a, b := twoNodes(t)
	a.provision("alice", "Alice")
	a.provision("bob", "Bob")
	alice, bob := a.token("alice"), b.token("bob")
	ws := a.mustWS(alice, "")
	ready := ws.nextOf("ready")
	if ready.field("epoch") == "" {
		t.Fatalf("ready frame without epoch: %s", ready.Data)
	}

	d := b.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"alice"}})
	created := ws.next()
	if created.Type != "conversation.created" || created.ConversationID != d.str("id") {
		t.Fatalf("first frame %+v, want conversation.created", created)
	}
	m := b.must(201, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", bob, map[string]string{"client_msg_id": "1", "body": "across nodes"})
	f := ws.next()
	if f.Type != "message.created" || f.Seq != m.num("seq") || f.field("body") != "across nodes" || f.Actor != "bob" {
		t.Fatalf("push %+v %s, want bob's message at %d", f, f.Data, m.num("seq"))
	}
	// Push after commit: a GET on receipt, without min_seq, finds the message.
	got := a.must(200, "GET", "/api/v1/messages/"+f.field("message_id").(string), alice, nil)
	if got.str("body") != "across nodes" {
		t.Fatalf("GET after push: %s", got.raw)
	}

	// Typing reaches the other member, never the typist, and is not stored.
	bws := b.mustWS(bob, "")
	bws.nextOf("ready")
	bws.send(map[string]string{"type": "typing", "conversation_id": d.str("id")})
	if tf := ws.nextOf("typing"); tf.field("user_id") != "bob" || tf.Seq != 0 {
		t.Fatalf("typing frame %+v", tf)
	}
	a.must(201, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", alice, map[string]string{"client_msg_id": "2", "body": "hi"})
	for f := bws.next(); f.Type != "message.created"; f = bws.next() {
		if f.Type == "typing" {
			t.Fatalf("bob received his own typing: %+v", f)
		}
	}
}

// A push that NATS lost on its way to a node is noticed at the user's next push, which names it
// as its predecessor: the connection closes with 4008, and the client resumes from its last seq.
// Here the next push is forged: NATS loses nothing on its own in a test.
func TestMissedPushIsNoticed(t *testing.T) {
	ns := natstest.RunServer(t, "")
	env := baseEnv(t)
	env["CHAT_NATS_URL"] = ns.ClientURL()
	env["DATABASE_URL"] = pgtest.NewDB(t)
	c := start(t, env)
	c.provision("alice", "Alice")
	c.provision("bob", "Bob")
	alice, bob := c.token("alice"), c.token("bob")
	d := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"alice"}})
	path := "/api/v1/conversations/" + d.str("id") + "/messages"
	c.must(200, "GET", "/api/v1/me?min_seq="+d.header.Get("X-Chat-Seq"), alice, nil)

	ws := c.mustWS(alice, "")
	ws.nextOf("ready")
	first := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": "1", "body": "seen live"})
	if f := ws.next(); f.Seq != first.num("seq") {
		t.Fatalf("live frame %+v, want the message at %d", f, first.num("seq"))
	}
	nc := natstest.Connect(t, ns)
	lost := first.num("seq") + 1 // as if bob's next message's push never came
	forged := nats.NewMsg(streams.PushSubject("alice"))
	forged.Header.Set(projections.SeqHeader, fmt.Sprint(lost+1))
	forged.Header.Set(projections.PrevHeader, fmt.Sprint(lost))
	forged.Data = []byte(`{"type":"message.created"}`)
	if err := nc.PublishMsg(forged); err != nil {
		t.Fatal(err)
	}
	if code := ws.closeCode(); code != api.CloseTooSlow {
		t.Fatalf("closed with %d, want %d", code, api.CloseTooSlow)
	}

	// The resume goes on from there, and the next real push passes.
	ws = c.mustWS(alice, fmt.Sprintf("since=%d", first.num("seq")))
	ws.nextOf("ready")
	next := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": "2", "body": "live again"})
	if f := ws.next(); f.Seq != next.num("seq") || f.field("body") != "live again" {
		t.Fatalf("live after the resume: %+v", f)
	}
}

func TestResume(t *testing.T) {
	env := dbEnv(t, "CHAT_WS_MAX_REPLAY", "56") // the resume below replays 55; since=0 later needs more
	c := start(t, env)
	for _, u := range []string{"alice", "bob", "carol"} {
		c.provision(u, u)
	}
	alice, bob := c.token("alice"), c.token("bob")
	d := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"alice"}})
	other := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"carol"}})
	path := "/api/v1/conversations/" + d.str("id") + "/messages"
	c.must(200, "GET", "/api/v1/me?min_seq="+other.header.Get("X-Chat-Seq"), alice, nil)

	ws := c.mustWS(alice, "")
	ready := ws.nextOf("ready")
	epoch := ready.field("epoch").(string)
	first := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": "first", "body": "seen live"})
	if f := ws.next(); f.Seq != first.num("seq") {
		t.Fatalf("live frame %+v", f)
	}
	lastSeen := first.num("seq")
	ws.conn.Close()

	// While alice is away: 50 messages to her, and some traffic she must not see.
	var want []uint64
	for i := range 50 {
		m := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": fmt.Sprint("away-", i), "body": fmt.Sprint("missed ", i)})
		want = append(want, m.num("seq"))
		if i%10 == 0 {
			c.must(201, "POST", "/api/v1/conversations/"+other.str("id")+"/messages", bob, map[string]string{"client_msg_id": fmt.Sprint("o-", i), "body": "not for alice"})
			c.must(200, "POST", "/api/v1/conversations/"+d.str("id")+"/read", bob, map[string]any{"seq": m.num("seq")})
		}
	}
	c.must(200, "GET", path+fmt.Sprintf("?min_seq=%d", want[49]), alice, nil)

	ws = c.mustWS(alice, fmt.Sprintf("since=%d&epoch=%s", lastSeen, epoch))
	for i, seq := range want {
		f := ws.next()
		if f.Type != "message.created" || f.Seq != seq || f.field("body") != fmt.Sprint("missed ", i) {
			t.Fatalf("replayed frame %d: %+v %s, want message at %d", i, f, f.Data, seq)
		}
	}
	if f := ws.next(); f.Type != "ready" {
		t.Fatalf("after the replay: %+v, want ready", f)
	}
	live := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": "after", "body": "live again"})
	if f := ws.next(); f.Seq != live.num("seq") || f.field("body") != "live again" {
		t.Fatalf("live after resume: %+v", f)
	}

	// A since from another epoch, beyond the stream, or too far back: resync_required, then live.
	for _, q := range []string{
		fmt.Sprintf("since=%d&epoch=another", lastSeen),
		"since=999999",
		"since=0", // more than CHAT_WS_MAX_REPLAY events
	} {
		ws := c.mustWS(alice, q)
		if f := ws.next(); f.Type != "resync_required" {
			t.Fatalf("%s: first frame %+v, want resync_required", q, f)
		}
		ws.nextOf("ready")
		m := c.must(201, "POST", path, bob, map[string]string{"client_msg_id": "r-" + q, "body": "live"})
		if f := ws.next(); f.Seq != m.num("seq") {
			t.Fatalf("%s: live frame %+v", q, f)
		}
	}
}

// A client that stops reading is closed with 4008 and never delays another.
func TestSlowConsumer(t *testing.T) {
	env := dbEnv(t, "CHAT_WS_SEND_QUEUE", "600")
	c := start(t, env)
	c.provision("alice", "Alice")
	c.provision("bob", "Bob")
	alice, bob := c.token("alice"), c.token("bob")
	d := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	c.must(200, "GET", "/api/v1/me?min_seq="+d.header.Get("X-Chat-Seq"), alice, nil)

	// The stalled client never reads, and its kernel buffer is tiny, so the server's writes to
	// it block almost at once.
	dialer := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		}}
		return nd.DialContext(ctx, network, addr)
	}}
	wsURL := strings.Replace(c.url, "http://", "ws://", 1) + "/api/v1/ws?token=" + url.QueryEscape(alice)
	stalledConn, _, err := dialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stalledConn.Close()
	stalled := &wsClient{t: t, conn: stalledConn}
	reader := c.mustWS(bob, "")
	reader.nextOf("ready")

	body := strings.Repeat("x", 3900)
	const n = 1200
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; {
			_ = reader.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			var f frame
			if err := reader.conn.ReadJSON(&f); err != nil {
				done <- fmt.Errorf("reader, frame %d: %w", i, err)
				return
			}
			if f.Type == "presence" {
				continue // alice's stalled connection going away
			}
			if f.Type != "message.created" || f.field("client_msg_id") != fmt.Sprint(i) {
				done <- fmt.Errorf("reader, frame %d: %+v", i, f)
				return
			}
			i++
		}
		done <- nil
	}()
	for i := range n {
		c.must(201, "POST", "/api/v1/conversations/"+d.str("id")+"/messages", alice, map[string]string{"client_msg_id": fmt.Sprint(i), "body": body})
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code := stalled.closeCode(); code != api.CloseTooSlow {
		t.Fatalf("stalled client closed with %d, want %d", code, api.CloseTooSlow)
	}
}

func TestWebSocketAuth(t *testing.T) {
	env := dbEnv(t, "CHAT_ALLOWED_ORIGINS", "https://club.example")
	c := start(t, env)
	c.provision("alice", "Alice")
	alice := c.token("alice")
	expired := signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(-time.Hour).Unix()})
	for _, tc := range []struct {
		name, token, origin string
		want                int
	}{
		{"no token", "", "", 401},
		{"bad token", "nope", "", 401},
		{"expired token", expired, "", 401},
		{"wrong origin", alice, "https://evil.example", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp, err := c.dialWS(tc.token, "", tc.origin)
			if err == nil || resp == nil || resp.StatusCode != tc.want {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				t.Fatalf("dial: err %v, status %d, want %d", err, status, tc.want)
			}
		})
	}
	for _, origin := range []string{"https://club.example", c.url} {
		ws, _, err := c.dialWS(alice, "", origin)
		if err != nil {
			t.Fatalf("origin %s refused: %v", origin, err)
		}
		ws.nextOf("ready")
	}

	// A token that expires while connected closes the connection with 4001.
	short := signed(t, jwt.SigningMethodHS256, []byte(testJWTSecret), jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(2 * time.Second).Unix()})
	ws, _, err := c.dialWS(short, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if code := ws.closeCode(); code != 4001 {
		t.Fatalf("expired token closed with %d, want 4001", code)
	}

	// Shutdown says "going away".
	ws = c.mustWS(alice, "")
	ws.nextOf("ready")
	go c.stop()
	if code := ws.closeCode(); code != websocket.CloseGoingAway {
		t.Fatalf("shutdown closed with %d, want 1001", code)
	}
}

// A since older than what the stream still holds gets resync_required.
func TestResumeBeforeRetention(t *testing.T) {
	env := dbEnv(t)
	ns := externalNATS(t, env)
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	var last uint64
	for i := range 5 {
		last = c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": fmt.Sprint(i), "body": "x"}).num("seq")
	}
	c.must(200, "GET", fmt.Sprintf("/api/v1/me?min_seq=%d", last), alice, nil)
	// An operator trims the stream's head (retention).
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "CHAT_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background(), jetstream.WithPurgeSequence(last-1)); err != nil {
		t.Fatal(err)
	}
	ws := c.mustWS(alice, "since=1")
	if f := ws.next(); f.Type != "resync_required" {
		t.Fatalf("first frame %+v, want resync_required", f)
	}
}

// Presence works across nodes: contacts hear when a user comes online and when their last
// connection goes, and the endpoint says who is online now.
func TestPresence(t *testing.T) {
	a, b := twoNodes(t)
	a.provision("alice", "Alice")
	a.provision("bob", "Bob")
	alice, bob := a.token("alice"), b.token("bob")
	d := a.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	a.must(200, "GET", "/api/v1/me?min_seq="+d.header.Get("X-Chat-Seq"), alice, nil)
	b.must(200, "GET", "/api/v1/me?min_seq="+d.header.Get("X-Chat-Seq"), bob, nil)
	presence := "/api/v1/conversations/" + d.str("id") + "/presence"
	if r := b.must(200, "GET", presence, bob, nil); len(r.body["online"].([]any)) != 0 {
		t.Fatalf("nobody connected, online %s", r.raw)
	}

	bws := b.mustWS(bob, "")
	bws.nextOf("ready")
	aws := a.mustWS(alice, "")
	aws.nextOf("ready")
	if f := bws.nextOf("presence"); f.field("user_id") != "alice" || f.field("online") != true {
		t.Fatalf("bob's presence frame %s", f.Data)
	}
	r := b.must(200, "GET", presence, bob, nil)
	if got := fmt.Sprint(r.body["online"]); got != "[alice bob]" && got != "[bob alice]" {
		t.Fatalf("online %s, want alice and bob", r.raw)
	}
	if r := a.do("GET", presence, a.token("alice")[:10], nil); r.status != 401 {
		t.Fatalf("presence without a valid token: %d", r.status)
	}

	aws.conn.Close()
	if f := bws.nextOf("presence"); f.field("user_id") != "alice" || f.field("online") != false {
		t.Fatalf("bob's presence frame after alice left %s", f.Data)
	}
	if r := b.must(200, "GET", presence, bob, nil); fmt.Sprint(r.body["online"]) != "[bob]" {
		t.Fatalf("online after alice left: %s", r.raw)
	}

	// A node that shuts down takes its users' presence with it before it lets go of NATS, not
	// when their keys expire (45 s later).
	for range 3 {
		aws = a.mustWS(alice, "")
		aws.nextOf("ready")
	}
	if f := bws.nextOf("presence"); f.field("user_id") != "alice" || f.field("online") != true {
		t.Fatalf("bob's presence frame after alice came back %s", f.Data)
	}
	a.stop()
	f := bws.nextOf("presence") // each connection said online: the last one's close says offline
	for f.field("online") == true {
		f = bws.nextOf("presence")
	}
	if f.field("user_id") != "alice" || f.field("online") != false {
		t.Fatalf("bob's presence frame after alice's node stopped %s", f.Data)
	}
	if r := b.must(200, "GET", presence, bob, nil); fmt.Sprint(r.body["online"]) != "[bob]" {
		t.Fatalf("online after alice's node stopped: %s", r.raw)
	}
}

// A user added to a group learns of the conversation as conversation.created (live and on
// resume); the members who were there see member.joined.
func TestAddedMemberHearsConversationCreated(t *testing.T) {
	c := startWithDB(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		c.provision(u, u)
	}
	alice, bob, carol := c.token("alice"), c.token("bob"), c.token("carol")
	g := c.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "group", "title": "G", "members": []string{"bob"}})
	c.must(200, "GET", "/api/v1/me?min_seq="+g.header.Get("X-Chat-Seq"), alice, nil)
	cws := c.mustWS(carol, "")
	ready := cws.nextOf("ready")
	bws := c.mustWS(bob, "")
	bws.nextOf("ready")

	add := c.must(200, "POST", "/api/v1/conversations/"+g.str("id")+"/members", alice, map[string]string{"user_id": "carol"})
	seq := add.num("seq")
	f := cws.nextOf("conversation.created")
	conv, _ := f.field("conversation").(map[string]any)
	if f.Seq != seq || conv["id"] != g.str("id") || fmt.Sprint(conv["members"]) != "[alice bob carol]" {
		t.Fatalf("carol's frame %+v %s, want conversation.created at %d with all members", f, f.Data, seq)
	}
	if f := bws.nextOf("member.joined"); f.Seq != seq || f.field("user_id") != "carol" {
		t.Fatalf("bob's frame %+v", f)
	}

	resumed := c.mustWS(carol, fmt.Sprintf("since=%d&epoch=%s", uint64(ready.field("seq").(float64)), ready.field("epoch")))
	if f := resumed.next(); f.Type != "conversation.created" || f.Seq != seq {
		t.Fatalf("carol's replayed frame %+v, want conversation.created at %d", f, seq)
	}
}

// A resume replays exactly what live delivery would have sent: nothing from before the user
// joined a conversation, and everything up to and including their removal from one.
func TestResumeFollowsMembership(t *testing.T) {
	c := startWithDB(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		c.provision(u, u)
	}
	alice, bob := c.token("alice"), c.token("bob")
	old := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "group", "title": "old", "members": []string{"alice"}})
	c.must(200, "GET", "/api/v1/me?min_seq="+old.header.Get("X-Chat-Seq"), alice, nil)
	ws := c.mustWS(alice, "")
	ready := ws.nextOf("ready")
	ws.conn.Close()

	// While alice is away: a new group is made without her, talks, then adds her; she is
	// removed from the old group, which then talks on.
	g := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "group", "title": "new", "members": []string{"carol"}})
	c.must(201, "POST", "/api/v1/conversations/"+g.str("id")+"/messages", bob, map[string]string{"client_msg_id": "before", "body": "before alice"})
	added := c.must(200, "POST", "/api/v1/conversations/"+g.str("id")+"/members", bob, map[string]string{"user_id": "alice"})
	after := c.must(201, "POST", "/api/v1/conversations/"+g.str("id")+"/messages", bob, map[string]string{"client_msg_id": "after", "body": "welcome"})
	removed := c.must(200, "DELETE", "/api/v1/conversations/"+old.str("id")+"/members/alice", bob, nil)
	last := c.must(201, "POST", "/api/v1/conversations/"+old.str("id")+"/messages", bob, map[string]string{"client_msg_id": "gone", "body": "after alice left"})
	c.must(200, "GET", "/api/v1/me?min_seq="+last.header.Get("X-Chat-Seq"), alice, nil)

	ws = c.mustWS(alice, fmt.Sprintf("since=%d&epoch=%s", uint64(ready.field("seq").(float64)), ready.field("epoch")))
	want := []struct {
		typ string
		seq uint64
	}{
		{"conversation.created", added.num("seq")},
		{"message.created", after.num("seq")},
		{"member.left", removed.num("seq")},
		{"ready", 0},
	}
	for _, w := range want {
		f := ws.next()
		if f.Type != w.typ || (w.seq != 0 && f.Seq != w.seq) {
			t.Fatalf("replayed %s at %d, want %s at %d", f.Type, f.Seq, w.typ, w.seq)
		}
	}
}

// A user's tabs on one node share a push subscription: each tab gets every push, and closing
// one tab leaves the other's pushes alone.
func TestTabsSharePushes(t *testing.T) {
	c := startWithDB(t)
	alice, conv := c.aliceAndBob()
	bob := c.token("bob")
	tabs := []*wsClient{c.mustWS(alice, ""), c.mustWS(alice, "")}
	for _, tab := range tabs {
		tab.nextOf("ready")
	}
	m := c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", bob, map[string]string{"client_msg_id": "1", "body": "to both tabs"})
	for i, tab := range tabs {
		if f := tab.nextOf("message.created"); f.Seq != m.num("seq") {
			t.Fatalf("tab %d got %+v", i, f)
		}
	}
	tabs[0].conn.Close()
	eventually(t, 10*time.Second, func() error { // the server has let the tab go
		resp, err := http.Get(c.url + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), "\nchatd_websocket_connections 1\n") {
			return fmt.Errorf("still more than one connection")
		}
		return nil
	})
	m = c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", bob, map[string]string{"client_msg_id": "2", "body": "to the tab left"})
	if f := tabs[1].nextOf("message.created"); f.Seq != m.num("seq") {
		t.Fatalf("the tab left got %+v", f)
	}
}
