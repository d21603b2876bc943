package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// The browser tests drive Debian's headless Chromium against a real chatd and its demo host site,
// on two origins (http://localhost:<demo port> embeds http://127.0.0.1:<chat port>), as a person
// uses the product. They need Chromium: outside CI they are skipped without it, in CI (CI set)
// its absence fails them.

// chromium finds the browser, or ends the test.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHATD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no Chromium on PATH: .ci/run installs Debian's chromium package")
	}
	t.Skip("no Chromium on PATH: install Debian's chromium package to run the browser tests (CI always runs them)")
	return ""
}

// newBrowser starts headless Chromium for the test.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// This machine has no internet: without these Chromium keeps trying to reach Google.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	}
	// Chromium now and then exits at start before it says where it listens (about one start
	// in ten on the development machine, with nothing on its output): such a start is tried again.
	var failures []string
	for range 3 {
		var out bytes.Buffer
		alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(opts, chromedp.CombinedOutput(&out))...)
		browser, cancelBrowser := chromedp.NewContext(alloc)
		err := chromedp.Do(browser)
		if err == nil {
			t.Cleanup(cancelAlloc)
			t.Cleanup(cancelBrowser)
			return browser
		}
		cancelBrowser()
		cancelAlloc()
		failures = append(failures, fmt.Sprintf("%v\n%s", err, out.String()))
		t.Logf("Chromium did not start, trying again: %s", failures[len(failures)-1])
	}
	t.Fatalf("start Chromium, three times:\n%s", strings.Join(failures, "\n"))
	return nil
}

// page is one person's browser window: the host page, and the chat iframe inside it.
type page struct {
	t          *testing.T
	name       string
	host, chat context.Context
}

// openDemo opens the demo host site as user, in a browser context of its own (no shared storage),
// and attaches to the chat iframe, which runs in a process of its own (another site).
func openDemo(t *testing.T, browser context.Context, demoURL, chatURL, user string) *page {
	t.Helper()
	host, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(host, chromedp.Navigate(demoURL+"/?user="+user)); err != nil {
		t.Fatalf("open the demo as %s: %v", user, err)
	}
	return attachChat(t, host, chatURL, user)
}

// attachChat attaches to the chat iframe of the window host, signed in as user.
func attachChat(t *testing.T, host context.Context, chatURL, user string) *page {
	t.Helper()
	p := &page{t: t, name: user, host: host}
	// Targets lists the whole browser's: take the chat iframe of this window's browser context.
	browserContext := chromedp.FromContext(host).BrowserContextID
	var id target.ID
	eventually(t, 20*time.Second, func() error {
		targets, err := chromedp.Targets(host)
		if err != nil {
			return err
		}
		for _, ti := range targets {
			if ti.Type == "iframe" && ti.BrowserContextID == browserContext && strings.HasPrefix(ti.URL, chatURL+"/embed/") {
				id = ti.TargetID
				return nil
			}
		}
		return fmt.Errorf("no chat iframe in %s's window among %d targets", user, len(targets))
	})
	chat, cancel := chromedp.NewContext(host, chromedp.WithTargetID(id))
	t.Cleanup(cancel)
	// Attach with the context itself: the first run binds the target to its context, and a
	// derived context (with a timeout) would take the session down with it.
	if err := chromedp.Do(chat); err != nil {
		t.Fatalf("attach to the chat iframe: %v", err)
	}
	p.chat = chat
	p.waitFor(`#connection-state[data-state="online"]`)
	p.waitFor(fmt.Sprintf(`#me[data-user-id="%s"]`, user))
	return p
}

