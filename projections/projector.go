// Package projections builds the PostgreSQL read models from the event stream and answers the
// queries the REST API reads from them. The projector is the only writer of the read-model
// tables; each read model (one file each) knows how to apply the events it cares about and how
// to query its tables.
package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/metrics"
	"github.com/chatd-dev/chatd/streams"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readModel is one set of tables. apply queues the statements that event e implies onto b; the
// projector sends them with the rest of the batch in one transaction. Models that implement
// bulkCreated receive message.created events in runs through applyCreated instead.
type readModel interface {
	apply(b *pgx.Batch, e domain.Event) error
}

// ProjectorName names the checkpoint row of the live read models.
const ProjectorName = "main"

// Projector applies events from the stream to the read models in batches. For each batch it
// reads and locks its checkpoint, applies the events after it, and writes the new checkpoint in
// the same transaction (guarantee 5). Its position in the stream lives only in PostgreSQL: it
// reads the stream with an ordered consumer that starts after the checkpoint, so after any
// failure it simply starts again from what was committed. See docs/architecture.md for why this
// replaces a durable consumer with acks.
type Projector struct {
	pool      *pgxpool.Pool
	nc        *nats.Conn // for the stream's reads that JetStream's client does not offer
	stream    jetstream.Stream
	log       *slog.Logger
	name      string
	batchSize int
	models    []readModel
	// Metrics, when set, records batches, lag and pushes.
	Metrics *metrics.Metrics
	// Publish, when set, sends each applied event's frame to its audience's push subjects,
	// after the transaction that applied it committed (push after commit, guarantee 7). prev is
	// the seq of the frame this leader pushed to the same subject before, 0 if none or unknown:
	// a receiver that has not seen prev lost a push (see Feed.Subscribe).
	Publish func(subject string, seq, prev uint64, data []byte) error
	// pushed remembers the last seq pushed to each user in this term, for prev.
	pushed *lru.Cache[string, uint64]
	// members remembers conversations' members as this leader's commits left them, so that a
	// batch reads from PostgreSQL only the audiences it does not know (see audienceOf).
	members *lru.Cache[string, []string]
	// unchecked are the users pushed to since the last check (see check); checkEvery is how
	// often checks go out; checked is the last sequence whose pushes this term recorded as checked.
	unchecked  map[string]struct{}
	checkEvery time.Duration
	checked    uint64

	pos atomic.Uint64 // the read models hold every event up to here
	// term is the checkpoint row's term this projector commits under (see takeOver).
	term uint64
	// tables identifies the checkpoint table this session started on; another one means the
	// read models were rebuilt and switched over under it (see Rebuild).
	tables uint32
	// parkedConvs are the conversations with a parked event: their later events are parked
	// too, so that none is shown out of order. Only the projector's goroutine uses it.
	parkedConvs map[string]bool
	// bulk is set while the projector bulk-loads fresh tables (see bulk.go); nil for the live
	// read models.
	bulk    *bulkLoad
	parked  atomic.Int64  // events parked, for readiness and metrics
	batches atomic.Uint64 // committed transactions that applied events
	applied atomic.Uint64 // events applied
	mu      sync.Mutex
	moved   chan struct{} // closed and replaced whenever pos moves
	lastErr error         // last failure, nil while running well
	state   string
}

// Projector states, as readiness reports them.
const (
	stateLeading = "leading"
	stateStandby = "standby"
	stateStopped = "stopped"
)

// NewProjector returns a projector of the live read models, reading stream through nc.
func NewProjector(pool *pgxpool.Pool, nc *nats.Conn, stream jetstream.Stream, log *slog.Logger) *Projector {
	p := &Projector{
		pool:       pool,
		nc:         nc,
		stream:     stream,
		log:        log,
		name:       ProjectorName,
		batchSize:  500,
		checkEvery: 5 * time.Second,
		members:    newMembers(),
		unchecked:  map[string]struct{}{},
		models:     []readModel{Users{}, Conversations{}, Messages{}},
		moved:      make(chan struct{}),

		parkedConvs: map[string]bool{},
	}
	p.pushed = p.newPushed()
	return p
}

// Run projects until ctx is cancelled. Failures (PostgreSQL or NATS down) are logged and retried
// with backoff from the last checkpoint; they never end Run.
func (p *Projector) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := p.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errSwitched) {
			p.log.Info("read models switched over by a rebuild; continuing from the new checkpoint")
			continue
		}
		if errors.Is(err, errDeposed) {
			p.log.Warn("another node's projector took the lead while this one's lock session was gone; standing by")
			continue
		}
		p.setState(stateStopped, err)
		p.Metrics.ProjectorFailed()
		p.log.Warn("projector stopped; restarting from its checkpoint", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	p.setState(stateStopped, errors.New("projector stopped"))
}

