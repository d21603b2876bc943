package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Status is how far one read model is behind the stream.
type Status struct {
	Name string `json:"name"`
	// Checkpoint is the last stream sequence the read model holds.
	Checkpoint    uint64 `json:"checkpoint"`
	StreamLastSeq uint64 `json:"stream_last_seq"`
	LagEvents     uint64 `json:"lag_events"`
	// LagSeconds is how long the oldest event not yet applied has been in the stream.
	LagSeconds   float64 `json:"lag_seconds"`
	ParkedEvents int64   `json:"parked_events"`
	// State is this node's projector: leading, standby or stopped.
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Status reports the live read models' position from PostgreSQL and the stream.
func (p *Projector) Status(ctx context.Context) (Status, error) {
	st := Status{Name: p.name}
	p.mu.Lock()
	st.State = p.state
	if p.lastErr != nil {
		st.Error = p.lastErr.Error()
	}
	p.mu.Unlock()
	if err := p.pool.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM projector_checkpoints WHERE name = $1), 0), (SELECT count(*) FROM parked_events)`,
		p.name).Scan(&st.Checkpoint, &st.ParkedEvents); err != nil {
		return st, readErr(err, "read the checkpoint")
	}
	info, err := p.stream.Info(ctx)
	if err != nil {
		return st, domain.Unavailable("the event stream is unavailable", fmt.Errorf("stream info: %w", err))
	}
	st.StreamLastSeq = info.State.LastSeq
	if st.StreamLastSeq <= st.Checkpoint {
		return st, nil
	}
	st.LagEvents = st.StreamLastSeq - st.Checkpoint
	// The oldest unapplied event is the first one after the checkpoint that still exists.
	oldest, err := p.stream.GetMsg(ctx, st.Checkpoint+1)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return st, nil
	}
	if err != nil {
		return st, domain.Unavailable("the event stream is unavailable", fmt.Errorf("read seq %d: %w", st.Checkpoint+1, err))
	}
	st.LagSeconds = max(0, time.Since(oldest.Time).Seconds())
	return st, nil
}

// RebuildStatus is the state of this node's latest rebuild.
type RebuildStatus struct {
	State      string         `json:"state"` // idle, running, done or failed
	StartedAt  *time.Time     `json:"started_at,omitempty"`
	FinishedAt *time.Time     `json:"finished_at,omitempty"`
	Done       uint64         `json:"done"`  // events applied so far
	Total      uint64         `json:"total"` // events to apply, as far as known
	Result     *RebuildResult `json:"result,omitempty"`
	Error      string         `json:"error,omitempty"`
}

// Rebuilds runs rebuilds for the admin API, one at a time on a node (Rebuild itself keeps it to
// one at a time across nodes), in the background, and remembers how the latest went.
type Rebuilds struct {
	pool   *pgxpool.Pool
	nc     *nats.Conn
	stream jetstream.Stream
	log    *slog.Logger

	mu     sync.Mutex
	status RebuildStatus
	wg     sync.WaitGroup
	cancel context.CancelFunc
	closed bool // set by Close: Start starts nothing after it
}

// NewRebuilds returns a runner of rebuilds of the live read models in pool.
func NewRebuilds(pool *pgxpool.Pool, nc *nats.Conn, stream jetstream.Stream, log *slog.Logger) *Rebuilds {
	return &Rebuilds{pool: pool, nc: nc, stream: stream, log: log, status: RebuildStatus{State: "idle"}}
}

// Errors of Rebuilds.Start.
var (
	ErrRebuildRunning = errors.New("a rebuild is already running on this node")
	ErrRebuildsClosed = errors.New("this node is shutting down")
)

// Start starts a rebuild and returns its status. While one runs it returns that one's status
// and ErrRebuildRunning; after Close, ErrRebuildsClosed.
func (r *Rebuilds) Start() (RebuildStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		// Nothing would wait for a rebuild started now, and it would run on a closing pool.
		return r.status, ErrRebuildsClosed
	}
	if r.status.State == "running" {
		return r.status, ErrRebuildRunning
	}
	now := time.Now().UTC()
	r.status = RebuildStatus{State: "running", StartedAt: &now}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Go(func() {
		defer cancel()
		r.log.Info("rebuild of the read models started")
		res, err := Rebuild(ctx, r.pool, r.nc, r.stream, r.log, RebuildOptions{Progress: func(done, total uint64) {
			r.mu.Lock()
			r.status.Done, r.status.Total = done, total
			r.mu.Unlock()
		}})
		r.mu.Lock()
		defer r.mu.Unlock()
		end := time.Now().UTC()
		r.status.FinishedAt = &end
		if err != nil {
			r.status.State, r.status.Error = "failed", err.Error()
			r.log.Error("rebuild of the read models failed", "err", err)
			return
		}
		r.status.State, r.status.Result = "done", &res
		r.log.Info("read models rebuilt and switched over", "seq", res.Seq, "events", res.Events, "took", res.Took)
	})
	return r.status, nil
}

// Status returns the state of the latest rebuild.
func (r *Rebuilds) Status() RebuildStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Close stops a running rebuild (its scratch schema is dropped) and waits for it. Start starts
// nothing after Close.
func (r *Rebuilds) Close() {
	r.mu.Lock()
	r.closed = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	r.wg.Wait()
}
