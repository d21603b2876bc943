// Package web serves the browser side of chatd from files embedded in the binary: the chat page
// that host sites show in an <iframe> (/embed/), the script they include to mount it
// (/embed.js), and a demo host site (see Demo) that shows the integration end to end.
//
// The files themselves are plain HTML, CSS and JavaScript modules: there is no build step.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"
)

//go:embed app embed.js demo
var files embed.FS

// asset is one embedded file, ready to serve with a strong ETag.
type asset struct {
	name string
	body []byte
	etag string
}

func loadAsset(name string) asset {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(err) // the files are embedded: a missing one is a build mistake
	}
	sum := sha256.Sum256(b)
	return asset{name: name, body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

// serve writes the asset; http.ServeContent answers If-None-Match with 304. no-cache makes the
// browser revalidate each time, so a new chatd version is picked up at once.
func (a asset) serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("ETag", a.etag)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	if ct := mime.TypeByExtension(path.Ext(a.name)); ct != "" {
		h.Set("Content-Type", ct)
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

// App serves the chat page for iframes under /embed/ and the host script at /embed.js.
// hostOrigins are the host sites (scheme://host[:port]) allowed to frame the page and to talk to
// it by postMessage; with none, no site can frame it.
func App(hostOrigins []string) http.Handler {
	page := template.Must(template.ParseFS(files, "app/index.html"))
	var index bytes.Buffer
	if err := page.Execute(&index, struct{ HostOrigins string }{strings.Join(hostOrigins, " ")}); err != nil {
		panic(err)
	}
	sum := sha256.Sum256(index.Bytes())
	indexAsset := asset{name: "index.html", body: index.Bytes(), etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	assets := appAssets()
	embedJS := loadAsset("embed.js")
	ancestors := "'none'"
	if len(hostOrigins) > 0 {
		ancestors = strings.Join(hostOrigins, " ")
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /embed.js", func(w http.ResponseWriter, r *http.Request) {
		// Host pages load this script from their own origin: allow that even under COEP.
		w.Header().Set("Cross-Origin-Resource-Policy", "cross-origin")
		embedJS.serve(w, r)
	})
	mux.HandleFunc("GET /embed", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/embed/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /embed/{file...}", func(w http.ResponseWriter, r *http.Request) {
		a, ok := indexAsset, true
		if f := r.PathValue("file"); f != "" && f != "index.html" {
			a, ok = assets[f]
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		setAppHeaders(w.Header(), r.Host, ancestors)
		a.serve(w, r)
	})
	return mux
}

// appAssets are the files of app/ other than the page itself, by name.
func appAssets() map[string]asset {
	out := map[string]asset{}
	err := fs.WalkDir(files, "app", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "app/index.html" {
			return err
		}
		out[strings.TrimPrefix(p, "app/")] = loadAsset(p)
		return nil
	})
	if err != nil {
		panic(err)
	}
	return out
}

// hostPort is a Host header fit to name in a policy: a name, IPv4 or [IPv6] address, and a port.
var hostPort = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$`)

// setAppHeaders sets the security headers of the chat page: it may be framed only by the host
// sites (frame-ancestors; deliberately no X-Frame-Options, which cannot name several origins),
// and it runs only its own scripts and styles and talks only to chatd.
func setAppHeaders(h http.Header, host, ancestors string) {
	connect := "connect-src 'self'"
	if hostPort.MatchString(host) {
		// Older browsers do not count WebSockets to the page's own host as 'self'. The Host
		// header is the client's to choose: only a plain host[:port] goes into the policy.
		connect += " ws://" + host + " wss://" + host
	}
	h.Set("Content-Security-Policy", strings.Join([]string{
		"default-src 'self'",
		"script-src 'self'",
		"style-src 'self'",
		"img-src 'self' data:",
		connect,
		"frame-ancestors " + ancestors,
		"base-uri 'none'",
		"form-action 'none'",
		"object-src 'none'",
	}, "; "))
	h.Set("Referrer-Policy", "no-referrer")
}
