package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/natstest"
	"github.com/chatd-dev/chatd/internal/pgtest"
	"github.com/nats-io/nats-server/v2/server"
)

func TestMain(m *testing.M) {
	// The crash tests run the test binary itself as chatd, so that it can be killed for real.
	if os.Getenv("CHATD_TEST_RUN_MAIN") == "1" {
		main()
		return
	}
	pgtest.Main(m)
}

const (
	testServiceKey = "test-service-key-0123456789abcdef0123"
	testJWTSecret  = "test-jwt-secret-0123456789abcdef012345"
)

// instance is a chatd started by run() on port 0, as main would start it.
type instance struct {
	t      *testing.T
	url    string
	cancel context.CancelFunc
	done   chan error
	out    *lockedBuffer // standard error: the logs
	stdo   *lockedBuffer // standard output
	once   sync.Once
}

// stdout returns what chatd has printed on standard output so far.
func (in *instance) stdout() string { return in.stdo.String() }

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// baseEnv is a configuration for tests: port 0 everywhere, a private data directory.
func baseEnv(t *testing.T) map[string]string {
	return map[string]string{
		"CHAT_ADDR":        "127.0.0.1:0",
		"CHAT_NATS_LISTEN": "127.0.0.1:0",
		"CHAT_DATA_DIR":    t.TempDir(),
		"CHAT_SERVICE_KEY": testServiceKey,
		"CHAT_JWT_SECRET":  testJWTSecret,
		"CHAT_LOG_LEVEL":   "warn",
		"CHAT_DEMO_ADDR":   "off",
	}
}

// dbEnv is baseEnv with a fresh migrated database, plus settings given as key, value pairs.
func dbEnv(t *testing.T, kv ...string) map[string]string {
	env := baseEnv(t)
	env["DATABASE_URL"] = pgtest.NewDB(t)
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// externalNATS points env at a fresh in-process NATS server (as a production chatd uses an
// external one) and returns the server, for tests that stop it or share it between nodes.
func externalNATS(t *testing.T, env map[string]string) *server.Server {
	ns := natstest.RunServer(t, "")
	env["CHAT_NATS_URL"] = ns.ClientURL()
	return ns
}

// start runs chatd with env and waits until it listens. It is stopped in Cleanup (or by stop).
func start(t *testing.T, env map[string]string, args ...string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	in := &instance{t: t, cancel: cancel, done: make(chan error, 1), out: &lockedBuffer{}, stdo: &lockedBuffer{}}
	go func() {
		err := run(ctx, args, func(k string) string { return env[k] }, pw, in.out)
		pw.CloseWithError(fmt.Errorf("chatd exited: %v", err))
		in.done <- err
	}()
	u, err := awaitListening(pr, in.stdo)
	if err != nil {
		t.Fatalf("chatd did not start: %v\n%s", err, in.out)
	}
	in.url = u
	t.Cleanup(in.stop)
	return in
}

// awaitListening reads chatd's standard output until it says where it listens, and keeps
// copying it to copyTo afterwards so that chatd never blocks on a full pipe.
func awaitListening(stdout io.Reader, copyTo *lockedBuffer) (string, error) {
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(copyTo, sc.Text())
			if u, ok := strings.CutPrefix(sc.Text(), "chatd listening on "); ok {
				urls <- u
			}
		}
		close(urls)
	}()
	select {
	case u, ok := <-urls:
		if !ok {
			return "", errors.New("exited before listening")
		}
		return u, nil
	case <-time.After(90 * time.Second):
		return "", errors.New("not listening within 90s")
	}
}

// stop shuts chatd down as SIGTERM would and waits for run to return.
func (in *instance) stop() {
	in.once.Do(func() {
		in.cancel()
		select {
		case err := <-in.done:
			if err != nil {
				in.t.Errorf("chatd exited with %v\n%s", err, in.out)
			}
		case <-time.After(60 * time.Second):
			in.t.Errorf("chatd did not stop within 60s")
		}
	})
}

// response is a decoded API answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (r response) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

func (r response) num(key string) uint64 {
	f, _ := r.body[key].(float64)
	return uint64(f)
}

func (r response) list(key string) []map[string]any {
	items, _ := r.body[key].([]any)
	out := make([]map[string]any, len(items))
	for i, it := range items {
		out[i], _ = it.(map[string]any)
	}
	return out
}

func (r response) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// do sends a request with a Bearer credential (none when empty). body may be a string (sent as
// is), nil, or a value encoded as JSON.
func (in *instance) do(method, path, bearer string, body any) response {
	in.t.Helper()
	r, err := request(method, in.url+path, bearer, body)
	if err != nil {
		in.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// request is do without a test: for goroutines, and for servers that may be gone.
func request(method, url, bearer string, body any) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return response{}, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return response{}, err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r, nil
}

func post(url, bearer, body string) (response, error) { return request("POST", url, bearer, body) }

// must is do that fails the test unless the status is want.
func (in *instance) must(want int, method, path, bearer string, body any) response {
	in.t.Helper()
	r := in.do(method, path, bearer, body)
	if r.status != want {
		var log string
		if r.status >= 500 {
			log = "\nchatd's log:\n" + in.out.String() // the cause of a 5xx is only logged
		}
		in.t.Fatalf("%s %s: status %d, want %d: %s%s", method, path, r.status, want, r.raw, log)
	}
	return r
}

func (in *instance) provision(id, name string) {
	in.t.Helper()
	r := in.do("PUT", "/api/v1/users/"+id, testServiceKey, map[string]string{"display_name": name})
	if r.status != 200 && r.status != 201 {
		in.t.Fatalf("provision %s: %d %s", id, r.status, r.raw)
	}
}

func (in *instance) token(user string) string {
	in.t.Helper()
	return in.must(201, "POST", "/api/v1/tokens", testServiceKey, map[string]any{"user_id": user, "ttl_seconds": 600}).str("token")
}

// aliceAndBob provisions alice and bob, and returns alice's token and their direct
// conversation's id, the starting point of most tests.
func (in *instance) aliceAndBob() (alice, conv string) {
	in.t.Helper()
	in.provision("alice", "Alice")
	in.provision("bob", "Bob")
	alice = in.token("alice")
	d := in.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	return alice, d.str("id")
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reachableTempDir is a temporary directory that the user PostgreSQL runs as can enter (a
// t.TempDir() is 0700 and owned by root when tests run as root).
func reachableTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "chatd-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
