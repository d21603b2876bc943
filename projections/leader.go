package projections

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/chatd-dev/chatd/domain"
	lru "github.com/hashicorp/golang-lru/v2"
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

// errDeposed stops a leader whose lock session ended unnoticed while another projector took the
// lead: it must commit nothing more, and stands by again.
var errDeposed = errors.New("another projector took the lead")

// takeOver starts this projector's term as leader and returns the checkpoint it starts from. The
// term is incremented in the checkpoint row, and every batch checks it under the row's lock
// (lockCheckpoint). So a leader whose lock session died without its noticing (its pings notice
// within seconds) commits nothing after this. The pushes of its last commit may still be on
// their way; repush sends them again, from where its predecessor's checks reached (p.checked),
// and connections pass on whichever copy comes first.
func (p *Projector) takeOver(ctx context.Context) (uint64, error) {
	var cp, checked uint64
	if err := p.pool.QueryRow(ctx, `INSERT INTO projector_checkpoints AS c (name, seq, updated_at, term) VALUES ($1, 0, now(), 1)
		ON CONFLICT (name) DO UPDATE SET term = c.term + 1
		RETURNING seq, checked_seq, term, tableoid::oid`, p.name).Scan(&cp, &checked, &p.term, &p.tables); err != nil {
		return 0, fmt.Errorf("take the lead of %s: %w", p.name, err)
	}
	// What an earlier term pushed is not known: its last pushes may be lost or still on their way.
	p.pushed, p.unchecked, p.checked = p.newPushed(), map[string]struct{}{}, checked
	// Nor what it did to memberships.
	p.members = newMembers()
	return cp, nil
}

// pushedUsers bounds how many users' last pushes a leader remembers. A user it forgets gets a
// check of their last push at once (so a loss before it is still noticed), and their next push
// goes without prev.
var pushedUsers = 100_000

func (p *Projector) newPushed() *lru.Cache[string, uint64] {
	c, _ := lru.NewWithEvict(pushedUsers, p.checkForgotten) // only errs on size <= 0
	return c
}

// repushFrom is where (exclusive) a new leader starts pushing again the events up to its
// checkpoint cp, given the last sequence its predecessor checked (see check): everything after
// that may hold a push lost on its way, which only a push again lets the receiver notice.
//
// At least four batches: a leader pushes a batch after committing it, before it starts the next,
// into its NATS connection's buffer, which a goroutine of the client flushes; a leader that dies
// may have committed a batch it never pushed, and left the pushes of the one before unflushed.
// While its connection is reconnecting, pushes wait in the client's reconnect buffer, and the
// leader can still apply what was delivered before (up to three batches: its channel and the
// consumer's buffer). At most maxRepush events: a predecessor that never checked (an older
// chatd, or a rebuild's fresh checkpoint row) leaves the rest to its clients' next resume.
func (p *Projector) repushFrom(cp, checked uint64) uint64 {
	from := max(checked, cp-min(cp, maxRepush))
	return min(from, cp-min(cp, 4*uint64(p.batchSize)))
}

// maxRepush bounds what a new leader pushes again: about a check interval's worth of events
// (5 s) at several thousand events a second.
const maxRepush = 20_000

// repush publishes again the pushes of the last events up to the checkpoint cp, as the leader
// before would have (push after commit holds: they are committed). When that leader died between
// commit and publish, clients connected to other nodes get those frames now rather than at their
// next resume. Every other frame is one they had: connections drop a seq they have passed
// (api's wsConn, and clients by contract), and these go out before anything newer.
func (p *Projector) repush(ctx context.Context, cp uint64) error {
	if p.Publish == nil || cp == 0 {
		return nil
	}
	from := p.repushFrom(cp, p.checked) // exclusive
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	steps := make(chan fetched, 1)
	go p.fetchUpTo(ctx, from, cp, steps)
	var events []domain.Event
	for f := range steps {
		if f.err != nil {
			return f.err
		}
		events = append(events, f.batch.events...)
	}
	// The events the previous leader pushed are those it applied: not the parked ones.
	parked, err := parkedBetween(ctx, p.pool, from, cp)
	if err != nil {
		return err
	}
	events = slices.DeleteFunc(events, func(e domain.Event) bool { return parked[e.Seq] })
	if len(events) == 0 {
		return nil
	}
	// The read models hold the state at cp, after these events: rewind the members to before
	// them, so each event goes to the audience it had.
	audience, err := membersOf(ctx, p.pool, events)
	if err != nil {
		return err
	}
	audience.rewind(events)
	list := pushes(audience, events)
	p.publish(list)
	p.log.Info("pushed the last events again on taking the lead", "from", events[0].Seq, "to", events[len(events)-1].Seq, "pushes", len(list))
	return nil
}