func (p *Projector) runOnce(ctx context.Context) error {
	cp, err := p.takeOver(ctx)
	if err != nil {
		return err
	}
	if err := p.loadParked(ctx); err != nil {
		return err
	}
	p.advance(cp)
	if err := p.repush(ctx, cp); err != nil && ctx.Err() == nil {
		// Pushes are at most once: a client that missed one gets it at its next resume.
		p.log.Warn("could not push the last events again on taking the lead", "err", err)
	}
	cons, err := p.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{streams.SubjectRoot},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    cp + 1,
	})
	if err != nil {
		return fmt.Errorf("create ordered consumer from %d: %w", cp+1, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * p.batchSize))
	if err != nil {
		return fmt.Errorf("consume from %d: %w", cp+1, err)
	}
	defer it.Stop()

	// A reader goroutine feeds a channel so that the loop below can take everything already
	// delivered as one batch without waiting for more.
	msgs := make(chan jetstream.Msg, p.batchSize)
	errc := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-done:
				return
			}
		}
	}()

	p.setState(stateLeading, nil)
	checks := time.NewTicker(p.checkEvery)
	defer checks.Stop()
	for {
		var batch []jetstream.Msg
		select {
		case <-checks.C:
			p.check(ctx)
			continue
		case m := <-msgs:
			batch = append(batch, m)
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read stream: %w", err)
		case <-ctx.Done():
			return nil
		}
	fill:
		for len(batch) < p.batchSize {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		// The events before one that cannot be decoded at all (a newer chatd's) are applied
		// first: the projector stops at that event, not at its batch.
		d, stop := p.decode(batch)
		if len(d.msgs) > 0 {
			// The batch in hand is finished even when shutdown has begun.
			if err := p.applyOrPark(context.WithoutCancel(ctx), d); err != nil {
				return err
			}
		}
		if stop != nil {
			return stop
		}
	}
}

// decoded is a batch of delivered messages with their events decoded.
type decoded struct {
	msgs   []streams.Stored
	events []domain.Event
	// data is the data of each message.created event in events, at its index (zero for other
	// types), decoded once with its envelope: in a catch-up that happens ahead of the goroutine
	// that applies the batch.
	data    []messageData
	pending uint64 // events in the stream after the batch
	alone   bool   // one event of a rejected batch, applied by itself (see applyOrPark)
}

// messageData is a message.created event's data, or why it could not be decoded.
type messageData struct {
	domain.MessageData
	err error
}

// one is the batch of d's i-th event alone.
func (d decoded) one(i int) decoded {
	return decoded{msgs: d.msgs[i : i+1], events: d.events[i : i+1], data: d.data[i : i+1], pending: d.pending, alone: true}
}

// decode decodes the events of msgs.
// decode decodes a delivered batch. On an error, the batch it returns holds the events before
// the message that caused it.
func (p *Projector) decode(msgs []jetstream.Msg) (decoded, error) {
	d := newDecoded(len(msgs))
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			return d, fmt.Errorf("metadata of delivered message: %w", err)
		}
		d.pending = meta.NumPending
		if err := p.add(&d, streams.Stored{Seq: meta.Sequence.Stream, Subject: m.Subject(), Data: m.Data()}); err != nil {
			return d, err
		}
	}
	return d, nil
}

// newDecoded returns an empty batch with room for n events.
func newDecoded(n int) decoded {
	return decoded{msgs: make([]streams.Stored, 0, n), events: make([]domain.Event, 0, n), data: make([]messageData, 0, n)}
}

// add decodes m onto the end of d. The events are decoded in place: a batch is thousands of
// them in a catch-up, and a copy of each would double what the garbage collector has to do.
func (p *Projector) add(d *decoded, m streams.Stored) error {
	d.msgs = append(d.msgs, m)
	d.events = append(d.events, domain.Event{})
	d.data = append(d.data, messageData{})
	e, data := &d.events[len(d.events)-1], &d.data[len(d.data)-1]
	err := domain.DecodeEventInto(decodeJSON, m.Data, e)
	if errors.Is(err, domain.ErrNewerSchema) {
		// Skipping it would leave read models that differ from a rebuild: stop here, loudly,
		// until this node runs a chatd that reads it (readyz reports the error meanwhile). d
		// keeps the events before it.
		n := len(d.msgs) - 1
		d.msgs, d.events, d.data = d.msgs[:n], d.events[:n], d.data[:n]
		return fmt.Errorf("event at %d needs a newer chatd: %w", m.Seq, err)
	}
	if err != nil {
		// Only chatd appends to the stream, and it validates what it appends; an event it
		// cannot read is logged loudly and skipped rather than stopping every conversation.
		p.log.Error("skipping undecodable event", "seq", m.Seq, "subject", m.Subject, "err", err)
		e.Type = "undecodable"
	}
	if e.Type == domain.TypeMessageCreated {
		data.err = domain.DecodeDataInto(decodeJSON, *e, &data.MessageData)
	}
	e.Seq = m.Seq
	return nil
}

