// Package bench is chatbench's engine: it drives a running chatd through its public API only,
// as real clients do (service API to set up, REST to send, WebSockets to receive), and measures
// what a user would feel: POST latency, send→push latency at every recipient, and how long a
// message takes to be visible to REST reads.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Config is one run.
type Config struct {
	URL        string         // chatd base URL, e.g. http://127.0.0.1:8080
	ServiceKey string         // the host site's key
	Users      int            // users, each holding one WebSocket
	Directs    int            // direct conversations
	Groups     int            // groups
	GroupSize  int            // members per group
	Senders    int            // concurrent senders: the loop (closed loop), or the most requests in flight (open loop)
	Rate       float64        // messages per second in total (open loop); 0 for closed loop
	Messages   int            // messages to send (0: until Duration)
	Duration   time.Duration  // how long to send when Messages is 0
	BodyBytes  int            // message body size
	PushWait   time.Duration  // how long after the last send a missing push counts as lost
	SampleRead int            // every Nth message is polled over REST for visibility (0: none)
	RunID      string         // prefix of user ids, so runs do not collide
	Progress   func(sent int) // called as messages are acknowledged (may be nil)
}

// Result is what a run measured.
type Result struct {
	Sent, Acked, Errors     int
	ExpectedPushes, Pushes  int
	LostPushes, Duplicates  int
	Elapsed                 time.Duration
	Throughput              float64 // acknowledged messages per second
	POST, Push, ReadVisible Latency
	// ChatdCPU is chatd's CPU time per acknowledged message: its process_cpu_seconds_total, read
	// from /metrics before the first send and once every push has arrived. It counts the whole
	// process (HTTP, the embedded NATS server, the projector, WebSockets), not PostgreSQL, and is
	// zero when /metrics cannot be read. It varies less between runs than throughput does on a
	// machine whose speed drifts, so it is what to compare builds by.
	ChatdCPU time.Duration
	// MachineCPU is the machine's busy CPU time per acknowledged message over the same span
	// (every core, from /proc/stat: chatd, PostgreSQL, this tool and anything else running),
	// and BenchCPU this tool's own. On a machine that runs only these, MachineCPU is what a
	// message costs in all, and 1 s times the cores over it bounds messages per second.
	MachineCPU, BenchCPU time.Duration
	FirstError           string `json:",omitempty"`
}

// Latency summarises a sample of durations.
type Latency struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

func summarise(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Latency{N: len(d), P50: at(.50), P90: at(.90), P99: at(.99), Max: d[len(d)-1]}
}

type conversation struct {
	id      string
	members []string
}

type sent struct {
	at         time.Time
	recipients int
}

