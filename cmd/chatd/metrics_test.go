package main

import (
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// GET /metrics counts what happened, and pprof answers on the admin listener only.
func TestMetricsAndPprof(t *testing.T) {
	env := dbEnv(t, "CHAT_ADMIN_ADDR", "127.0.0.1:0")
	c := start(t, env)
	alice, conv := c.aliceAndBob()
	var seq string
	for _, id := range []string{"1", "2", "3"} {
		seq = c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", alice, map[string]string{"client_msg_id": id, "body": "hi"}).header.Get("X-Chat-Seq")
	}
	c.must(200, "GET", "/api/v1/me?min_seq="+seq, alice, nil)

	r := c.must(200, "GET", "/metrics", "", nil)
	text := string(r.raw)
	for _, want := range []string{
		`chatd_events_appended_total{type="message.created"} 3`,
		`chatd_events_appended_total{type="user.created"} 2`,
		`chatd_http_requests_total{method="POST",route="/api/v1/conversations/:id/messages",status="201"} 3`,
		`chatd_projector_checkpoint ` + seq,
		`chatd_pushes_total`,
		`chatd_websocket_connections 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, grep(text, "chatd_"))
		}
	}
	if c.do("GET", "/debug/pprof/", "", nil).status != 404 {
		t.Fatal("pprof is served on the public listener")
	}
	var admin []string
	eventually(t, 10*time.Second, func() error {
		if admin = regexp.MustCompile(`chatd admin \(pprof\) listening on (http://\S+)`).FindStringSubmatch(c.stdout()); admin == nil {
			return errors.New("no admin listener announced")
		}
		return nil
	})
	resp, err := http.Get(admin[1] + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine") {
		t.Fatalf("pprof index: %d", resp.StatusCode)
	}
}

func grep(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