// applyBatch applies a decoded batch in one transaction with the checkpoint, then tells waiters.
func (p *Projector) applyBatch(ctx context.Context, d decoded) error {
	// A bulk load copies a batch's new messages (see bulk.go), but not when it applies the
	// events of a rejected batch one at a time: their errors are then the live projector's,
	// word for word, since parked_events keeps them.
	err := p.applyTx(ctx, d, p.bulk != nil && !d.alone)
	if errors.Is(err, errCopyConflict) {
		err = p.applyTx(ctx, d, false)
	}
	return err
}

// applyTx is applyBatch, copying the new messages if useCopy is set and the batch allows it.
func (p *Projector) applyTx(ctx context.Context, d decoded, useCopy bool) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	defer func() {
		if err != nil {
			// The transaction may have committed without our knowing (a lost connection): what
			// this leader remembers of memberships is no longer known to be the table's.
			p.members.Purge()
		}
	}()
	start := time.Now()
	events, pending := d.events, d.pending
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin projector transaction: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	// FOR UPDATE serialises projectors of the same name: a second one waits, then sees the
	// advanced checkpoint and skips what the first applied.
	cp, err := p.lockCheckpoint(ctx, tx)
	if err != nil {
		return err
	}
	// Who hears each event, when anyone is to be told (a rebuild pushes nothing).
	var audience Audience
	if p.Publish != nil {
		if audience, err = p.audienceOf(ctx, tx, events); err != nil {
			return err
		}
	}
	b := &pgx.Batch{}
	applied, data, parkedNow, err := p.skipApplied(ctx, b, d, cp)
	if err != nil {
		return err
	}
	last := max(cp, events[len(events)-1].Seq)
	if p.bulk != nil {
		// Without the messages key, changes wait for it and cannot come before their message.
		p.bulk.begin(b, useCopy && (!p.bulk.indexed() || copyKeepsOrder(applied, data)), len(applied))
		defer p.bulk.abort() // a no-op after commit
	}
	if err := p.queue(b, applied, data); err != nil {
		return err
	}
	if p.bulk != nil && len(p.bulk.tx.rows) > 0 {
		if err := copyMessages(ctx, tx, p.bulk.tx.rows); err != nil {
			return err
		}
	}
	if last > cp {
		b.Queue(`UPDATE projector_checkpoints SET seq = $2, updated_at = now() WHERE name = $1`, p.name, last)
		// Delivered to standbys when the transaction commits, never before.
		b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, strconv.FormatUint(last, 10))
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("apply events %d..%d: %w", cp+1, last, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit events %d..%d: %w", cp+1, last, err)
	}
	if p.bulk != nil && last > cp {
		p.bulk.commit() // what it wrote went out with the batch
	}
	if parkedNow > 0 {
		p.Metrics.Parked(p.parked.Add(parkedNow))
	}
	if len(applied) > 0 {
		p.batches.Add(1)
		p.applied.Add(uint64(len(applied)))
		p.Metrics.Batch(len(applied), time.Since(start), last, pending, applied[len(applied)-1].Time)
	}
	var ps []Push
	if p.Publish != nil {
		ps = pushes(audience, applied) // leaves audience as this commit left the members
		p.remember(audience)
	}
	p.advance(last)
	if p.Publish != nil {
		p.publish(ps)
	}
	return nil
}

// skipApplied returns the events of d to apply after the checkpoint cp, with their data, and
// queues the parking of those whose conversation has a parked event. Events are in stream order,
// so those at or before cp come first; in the usual batch, with nothing parked, what is left is
// a part of d itself rather than a copy.
func (p *Projector) skipApplied(ctx context.Context, b *pgx.Batch, d decoded, cp uint64) (applied []domain.Event, data []messageData, parked int64, err error) {
	from, _ := slices.BinarySearchFunc(d.events, cp+1, func(e domain.Event, seq uint64) int { return cmp.Compare(e.Seq, seq) })
	if len(p.parkedConvs) == 0 {
		return d.events[from:], d.data[from:], 0, nil
	}
	for i := from; i < len(d.events); i++ {
		if e := d.events[i]; e.ConversationID != "" && p.parkedConvs[e.ConversationID] {
			if err := p.queuePark(ctx, b, d.msgs[i], e.ConversationID, "an earlier event of this conversation is parked"); err != nil {
				return nil, nil, 0, err
			}
			parked++
			continue
		}
		applied = append(applied, d.events[i])
		data = append(data, d.data[i])
	}
	return applied, data, parked, nil
}