// Run sets up users and conversations, opens every user's WebSocket, sends, waits for the
// pushes, and reports.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Users < 2 || cfg.Senders < 1 || (cfg.Directs < 1 && cfg.Groups < 1) {
		return Result{}, errors.New("need at least 2 users, 1 sender and 1 conversation")
	}
	c := &client{base: strings.TrimRight(cfg.URL, "/"), http: newHTTPClient(cfg.Senders + 8)}
	users := make([]string, cfg.Users)
	tokens := map[string]string{}
	for i := range users {
		users[i] = fmt.Sprintf("%s-%d", cfg.RunID, i)
		if _, err := c.call(ctx, "PUT", "/api/v1/users/"+users[i], cfg.ServiceKey, map[string]string{"display_name": "Bench " + users[i]}); err != nil {
			return Result{}, err
		}
		var tok struct{ Token string }
		if err := c.into(ctx, "POST", "/api/v1/tokens", cfg.ServiceKey, map[string]any{"user_id": users[i], "ttl_seconds": 86400}, &tok); err != nil {
			return Result{}, err
		}
		tokens[users[i]] = tok.Token
	}
	var convs []conversation
	for d := range cfg.Directs {
		a, b := users[d%cfg.Users], users[(d+1+d/cfg.Users)%cfg.Users]
		if a == b {
			continue
		}
		var conv struct{ ID string }
		if err := c.into(ctx, "POST", "/api/v1/conversations", tokens[a], map[string]any{"kind": "direct", "members": []string{b}}, &conv); err != nil {
			return Result{}, err
		}
		convs = append(convs, conversation{conv.ID, []string{a, b}})
	}
	for g := range cfg.Groups {
		var members []string
		for k := range max(cfg.GroupSize, 2) {
			members = append(members, users[(g*cfg.GroupSize+k)%cfg.Users])
		}
		var conv struct{ ID string }
		if err := c.into(ctx, "POST", "/api/v1/conversations", tokens[members[0]], map[string]any{"kind": "group", "title": fmt.Sprint("bench ", g), "members": members[1:]}, &conv); err != nil {
			return Result{}, err
		}
		convs = append(convs, conversation{conv.ID, slices.Compact(slices.Sorted(slices.Values(members)))})
	}

	// Every user's WebSocket: record the arrival of each message frame, once per recipient.
	var (
		mu        sync.Mutex
		sends     = map[string]sent{} // client_msg_id -> when and to how many
		arrivals  = map[string]int{}  // client_msg_id -> pushes received
		pushLat   []time.Duration
		dups      int
		delivered atomic.Int64
	)
	var readers sync.WaitGroup
	var conns []*websocket.Conn
	closeAll := func() {
		for _, conn := range conns {
			conn.Close()
		}
		readers.Wait()
	}
	defer closeAll()
	for _, u := range users {
		conn, err := c.dial(ctx, tokens[u])
		if err != nil {
			return Result{}, fmt.Errorf("websocket for %s: %w", u, err)
		}
		conns = append(conns, conn)
		readers.Go(func() {
			seen := map[string]bool{}
			for {
				var f struct {
					Type string
					Data struct {
						ClientMsgID string `json:"client_msg_id"`
					}
				}
				if err := conn.ReadJSON(&f); err != nil {
					return
				}
				if f.Type != "message.created" {
					continue
				}
				now := time.Now()
				id := f.Data.ClientMsgID
				mu.Lock()
				if seen[id] {
					dups++
				} else {
					seen[id] = true
					arrivals[id]++
					if s, ok := sends[id]; ok {
						pushLat = append(pushLat, now.Sub(s.at))
					}
					delivered.Add(1)
				}
				mu.Unlock()
			}
		})
	}

	// Send: closed loop with Senders workers, or open loop at Rate.
	body := strings.Repeat("x", max(cfg.BodyBytes, 1))
	var (
		res      Result
		postLat  []time.Duration
		readLat  []time.Duration
		next     atomic.Int64
		firstErr atomic.Value
		errs     atomic.Int64
		acked    atomic.Int64
		samples  sync.WaitGroup
	)
	// Open loop: message n is due at start + n/Rate, whenever the sender that takes it gets free,
	// and its latencies count from then. A ticker instead drops ticks while the senders are busy,
	// so a saturated chatd would get fewer messages and report the latency of only those
	// ("coordinated omission").
	cpuBefore, cpuErr := c.cpuSeconds(ctx)
	machineBefore, machineErr := MachineCPU()
	selfBefore := ProcessCPU()
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var workers sync.WaitGroup
	for range cfg.Senders {
		workers.Go(func() {
			for ctx.Err() == nil {
				n := int(next.Add(1)) - 1
				at := time.Now()
				if cfg.Rate > 0 {
					at = start.Add(time.Duration(float64(n) * float64(time.Second) / cfg.Rate))
				}
				if (cfg.Messages > 0 && n >= cfg.Messages) || (cfg.Messages == 0 && at.After(deadline)) {
					return
				}
				if wait := time.Until(at); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				}
				conv := convs[n%len(convs)]
				sender := conv.members[n%len(conv.members)]
				id := fmt.Sprintf("%s-m%d", cfg.RunID, n)
				mu.Lock()
				sends[id] = sent{at: at, recipients: len(conv.members)}
				mu.Unlock()
				var m struct{ ID string }
				err := c.into(ctx, "POST", "/api/v1/conversations/"+conv.id+"/messages", tokens[sender], map[string]string{"client_msg_id": id, "body": body}, &m)
				took := time.Since(at)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					mu.Lock()
					delete(sends, id)
					mu.Unlock()
					continue
				}
				done := int(acked.Add(1))
				mu.Lock()
				postLat = append(postLat, took)
				mu.Unlock()
				if cfg.Progress != nil {
					cfg.Progress(done)
				}
				if cfg.SampleRead > 0 && n%cfg.SampleRead == 0 {
					samples.Go(func() {
						if d, ok := c.visible(ctx, tokens[sender], m.ID, at, cfg.PushWait); ok {
							mu.Lock()
							readLat = append(readLat, d)
							mu.Unlock()
						}
					})
				}
			}
		})
	}
	workers.Wait()
	res.Elapsed = time.Since(start)
	samples.Wait()

	// Wait for the pushes still in flight.
	mu.Lock()
	expected := 0
	for _, s := range sends {
		expected += s.recipients
	}
	mu.Unlock()
	waitUntil := time.Now().Add(cfg.PushWait)
	for int(delivered.Load()) < expected && time.Now().Before(waitUntil) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if n := acked.Load(); n > 0 {
		if cpuAfter, err := c.cpuSeconds(ctx); err == nil && cpuErr == nil {
			res.ChatdCPU = time.Duration((cpuAfter - cpuBefore) / float64(n) * float64(time.Second))
		}
		if machineAfter, err := MachineCPU(); err == nil && machineErr == nil {
			res.MachineCPU = (machineAfter - machineBefore) / time.Duration(n)
		}
		res.BenchCPU = (ProcessCPU() - selfBefore) / time.Duration(n)
	}
	closeAll()
	conns = nil

	mu.Lock()
	defer mu.Unlock()
	res.Acked, res.Errors = int(acked.Load()), int(errs.Load())
	res.Sent = res.Acked + res.Errors
	res.ExpectedPushes, res.Pushes, res.Duplicates = expected, int(delivered.Load()), dups
	res.LostPushes = max(expected-res.Pushes, 0)
	res.Throughput = float64(res.Acked) / res.Elapsed.Seconds()
	res.POST, res.Push, res.ReadVisible = summarise(postLat), summarise(pushLat), summarise(readLat)
	if v, ok := firstErr.Load().(string); ok {
		res.FirstError = v
	}
	return res, nil
}

func newHTTPClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
}

// client speaks chatd's API.
type client struct {
	base string
	http *http.Client
}

func (c *client) call(ctx context.Context, method, path, bearer string, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return out, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(out))
	}
	return out, nil
}

func (c *client) into(ctx context.Context, method, path, bearer string, body, v any) error {
	out, err := c.call(ctx, method, path, bearer, body)
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

func (c *client) dial(ctx context.Context, token string) (*websocket.Conn, error) {
	u := strings.Replace(c.base, "http", "ws", 1) + "/api/v1/ws?token=" + url.QueryEscape(token)
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		return nil, err
	}
	// Wait for ready, so that no push of the run is missed.
	for {
		var f struct{ Type string }
		if err := conn.ReadJSON(&f); err != nil {
			conn.Close()
			return nil, err
		}
		if f.Type == "ready" {
			return conn, nil
		}
	}
}

// visible polls a message over REST until it is there, and returns how long after the send.
func (c *client) visible(ctx context.Context, token, id string, sentAt time.Time, within time.Duration) (time.Duration, bool) {
	stop := time.Now().Add(within)
	for time.Now().Before(stop) && ctx.Err() == nil {
		if _, err := c.call(ctx, "GET", "/api/v1/messages/"+id, token, nil); err == nil {
			return time.Since(sentAt), true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, false
}