// must runs steps in the chat iframe, bounded.
func (p *page) must(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.chat, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.screenshot("failed-" + p.name)
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

func (p *page) waitFor(sel string) {
	p.t.Helper()
	p.must(chromedp.WaitVisible(chromedp.CSS(sel)))
}

// eval runs js in the chat iframe for its effect.
func (p *page) eval(js string) {
	p.t.Helper()
	eval[any](p, "(() => { "+js+"; return null; })()")
}

// eval evaluates js in the chat iframe.
func eval[T any](p *page, js string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.chat, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
	return v
}

// until waits until js is true in the chat iframe.
func (p *page) until(what, js string) {
	p.t.Helper()
	p.poll(p.chat, "chat", what, js)
}

// hostUntil waits until js is true in the host page.
func (p *page) hostUntil(what, js string) {
	p.t.Helper()
	p.poll(p.host, "host page", what, js)
}

func (p *page) poll(in context.Context, where, what, js string) {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(in, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			p.screenshot("failed-" + p.name)
			p.t.Fatalf("%s's %s: never %s (%v)", p.name, where, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send types a message into the composer and sends it with Enter.
func (p *page) send(text string) {
	p.t.Helper()
	p.must(chromedp.SendKeys(chromedp.CSS("#message-input"), text), chromedp.SendKeys(chromedp.CSS("#message-input"), "\r"))
}

// open opens a conversation from the list.
func (p *page) open(conv string) {
	p.t.Helper()
	item := chromedp.CSS(fmt.Sprintf(`#conversation-list [data-conversation-id="%s"]`, conv))
	// The list is drawn again whenever a push changes it, so the node a click resolved can be
	// gone by the time it is clicked ("Could not find node with given id"): a person would
	// click the new one, so resolve it again.
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(p.chat, 20*time.Second)
		err := chromedp.Do(ctx, chromedp.Click(item))
		cancel()
		if err == nil {
			break
		}
		if attempt == 5 || !strings.Contains(err.Error(), "Could not find node with given id") {
			p.screenshot("failed-" + p.name)
			p.t.Fatalf("%s: open %s: %v", p.name, conv, err)
		}
	}
	p.waitFor(fmt.Sprintf(`#conversation[data-conversation-id="%s"]`, conv))
}

// screenshot saves the whole host page (iframe included) as <dir>/<name>.png.
func (p *page) screenshot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.host, 20*time.Second)
	defer cancel()
	// A window in the background does not repaint its cross-site iframe: bring it forward first.
	if _, err := chromedp.Call(ctx, cdppage.BringToFront, cdp.Empty{}); err != nil {
		p.t.Fatalf("bring %s forward: %v", p.name, err)
	}
	time.Sleep(300 * time.Millisecond) // a few frames for the iframe to repaint
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(screenshotDir(p.t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
}

// screenshotDir is where the browser tests leave their screenshots for people to look at:
// CHATD_SCREENSHOTS, else test-output/screenshots at the top of the repository.
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("CHATD_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-output", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// freePort returns a loopback port nobody listens on now, so chatd can be restarted on it.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort().String()
}

// messageCount counts the messages shown, and the distinct ids among them.
const messageCount = `(() => { const ms = [...document.querySelectorAll('#message-list .message')]; return ms.length; })()`

func TestBrowserChat(t *testing.T) {
	browser := newBrowser(t)
	chatAddr, demoAddr := freePort(t), freePort(t)
	env := dbEnv(t, "CHAT_ADDR", chatAddr, "CHAT_DEMO_ADDR", demoAddr)
	externalNATS(t, env) // survives chatd's restart below
	c := start(t, env)
	chatURL := "http://" + chatAddr
	demoURL := "http://localhost:" + demoAddr[strings.LastIndex(demoAddr, ":")+1:]

	// History to page through: bob wrote 40 messages to alice before she opened the chat.
	aliceTok, bobTok := demoToken(t, c, "alice"), demoToken(t, c, "bob")
	conv := c.must(201, "POST", "/api/v1/conversations", bobTok, map[string]any{"kind": "direct", "members": []string{"alice"}}).str("id")
	for i := 1; i <= 40; i++ {
		c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", bobTok, map[string]string{"client_msg_id": fmt.Sprint("h", i), "body": fmt.Sprint("history ", i)})
	}

	alice := openDemo(t, browser, demoURL, chatURL, "alice")
	alice.until("the unread badge", fmt.Sprintf(`document.querySelector('#conversation-list [data-conversation-id="%s"] .unread')?.textContent.trim() === "40"`, conv))
	// The iframe tells the host page its unread total, for the host's own badge.
	alice.hostUntil("the host's badge", `document.querySelector('#chat-badge').dataset.unread === "40"`)
	alice.screenshot("01-conversation-list")

	t.Run("history pages", func(t *testing.T) {
		alice.open(conv)
		alice.until("15 messages", messageCount+` === 15`)
		alice.until("the newest last", `[...document.querySelectorAll('#message-list .message .body')].at(-1).textContent === "history 40"`)
		alice.must(chromedp.Click(chromedp.CSS("#load-older")))
		alice.until("30 messages", messageCount+` === 30`)
		alice.must(chromedp.Click(chromedp.CSS("#load-older")))
		alice.until("all 40 messages, and no more to load", messageCount+` === 40 && document.querySelector('#load-older').dataset.exhausted === "true"`)
		alice.until("the first message first", `document.querySelector('#message-list .message .body').textContent === "history 1"`)
	})

	bob := openDemo(t, browser, demoURL, chatURL, "bob")
	bob.open(conv)

	t.Run("two people chat", func(t *testing.T) {
		alice.send("hello bob, see https://example.org/trip?day=sat")
		bob.until("alice's message", `[...document.querySelectorAll('#message-list .message[data-sender-id="alice"] .body')].some(b => b.textContent.startsWith("hello bob"))`)
		alice.until("her message sent", `[...document.querySelectorAll('#message-list .message[data-sender-id="alice"]')].every(m => m.dataset.state === "sent" && m.dataset.messageId !== "")`)
		// Links are clickable, safely.
		bob.until("a safe link", `(() => { const a = document.querySelector('#message-list .message[data-sender-id="alice"] .body a'); return !!a && a.href === "https://example.org/trip?day=sat" && a.rel.includes("noopener") && a.target === "_blank"; })()`)
		// Bob reads as the message arrives: his read marker moves, no unread badge stays.
		bob.until("no unread badge", fmt.Sprintf(`!document.querySelector('#conversation-list [data-conversation-id="%s"] .unread')`, conv))
		bob.send("hi alice!")
		alice.until("bob's answer", `[...document.querySelectorAll('#message-list .message .body')].some(b => b.textContent === "hi alice!")`)
		alice.screenshot("02-alice-chatting")
		bob.screenshot("03-bob-chatting")
	})

	t.Run("edit, delete and typing", func(t *testing.T) {
		alice.send("see you at 8")
		mine := `[...document.querySelectorAll('#message-list .message[data-sender-id="alice"][data-state="sent"]')].at(-1)`
		alice.until("the message sent", mine+`?.querySelector('.body').textContent === "see you at 8"`)
		alice.eval(mine + `.querySelector('.edit').click()`)
		alice.must(chromedp.SetValue(chromedp.CSS("#message-list .edit-input"), "see you at 9"), chromedp.Click(chromedp.CSS("#message-list .edit-save")))
		bob.until("the edit", `[...document.querySelectorAll('#message-list .message')].some(m => m.querySelector('.body').textContent === "see you at 9" && m.querySelector('.edited'))`)
		// Alice's own list shows the edit once her client has it back (until then the message may
		// still be in its edit form, without a body).
		edited := `[...document.querySelectorAll('#message-list .message')].find(m => m.querySelector('.body')?.textContent === "see you at 9")`
		alice.until("her edit", edited+` !== undefined`)
		alice.eval(edited + `.querySelector('.delete').click()`)
		bob.until("the tombstone", `[...document.querySelectorAll('#message-list .message.deleted')].some(m => m.querySelector('.body').textContent === "message deleted") && ![...document.querySelectorAll('#message-list .body')].some(b => b.textContent.startsWith("see you at"))`)

		// Bob keeps typing (his client sends a typing frame at most every 3 s) until alice sees it.
		typing := false
		for range 20 {
			bob.must(chromedp.SendKeys(chromedp.CSS("#message-input"), "x"))
			if typing = eval[bool](alice, `document.querySelector('#typing').textContent.includes("is typing")`); typing {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if !typing {
			t.Fatal("alice never saw bob typing")
		}
		bob.eval(`document.querySelector('#message-input').value = ''`)
	})

	t.Run("directory and groups", func(t *testing.T) {
		alice.must(chromedp.Click(chromedp.CSS("#new-direct")), chromedp.SendKeys(chromedp.CSS("#directory-search"), "dave"))
		alice.must(chromedp.Click(chromedp.CSS(`#directory-results [data-user-id="dave"]`)))
		alice.until("the chat with dave open", `document.querySelector('#conversation-title').textContent === "Dave Fischer"`)

		alice.must(chromedp.Click(chromedp.CSS("#new-group")), chromedp.SendKeys(chromedp.CSS("#group-title"), "Ridge loop"))
		for _, u := range []string{"bob", "carol"} {
			alice.must(chromedp.Click(chromedp.CSS(fmt.Sprintf(`#group-members input[type=checkbox][value="%s"]`, u))))
		}
		alice.must(chromedp.Click(chromedp.CSS("#group-create")))
		alice.until("the group open", `document.querySelector('#conversation-title').textContent === "Ridge loop"`)
		alice.send("who drives?")
		bob.until("the group in bob's list", `[...document.querySelectorAll('#conversation-list .title')].some(t => t.textContent === "Ridge loop")`)
		alice.until("three members", `document.querySelectorAll('#members [data-member-id]').length === 3`)
		alice.screenshot("04-group")
		alice.open(conv) // back to the direct conversation for the next steps
	})

	t.Run("XSS payloads render as text", func(t *testing.T) {
		payloads := []string{`<img src=x onerror="window.__xss=1">`, `<script>window.__xss=2</script>`, `javascript:window.__xss=3`}
		for _, p := range payloads {
			alice.send(p)
		}
		for _, p := range payloads {
			bob.until("the payload as text: "+p, fmt.Sprintf(`[...document.querySelectorAll('#message-list .message .body')].some(b => b.textContent === %q)`, p))
		}
		out := eval[struct {
			XSS      any `json:"xss"`
			Elements int `json:"elements"`
		}](bob, `({xss: window.__xss ?? null, elements: document.querySelectorAll('#message-list .body img, #message-list .body script, #message-list .body a[href^="javascript"]').length})`)
		if out.XSS != nil || out.Elements != 0 {
			t.Fatalf("a payload ran or made elements: %+v", out)
		}
		bob.screenshot("05-xss-as-text")
	})

	t.Run("a phone-sized frame shows one pane at a time", func(t *testing.T) {
		host, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
		defer cancel()
		if err := chromedp.Do(host, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.Navigate(demoURL+"/?user=carol&with=alice")); err != nil {
			t.Fatal(err)
		}
		carol := attachChat(t, host, chatURL, "carol")
		carol.waitFor(`#app[data-view="conversation"] #back`)
		carol.send("hello from a phone")
		alice.until("carol's message in a new conversation", `[...document.querySelectorAll('#conversation-list .preview')].some(p => p.textContent.includes("hello from a phone"))`)
		carol.screenshot("08-phone")
		carol.must(chromedp.Click(chromedp.CSS("#back")))
		carol.waitFor(`#app[data-view="list"] #conversation-list`)
	})

	outer := t // the restarted chatd lives as long as the whole test
	t.Run("reconnect after a server restart resumes with nothing lost", func(t *testing.T) {
		c.stop()
		bob.until("the connection lost", `["reconnecting", "offline", "connecting"].includes(document.querySelector('#connection-state').dataset.state)`)
		// A message written while the server is down waits, then goes out once.
		bob.send("written while down")
		bob.until("the message held", `[...document.querySelectorAll('#message-list .message')].some(m => m.querySelector('.body').textContent === "written while down" && m.dataset.state !== "sent")`)
		bob.screenshot("06-reconnecting")
		c = start(outer, env)
		// Sent at once, before bob's backoff lets him reconnect: they reach him by resume.
		for i := 1; i <= 3; i++ {
			c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", aliceTok, map[string]string{"client_msg_id": fmt.Sprint("r", i), "body": fmt.Sprint("after restart ", i)})
		}
		bob.waitFor(`#connection-state[data-state="online"]`)
		alice.until("bob's held message, once", `[...document.querySelectorAll('#message-list .message .body')].filter(b => b.textContent === "written while down").length === 1`)
		bob.until("his held message sent", `[...document.querySelectorAll('#message-list .message')].some(m => m.querySelector('.body').textContent === "written while down" && m.dataset.state === "sent")`)
		bob.until("the three messages", `[1,2,3].every(i => [...document.querySelectorAll('#message-list .message .body')].some(b => b.textContent === "after restart " + i))`)
		// Nothing twice: every message id shows once.
		dup := eval[int](bob, `(() => { const ids = [...document.querySelectorAll('#message-list .message')].map(m => m.dataset.messageId); return ids.length - new Set(ids).size; })()`)
		if dup != 0 {
			t.Fatalf("%d messages shown twice after the restart", dup)
		}
		// And the sender side still works: alice's browser sends through the new server.
		alice.waitFor(`#connection-state[data-state="online"]`)
		alice.send("still here")
		bob.until("alice's message after the restart", `[...document.querySelectorAll('#message-list .message .body')].some(b => b.textContent === "still here")`)
		bob.screenshot("07-after-restart")
	})
}

// A site that is not a configured host cannot frame the chat: the browser refuses to load the chat
// page in its frame (CSP frame-ancestors). The same page on a configured host's origin can.
func TestBrowserFrameAncestors(t *testing.T) {
	browser := newBrowser(t)
	var chatURL string
	framer := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><title>a host?</title><iframe src="%s/embed/" width="600" height="400"></iframe>`, chatURL)
	}
	host, stranger := httptest.NewServer(http.HandlerFunc(framer)), httptest.NewServer(http.HandlerFunc(framer))
	t.Cleanup(host.Close)
	t.Cleanup(stranger.Close)
	// Their URLs are http://127.0.0.1:<port>; opened as localhost they are sites of their own.
	asLocalhost := func(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }
	c := start(t, dbEnv(t, "CHAT_ALLOWED_ORIGINS", asLocalhost(host.URL)))
	chatURL = c.url

	// framed reports what the chat iframe shows when the page at url frames it.
	framed := func(url string) (loaded bool) {
		tab, cancel := chromedp.NewContext(browser)
		defer cancel()
		if err := chromedp.Do(tab, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		var frame target.ID
		eventually(t, 20*time.Second, func() error {
			targets, err := chromedp.Targets(tab)
			for _, ti := range targets {
				if ti.Type == "iframe" && strings.HasPrefix(ti.URL, chatURL) {
					frame = ti.TargetID
					return nil
				}
			}
			return fmt.Errorf("no chat iframe yet (%v)", err)
		})
		frameCtx, cancel := chromedp.NewContext(tab, chromedp.WithTargetID(frame))
		defer cancel()
		if err := chromedp.Do(frameCtx); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(frameCtx, 20*time.Second)
		defer cancel()
		// Wait until the frame's document has loaded, whatever it is, then look at it.
		got, err := chromedp.Run(ctx, chromedp.Poll[string](`document.readyState === "complete" && (location.href + " " + !!document.querySelector('#app'))`, chromedp.WithPollingInterval(50*time.Millisecond)))
		if err != nil {
			t.Fatalf("the frame never finished loading: %v", err)
		}
		t.Logf("%s framed: %s", url, got)
		return strings.HasPrefix(got, chatURL+"/embed/") && strings.HasSuffix(got, " true")
	}
	if !framed(asLocalhost(host.URL)) {
		t.Fatal("a configured host cannot frame the chat")
	}
	if framed(asLocalhost(stranger.URL)) {
		t.Fatal("a site that is not a configured host framed the chat")
	}
}

// A host site hands the chat a fresh token before the old one expires: the iframe warns the host
// (chatd:token-expiring), embed.js calls getToken and passes the new token on, and the chat goes
// on working. The host page here is a minimal one, as a host site would write it.
// tokenHost starts chatd and a host site whose back end mints alice's tokens with the given
// lifetime, opens the host page in a browser tab, and returns chatd, the tab and the count of
// tokens minted. The page counts renewals (window.renewed) and expiry warnings (window.warned).
func tokenHost(t *testing.T, ttl time.Duration) (*instance, context.Context, *atomic.Int32) {
	browser := newBrowser(t)
	var c *instance
	minted := &atomic.Int32{}
	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token": // the host's own back end
			r := c.do("POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": "alice", "ttl_seconds": int(ttl.Seconds())})
			if r.status != http.StatusCreated {
				http.Error(w, string(r.raw), http.StatusBadGateway)
				return
			}
			minted.Add(1)
			fmt.Fprint(w, r.str("token"))
		default:
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<!doctype html><title>host</title><div id="chat" style="height:600px"></div>
<script src="%s/embed.js"></script>
<script>
const getToken = () => fetch("/token").then(r => r.text());
window.renewed = 0; window.warned = 0;
getToken().then(token => ChatD.mount("#chat", {
  token,
  getToken: () => getToken().then(t => { window.renewed++; return t; }),
  onTokenExpiring: () => { window.warned++; },
  onUnread: (n) => { window.unread = n; },
}));
</script>`, c.url)
		}
	}))
	t.Cleanup(host.Close)
	hostURL := strings.Replace(host.URL, "127.0.0.1", "localhost", 1)
	c = start(t, dbEnv(t, "CHAT_ALLOWED_ORIGINS", hostURL, "CHAT_TOKEN_MAX_TTL", (ttl+time.Hour).String()))
	c.provision("alice", "Alice")
	c.provision("bob", "Bob")

	tab, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(tab, chromedp.Navigate(hostURL)); err != nil {
		t.Fatal(err)
	}
	return c, tab, minted
}

