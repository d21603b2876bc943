package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// DemoUser is one person of the demo host site.
type DemoUser struct {
	ID, DisplayName string
}

// DemoUsers are the members of the demo's club.
var DemoUsers = []DemoUser{
	{"alice", "Alice Martin"}, {"bob", "Bob Okafor"}, {"carol", "Carol Nguyen"}, {"dave", "Dave Fischer"},
}

// DemoConfig configures the demo host site.
type DemoConfig struct {
	// ChatURL is chatd's base URL as browsers reach it; the demo's server calls it too.
	ChatURL string
	// ServiceKey is the host site's credential for chatd's service API.
	ServiceKey string
	Users      []DemoUser
	// TokenTTL is the lifetime of the tokens the demo mints (the page refreshes them before expiry).
	TokenTTL time.Duration
	Client   *http.Client
}

// Demo serves a small host web site, on an origin of its own, that embeds the chat the way a real
// host does: its server provisions users and mints tokens through chatd's REST API with the
// service key, and its page mounts the chat with /embed.js and hands the token over by postMessage.
// It trusts whoever opens it to be whoever they pick, so it belongs on loopback only.
func Demo(cfg DemoConfig) http.Handler {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 15 * time.Minute
	}
	d := &demo{cfg: cfg, page: template.Must(template.ParseFS(files, "demo/index.html"))}
	chatOrigin := cfg.ChatURL
	if u, err := url.Parse(cfg.ChatURL); err == nil {
		chatOrigin = u.Scheme + "://" + u.Host
	}
	csp := strings.Join([]string{
		"default-src 'self'",
		"script-src 'self' " + chatOrigin,
		"style-src 'self'",
		"img-src 'self' data:",
		"frame-src " + chatOrigin,
		"connect-src 'self'",
		"base-uri 'none'",
		"form-action 'self'",
		"object-src 'none'",
	}, "; ")
	js, css := loadAsset("demo/demo.js"), loadAsset("demo/demo.css")

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		users := make([]string, len(cfg.Users))
		for i, u := range cfg.Users {
			users[i] = u.ID
		}
		if err := d.page.Execute(&b, struct {
			ChatURL string
			Users   []string
		}{strings.TrimRight(cfg.ChatURL, "/"), users}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(b.Bytes())
	})
	mux.HandleFunc("GET /demo.js", js.serve)
	mux.HandleFunc("GET /demo.css", css.serve)
	mux.HandleFunc("POST /demo/token", d.token)
	return loopbackOnly(mux)
}

// loopbackOnly answers only requests addressed to a loopback host. A page on any other site
// could otherwise point a name of its own at 127.0.0.1 (DNS rebinding) and mint tokens here.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if name, _, err := net.SplitHostPort(host); err == nil {
			host = name
		}
		ip := net.ParseIP(strings.Trim(host, "[]"))
		if !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
			http.Error(w, "the demo host site answers on loopback only (http://localhost or 127.0.0.1)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type demo struct {
	cfg  DemoConfig
	page *template.Template

	mu          sync.Mutex
	provisioned bool
}

// token: POST /demo/token {"user":"alice"} → {"token","expires_at"}. It is what a host site's
// own back end does for its logged-in member.
func (d *demo) token(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User string `json:"user"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1024)).Decode(&req); err != nil {
		http.Error(w, "send {\"user\":\"<id>\"}", http.StatusBadRequest)
		return
	}
	if !slices.ContainsFunc(d.cfg.Users, func(u DemoUser) bool { return u.ID == req.User }) {
		http.Error(w, "not a member of the demo club", http.StatusNotFound)
		return
	}
	seq, err := d.provision(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	var tok struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	body := map[string]any{"user_id": req.User, "ttl_seconds": int(d.cfg.TokenTTL.Seconds())}
	if _, err := d.call(r.Context(), http.MethodPost, "/api/v1/tokens", "", body, &tok); err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if seq != "" {
		// Just provisioned: wait until chatd's reads show the users (read-your-writes), so the
		// chat's first request finds them.
		if _, err := d.call(r.Context(), http.MethodGet, "/api/v1/me?min_seq="+seq, tok.Token, nil, nil); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(tok)
}

// provision creates the demo's users in chatd once (PUT is idempotent, so a retry after a failure
// is harmless). It returns the stream sequence of the last write when it wrote just now.
func (d *demo) provision(ctx context.Context) (seq string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.provisioned {
		return "", nil
	}
	for _, u := range d.cfg.Users {
		if seq, err = d.call(ctx, http.MethodPut, "/api/v1/users/"+u.ID, "", map[string]string{"display_name": u.DisplayName}, nil); err != nil {
			return "", err
		}
	}
	d.provisioned = true
	return seq, nil
}

// call sends one request to chatd, with the service key unless a user token is given, decodes
// the answer into out (when not nil), and returns its X-Chat-Seq.
func (d *demo) call(ctx context.Context, method, path, token string, in, out any) (string, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return "", err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(d.cfg.ChatURL, "/")+path, body)
	if err != nil {
		return "", err
	}
	if token == "" {
		token = d.cfg.ServiceKey
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("chatd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", fmt.Errorf("chatd answered %s to %s %s: %s", resp.Status, method, path, bytes.TrimSpace(msg))
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return "", err
		}
	}
	return resp.Header.Get("X-Chat-Seq"), nil
}
