package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string, header ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://chat.example"+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestAppPage(t *testing.T) {
	h := App([]string{"https://club.example", "http://localhost:8081"})
	resp := get(t, h, "/embed/")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /embed/: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(string(body), `content="https://club.example http://localhost:8081"`) {
		t.Errorf("the page does not name the host origins:\n%s", body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"frame-ancestors https://club.example http://localhost:8081;", "connect-src 'self' ws://chat.example wss://chat.example;", "script-src 'self';"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	// Revalidation: the same ETag answers 304.
	if r := get(t, h, "/embed/", "If-None-Match", resp.Header.Get("ETag")); r.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation: %s, want 304", r.Status)
	}
}

// The Host header is the client's: anything but a plain host[:port] stays out of the policy.
func TestAppPolicyTakesOnlyAPlainHost(t *testing.T) {
	for host, want := range map[string]string{
		"chat.example:8443": "connect-src 'self' ws://chat.example:8443 wss://chat.example:8443;",
		"[::1]:8080":        "connect-src 'self' ws://[::1]:8080 wss://[::1]:8080;",
		"evil;script-src *": "connect-src 'self';",
		"evil x":            "connect-src 'self';",
	} {
		req := httptest.NewRequest(http.MethodGet, "/embed/", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		App(nil).ServeHTTP(rec, req)
		if csp := rec.Result().Header.Get("Content-Security-Policy"); !strings.Contains(csp, want) {
			t.Errorf("Host %q: CSP %q lacks %q", host, csp, want)
		}
	}
}

func TestAppNobodyMayFrameWithoutHosts(t *testing.T) {
	csp := get(t, App(nil), "/embed/").Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q: with no host origins no one may frame the page", csp)
	}
}

func TestAppAssets(t *testing.T) {
	h := App([]string{"https://club.example"})
	for path, ctype := range map[string]string{"/embed/app.js": "text/javascript", "/embed/app.css": "text/css", "/embed.js": "text/javascript"} {
		resp := get(t, h, path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %s %q", path, resp.Status, resp.Header.Get("Content-Type"))
		}
	}
	if r := get(t, h, "/embed.js"); r.Header.Get("Cross-Origin-Resource-Policy") != "cross-origin" {
		t.Error("embed.js must be loadable by other origins")
	}
	for _, path := range []string{"/embed/nope.js", "/embed/../web.go", "/embed/index.html/x"} {
		if r := get(t, h, path); r.StatusCode == http.StatusOK {
			t.Errorf("GET %s: %s, want no file", path, r.Status)
		}
	}
}