// queue queues the statements of events onto b. Runs of consecutive message.created events (the
// bulk of any stream) go to the read models that apply them set-based, a few statements per run
// instead of a few per message; everything else is applied one event at a time, in order.
// data holds the data of events' message.created events, at their index.
func (p *Projector) queue(b *pgx.Batch, events []domain.Event, data []messageData) error {
	models := p.models
	if p.bulk != nil {
		models = p.bulk.models
	}
	run := make([]created, 0, len(events))
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		for _, m := range models {
			if bulk, ok := m.(bulkCreated); ok {
				bulk.applyCreated(b, run)
				continue
			}
			for _, c := range run {
				if err := m.apply(b, *c.Event); err != nil {
					return fmt.Errorf("apply %s at %d: %w: %w", c.Type, c.Seq, errUnusable, err)
				}
			}
		}
		run = run[:0]
		return nil
	}
	for i, e := range events {
		if e.Type == domain.TypeMessageCreated {
			if err := data[i].err; err != nil {
				return fmt.Errorf("apply %s at %d: %w: %w", e.Type, e.Seq, errUnusable, err)
			}
			run = append(run, created{&events[i], &data[i].MessageData})
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		for _, m := range models {
			if err := m.apply(b, e); err != nil {
				return fmt.Errorf("apply %s at %d: %w: %w", e.Type, e.Seq, errUnusable, err)
			}
		}
	}
	return flush()
}

// created is a message.created event with its data decoded: pointers into the batch that holds
// them, since runs of them are passed on and collected by the thousand.
type created struct {
	*domain.Event
	*domain.MessageData
}

// bulkCreated is implemented by read models that apply a run of message.created events at once.
type bulkCreated interface {
	applyCreated(b *pgx.Batch, run []created)
}

func (p *Projector) checkpoint(ctx context.Context) (uint64, error) {
	_, err := p.pool.Exec(ctx, `INSERT INTO projector_checkpoints (name, seq, updated_at) VALUES ($1, 0, now())
		ON CONFLICT (name) DO NOTHING`, p.name)
	if err != nil {
		return 0, fmt.Errorf("create checkpoint %s: %w", p.name, err)
	}
	var seq uint64
	if err := p.pool.QueryRow(ctx, `SELECT seq, tableoid::oid FROM projector_checkpoints WHERE name = $1`, p.name).Scan(&seq, &p.tables); err != nil {
		return 0, fmt.Errorf("read checkpoint %s: %w", p.name, err)
	}
	return seq, nil
}

// lockCheckpoint locks the projector's checkpoint row in tx and returns the checkpoint. It fails
// with errSwitched when a rebuild replaced the tables this session started on, and with
// errDeposed when another projector took the lead since (its term is newer).
func (p *Projector) lockCheckpoint(ctx context.Context, tx pgx.Tx) (uint64, error) {
	var cp, term uint64
	var tables uint32
	if err := tx.QueryRow(ctx, `SELECT seq, tableoid::oid, term FROM projector_checkpoints WHERE name = $1 FOR UPDATE`, p.name).Scan(&cp, &tables, &term); err != nil {
		return 0, fmt.Errorf("lock checkpoint %s: %w", p.name, err)
	}
	if p.tables != 0 && tables != p.tables {
		return 0, errSwitched
	}
	if term != p.term {
		return 0, errDeposed
	}
	p.tables = tables
	return cp, nil
}

// errSwitched stops a projector whose read models were rebuilt and switched over: it starts again
// from the new checkpoint, with the new tables' parked events.
var errSwitched = errors.New("the read models were rebuilt and switched over; restarting from the new checkpoint")

func (p *Projector) advance(seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq <= p.pos.Load() {
		return
	}
	p.pos.Store(seq)
	close(p.moved)
	p.moved = make(chan struct{})
}

func (p *Projector) setState(state string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state, p.lastErr = state, err
}

// Stats returns how many batches and events this projector has applied since it started.
func (p *Projector) Stats() (batches, events uint64) { return p.batches.Load(), p.applied.Load() }

// Position is the stream sequence up to which the read models are known to be complete.
func (p *Projector) Position() uint64 { return p.pos.Load() }

// Healthy returns nil while the projector leads or stands by, or why it does neither.
func (p *Projector) Healthy() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateLeading || p.state == stateStandby {
		return nil
	}
	if p.lastErr != nil {
		return p.lastErr
	}
	return errors.New("projector not started")
}

// WaitFor blocks until the read models hold every event up to seq, or ctx ends (guarantee 9).
func (p *Projector) WaitFor(ctx context.Context, seq uint64) error {
	for {
		p.mu.Lock()
		moved := p.moved
		p.mu.Unlock()
		if p.pos.Load() >= seq {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
