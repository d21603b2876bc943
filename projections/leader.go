package projections

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// One projector leads; the others stand by. Every chatd node runs a projector, but only the one
// holding a PostgreSQL advisory lock applies events and publishes pushes, so pushes leave in
// stream order from one place (several writers would interleave batches across nodes) and no
// work is done twice. Standbys follow the leader's checkpoint through LISTEN/NOTIFY, so reads
// with min_seq work on every node, and take over within a second or two when the leader's
// session ends. The checkpoint row lock in applyBatch keeps exactly-once even if two leaders
// briefly overlap (a leader whose lock session died but has not noticed yet).

// notifyChannel carries the leader's committed checkpoint to standbys.
const notifyChannel = "chatd_checkpoint"

// standbyPoll bounds how long a standby waits before trying to lead again.
const standbyPoll = time.Second

func (p *Projector) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("chatd projector " + p.name))
	return int64(h.Sum64())
}

// session connects, stands by until it holds the projector lock, then leads until an error.
// The lock belongs to the session's connection: it ends when the connection does.
func (p *Projector) session(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig)
	if err != nil {
		return fmt.Errorf("connect for the projector lock: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return fmt.Errorf("listen for checkpoints: %w", err)
	}
	for {
		var leader bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, p.lockKey()).Scan(&leader); err != nil {
			return fmt.Errorf("try the projector lock: %w", err)
		}
		if leader {
			break
		}
		p.setState(stateStandby, nil)
		cp, err := p.checkpoint(ctx)
		if err != nil {
			return err
		}
		p.advance(cp)
		p.Metrics.Position(cp)
		wait, cancel := context.WithTimeout(ctx, standbyPoll)
		n, err := conn.WaitForNotification(wait)
		cancel()
		switch {
		case err == nil:
			if seq, err := strconv.ParseUint(n.Payload, 10, 64); err == nil {
				p.advance(seq)
			}
		case ctx.Err() != nil:
			return nil
		case !errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("wait for checkpoints: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, "UNLISTEN *"); err != nil {
		return fmt.Errorf("stop listening: %w", err)
	}
	p.log.Info("projector leads", "name", p.name)

	// Lead while the lock's session lives: if it dies, stop, so a standby can take over.
	lead, stop := context.WithCancelCause(ctx)
	var pinger sync.WaitGroup
	defer func() { stop(nil); pinger.Wait() }() // before the deferred Close: the pinger uses conn
	pinger.Go(func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-lead.Done():
				return
			case <-t.C:
				if err := conn.Ping(lead); err != nil && lead.Err() == nil {
					stop(fmt.Errorf("projector lock session lost: %w", err))
					return
				}
			}
		}
	})
	err = p.runOnce(lead)
	if cause := context.Cause(lead); err == nil && cause != nil && ctx.Err() == nil {
		err = cause
	}
	return err
}