// A browser fires a timer set further than 2^31-1 ms ahead (about 24.8 days) at once: a token
// that lives longer must not be warned about, and renewed, over and over.
func TestBrowserLongLivedToken(t *testing.T) {
	c, tab, minted := tokenHost(t, 30*24*time.Hour)
	alice := attachChat(t, tab, c.url, "alice")
	alice.until("the chat is up", `!!document.querySelector('#conversation-list')`)
	time.Sleep(time.Second) // a storm would have renewed many times by now
	warned, err := chromedp.Run(tab, chromedp.Evaluate[int](`window.warned`))
	if err != nil {
		t.Fatal(err)
	}
	if minted.Load() != 1 || warned != 0 {
		t.Fatalf("a 30-day token: %d tokens minted, %d expiry warnings; want 1 and 0", minted.Load(), warned)
	}
}

func TestBrowserTokenRenewal(t *testing.T) {
	// Tokens that expire in 61 s, so the warning is due at once.
	c, tab, minted := tokenHost(t, 61*time.Second)
	alice := attachChat(t, tab, c.url, "alice")
	alice.hostUntil("a renewed token", `window.warned > 0 && window.renewed > 0`)
	if minted.Load() < 2 {
		t.Fatalf("the host minted %d tokens, want the first and a renewal", minted.Load())
	}
	// The chat works on with the renewed token: a REST call and the push channel.
	bob := c.token("bob")
	conv := c.must(201, "POST", "/api/v1/conversations", bob, map[string]any{"kind": "direct", "members": []string{"alice"}}).str("id")
	c.must(201, "POST", "/api/v1/conversations/"+conv+"/messages", bob, map[string]string{"client_msg_id": "1", "body": "still signed in?"})
	alice.until("bob's conversation pushed", fmt.Sprintf(`!!document.querySelector('#conversation-list [data-conversation-id="%s"]')`, conv))
	alice.open(conv)
	alice.send("yes")
	alice.until("her message sent", `[...document.querySelectorAll('#message-list .message[data-sender-id="alice"]')].some(m => m.dataset.state === "sent")`)
	alice.hostUntil("the unread total reported", `window.unread === 0`)
}
