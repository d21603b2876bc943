package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// IdleConfig is an idle-connections run: open Connections WebSockets (spread over Users users)
// and see what they cost chatd in memory.
type IdleConfig struct {
	URL, ServiceKey, RunID string
	Users, Connections     int
	Settle                 time.Duration // wait after the last connection before measuring
}

// IdleResult is chatd's resident memory before and after, from its /metrics.
type IdleResult struct {
	Connections         int
	RSSBefore, RSSAfter float64 // bytes
	BytesPerConnection  float64
	GoroutinesAfter     float64
}

// Idle runs an idle-connections measurement. The connections stay open until it returns.
func Idle(ctx context.Context, cfg IdleConfig) (IdleResult, error) {
	if cfg.Users < 1 || cfg.Connections < 1 {
		return IdleResult{}, errors.New("need at least 1 user and 1 connection")
	}
	c := &client{base: strings.TrimRight(cfg.URL, "/"), http: newHTTPClient(8)}
	tokens := make([]string, cfg.Users)
	for i := range tokens {
		id := fmt.Sprintf("%s-idle-%d", cfg.RunID, i)
		if _, err := c.call(ctx, "PUT", "/api/v1/users/"+id, cfg.ServiceKey, map[string]string{"display_name": id}); err != nil {
			return IdleResult{}, err
		}
		var tok struct{ Token string }
		if err := c.into(ctx, "POST", "/api/v1/tokens", cfg.ServiceKey, map[string]any{"user_id": id, "ttl_seconds": 86400}, &tok); err != nil {
			return IdleResult{}, err
		}
		tokens[i] = tok.Token
	}
	before, err := c.metrics(ctx)
	if err != nil {
		return IdleResult{}, err
	}
	conns := make([]*websocket.Conn, 0, cfg.Connections)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for i := range cfg.Connections {
		conn, err := c.dial(ctx, tokens[i%len(tokens)])
		if err != nil {
			return IdleResult{}, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, conn)
	}
	select {
	case <-time.After(cfg.Settle):
	case <-ctx.Done():
		return IdleResult{}, ctx.Err()
	}
	after, err := c.metrics(ctx)
	if err != nil {
		return IdleResult{}, err
	}
	r := IdleResult{
		Connections:     len(conns),
		RSSBefore:       before["process_resident_memory_bytes"],
		RSSAfter:        after["process_resident_memory_bytes"],
		GoroutinesAfter: after["go_goroutines"],
	}
	r.BytesPerConnection = (r.RSSAfter - r.RSSBefore) / float64(len(conns))
	return r, nil
}

// metrics reads the unlabelled samples of chatd's /metrics.
func (c *client) metrics(ctx context.Context) (map[string]float64, error) {
	out, err := c.call(ctx, "GET", "/metrics", "", nil)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			m[name] = v
		}
	}
	return m, nil
}

// cpuSeconds reads chatd's process_cpu_seconds_total.
func (c *client) cpuSeconds(ctx context.Context) (float64, error) {
	m, err := c.metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m["process_cpu_seconds_total"]
	if !ok {
		return 0, errors.New("no process_cpu_seconds_total in chatd's /metrics")
	}
	return v, nil
}
