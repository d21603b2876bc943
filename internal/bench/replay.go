package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ReplayConfig is a replay run: generate Events message events in Conversations direct
// conversations, then time chatd replay through the admin API.
type ReplayConfig struct {
	URL, ServiceKey, RunID string
	// NATSURL is the NATS server of chatd's stream: the events are generated straight into it
	// (a million sends over REST would take longer than the replay they measure).
	NATSURL       string
	Events        int
	Conversations int
	BodyBytes     int
	// Progress, when set, hears how far generation and the rebuild are.
	Progress func(stage string, done, total uint64)
}

// ReplayResult is what the rebuild reported.
type ReplayResult struct {
	Generated     int           `json:"generated"`
	GenerateTime  time.Duration `json:"generate_ns"`
	CatchUpTime   time.Duration `json:"catch_up_ns"` // the live projector applying them
	RebuildEvents uint64        `json:"rebuild_events"`
	RebuildTime   time.Duration `json:"rebuild_ns"`
	EventsPerSec  float64       `json:"events_per_second"`
}

// Replay generates the events (chained like chatd's own, so chatd audit verify still passes),
// waits until the live read models hold them, starts a rebuild with POST
// /api/v1/admin/projections/rebuild and follows it on GET /api/v1/admin/projections.
func Replay(ctx context.Context, cfg ReplayConfig) (ReplayResult, error) {
	if cfg.Events < 1 || cfg.Conversations < 1 {
		return ReplayResult{}, errors.New("need at least 1 event and 1 conversation")
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, uint64, uint64) {}
	}
	c := &client{base: strings.TrimRight(cfg.URL, "/"), http: newHTTPClient(8)}
	admin, convs, err := replaySetup(ctx, c, cfg)
	if err != nil {
		return ReplayResult{}, err
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("chatbench replay"))
	if err != nil {
		return ReplayResult{}, fmt.Errorf("connect to chatd's NATS at %s: %w", cfg.NATSURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ReplayResult{}, err
	}
	stream, err := js.Stream(ctx, streams.StreamName)
	if err != nil {
		return ReplayResult{}, fmt.Errorf("stream %s: %w", streams.StreamName, err)
	}

	var res ReplayResult
	start := time.Now()
	if err := generate(ctx, js, stream, cfg, convs, progress); err != nil {
		return res, err
	}
	res.Generated, res.GenerateTime = cfg.Events, time.Since(start)

	// The live read models first: the rebuild catches up to them.
	start = time.Now()
	info, err := stream.Info(ctx)
	if err != nil {
		return res, err
	}
	for {
		st, err := projectionStatus(ctx, c, admin)
		if err != nil {
			return res, err
		}
		progress("projecting", st.Projections[0].Checkpoint, info.State.LastSeq)
		if st.Projections[0].Checkpoint >= info.State.LastSeq {
			break
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.CatchUpTime = time.Since(start)

	if _, err := c.call(ctx, "POST", "/api/v1/admin/projections/rebuild", admin, nil); err != nil {
		return res, err
	}
	for {
		st, err := projectionStatus(ctx, c, admin)
		if err != nil {
			return res, err
		}
		r := st.Rebuild
		progress("rebuilding", r.Done, r.Total)
		switch r.State {
		case "done":
			res.RebuildEvents, res.RebuildTime = r.Result.Events, time.Duration(r.Result.Took)
			res.EventsPerSec = float64(r.Result.Events) / res.RebuildTime.Seconds()
			return res, nil
		case "failed":
			return res, fmt.Errorf("the rebuild failed: %s", r.Error)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return res, err
		}
	}
}

// replaySetup provisions two users per conversation, creates the direct conversations over the
// API, and mints an admin token.
func replaySetup(ctx context.Context, c *client, cfg ReplayConfig) (admin string, convs []string, err error) {
	for i := range cfg.Conversations {
		a, b := fmt.Sprintf("%s-r%d-a", cfg.RunID, i), fmt.Sprintf("%s-r%d-b", cfg.RunID, i)
		for _, u := range []string{a, b} {
			if _, err := c.call(ctx, "PUT", "/api/v1/users/"+u, cfg.ServiceKey, map[string]string{"display_name": u}); err != nil {
				return "", nil, err
			}
		}
		var tok, conv struct{ Token, ID string }
		if err := c.into(ctx, "POST", "/api/v1/tokens", cfg.ServiceKey, map[string]any{"user_id": a, "ttl_seconds": 3600}, &tok); err != nil {
			return "", nil, err
		}
		if err := c.into(ctx, "POST", "/api/v1/conversations", tok.Token, map[string]any{"kind": "direct", "members": []string{b}}, &conv); err != nil {
			return "", nil, err
		}
		convs = append(convs, conv.ID)
	}
	var tok struct{ Token string }
	first := fmt.Sprintf("%s-r0-a", cfg.RunID)
	if err := c.into(ctx, "POST", "/api/v1/tokens", cfg.ServiceKey, map[string]any{"user_id": first, "ttl_seconds": 86400, "admin": true}, &tok); err != nil {
		return "", nil, err
	}
	return tok.Token, convs, nil
}

// generate publishes the message events, round robin over the conversations, each chained to
// its conversation's previous event. Nothing else may write to these conversations meanwhile.
func generate(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, cfg ReplayConfig, convs []string, progress func(string, uint64, uint64)) error {
	layout, err := streams.LayoutOf(stream)
	if err != nil {
		return err
	}
	tips := make([]streams.Tip, len(convs))
	for i, conv := range convs {
		if tips[i], err = streams.ReadTip(ctx, js, conv); err != nil {
			return fmt.Errorf("tip of %s: %w", conv, err)
		}
	}
	var pending []jetstream.PubAckFuture
	body := strings.Repeat("x", max(1, cfg.BodyBytes))
	limits := domain.DefaultLimits
	limits.MaxMessageBytes = max(limits.MaxMessageBytes, len(body))
	for n := range cfg.Events {
		i := n % len(convs)
		sender := fmt.Sprintf("%s-r%d-a", cfg.RunID, i)
		conv := domain.Conversation{ID: convs[i], Kind: domain.KindDirect, Members: []string{sender, fmt.Sprintf("%s-r%d-b", cfg.RunID, i)}}
		e, err := domain.SendMessage(conv, sender, fmt.Sprint("m", n), body, limits, time.Now())
		if err != nil {
			return err
		}
		var m *nats.Msg
		if m, tips[i], err = layout.Chain(&e, tips[i]); err != nil {
			return err
		}
		// A NATS server of its own (fsync, another process) acknowledges more slowly than the
		// embedded one: wait for room rather than give up after the default 200 ms.
		f, err := js.PublishMsgAsync(m, jetstream.WithExpectStream(streams.StreamName), jetstream.WithStallWait(30*time.Second))
		if err != nil {
			return err
		}
		pending = append(pending, f)
		if n%10_000 == 9_999 || n == cfg.Events-1 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			}
			for _, f := range pending {
				select {
				case err := <-f.Err():
					return fmt.Errorf("publish: %w", err) // a hole in a chain: stop
				default:
				}
			}
			pending = pending[:0]
			progress("generating", uint64(n+1), uint64(cfg.Events))
		}
	}
	return nil
}

type adminStatus struct {
	Projections []struct {
		Checkpoint uint64 `json:"checkpoint"`
	} `json:"projections"`
	Rebuild struct {
		State       string `json:"state"`
		Error       string `json:"error"`
		Done, Total uint64
		Result      struct {
			Events uint64 `json:"events"`
			Took   int64  `json:"took"`
		} `json:"result"`
	} `json:"rebuild"`
}

func projectionStatus(ctx context.Context, c *client, admin string) (adminStatus, error) {
	var st adminStatus
	if err := c.into(ctx, "GET", "/api/v1/admin/projections", admin, nil, &st); err != nil {
		return st, err
	}
	if len(st.Projections) == 0 {
		return st, errors.New("chatd reported no projections")
	}
	return st, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
