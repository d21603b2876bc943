package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// demoURL is where the instance's demo host site listens, as chatd printed it.
func (in *instance) demoURL() string {
	in.t.Helper()
	for _, line := range strings.Split(in.stdout(), "\n") {
		if rest, ok := strings.CutPrefix(line, "chatd demo host site on "); ok {
			return strings.Fields(rest)[0]
		}
	}
	in.t.Fatalf("chatd printed no demo host site:\n%s", in.stdout())
	return ""
}

// demoToken asks the demo host site for a token, as its page does.
func demoToken(t *testing.T, in *instance, user string) string {
	t.Helper()
	resp, err := http.Post(in.demoURL()+"/demo/token", "application/json", strings.NewReader(`{"user":"`+user+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.Token == "" {
		t.Fatalf("demo token: %s %v %+v", resp.Status, err, tok)
	}
	return tok.Token
}

// The chat page may be framed only by the configured host sites (and the demo's origins), and
// the demo's own origin is allowed without configuration.
func TestEmbedHeaders(t *testing.T) {
	c := start(t, dbEnv(t, "CHAT_DEMO_ADDR", "127.0.0.1:0", "CHAT_ALLOWED_ORIGINS", "https://club.example"))
	demo := c.demoURL()
	port := demo[strings.LastIndex(demo, ":")+1:]
	resp, err := http.Get(c.url + "/embed/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"frame-ancestors https://club.example http://localhost:" + port + " http://127.0.0.1:" + port + ";", "script-src 'self';"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if xfo := resp.Header.Get("X-Frame-Options"); xfo != "" {
		t.Errorf("X-Frame-Options %q on the embed page", xfo)
	}
	// The demo mints a token that chatd accepts.
	c.must(200, "GET", "/api/v1/me", demoToken(t, c, "alice"), nil)
	// Only for requests addressed to loopback: a site whose name resolves to 127.0.0.1 (DNS
	// rebinding) gets nothing.
	req, err := http.NewRequest(http.MethodPost, demo+"/demo/token", strings.NewReader(`{"user":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "attacker.example:" + port
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("demo token for Host %s: %s, want 403", req.Host, r.Status)
	}
	resp, err = http.Post(demo+"/demo/token", "application/json", strings.NewReader(`{"user":"mallory"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("token for a user outside the demo: %s, want 404", resp.Status)
	}
}
