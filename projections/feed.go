package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Feed is what a WebSocket connection reads: the live pushes for its user (core NATS, published
// by whichever node's projector applied the event) and, for a resuming client, the events it
// missed, replayed from the stream.
//
// Live pushes reach the node through one NATS subscription per connected user, all feeding one
// channel that a single dispatcher goroutine routes to the user's connections (a user with
// several tabs shares one subscription). A subscription with a goroutine of its own per
// connection cost about 10 KiB per idle connection.
type Feed struct {
	nc     *nats.Conn
	stream jetstream.Stream
	pool   *pgxpool.Pool

	pushes chan *nats.Msg
	done   chan struct{}
	mu     sync.Mutex
	users  map[string]*userPushes // by push subject
	nextID uint64
}

// userPushes is one user's subscription and the connections it delivers to.
type userPushes struct {
	sub     *nats.Subscription
	checks  *nats.Subscription // the projector's checks of its last push (see Projector.check)
	dropped int                // pushes NATS dropped for this subscription, as last seen
	conns   map[uint64]subscriber
}

// subscriber is one connection's side of a subscription.
type subscriber struct {
	deliver func(seq, prev uint64, frame []byte)
	lost    func()
}

// pushBuffer is how many pushes may wait for the dispatcher. Beyond it NATS drops them, as for a
// slow consumer; every connection of a user who lost a push is then told (see Subscribe), so it
// can resume from its last sequence and miss nothing.
const pushBuffer = 64 << 10

// dropCheck is how often the dispatcher looks for dropped pushes of users who get no further
// push (a push checks its own user's first). A variable for tests.
var dropCheck = 250 * time.Millisecond

// NewFeed returns a Feed; Close stops its dispatcher.
func NewFeed(nc *nats.Conn, stream jetstream.Stream, pool *pgxpool.Pool) *Feed {
	f := &Feed{nc: nc, stream: stream, pool: pool, pushes: make(chan *nats.Msg, pushBuffer), done: make(chan struct{}),
		users: map[string]*userPushes{}}
	go f.dispatch()
	return f
}

// Close stops dispatching pushes.
func (f *Feed) Close() { close(f.done) }

// dispatch hands each push to the connections of its user, in the order NATS delivered them.
func (f *Feed) dispatch() {
	tick := time.NewTicker(dropCheck)
	defer tick.Stop()
	var (
		delivers []func(seq, prev uint64, frame []byte)
		lost     []func()
	)
	for {
		var m *nats.Msg
		select {
		case m = <-f.pushes:
		case <-tick.C:
			f.checkDropped()
			continue
		case <-f.done:
			return
		}
		subject := m.Subject
		if push, ok := streams.PushSubjectOfCheck(subject); ok {
			subject = push
		}
		seq, _ := strconv.ParseUint(m.Header.Get(SeqHeader), 10, 64)
		prev, _ := strconv.ParseUint(m.Header.Get(PrevHeader), 10, 64)
		delivers, lost = delivers[:0], lost[:0]
		f.mu.Lock()
		if u := f.users[subject]; u != nil {
			if u.droppedMore() {
				// A push after one that NATS dropped must not reach the connection first: it
				// would move the client's since past the dropped one.
				for _, c := range u.conns {
					lost = append(lost, c.lost)
				}
			} else {
				for _, c := range u.conns {
					delivers = append(delivers, c.deliver)
				}
			}
		}
		f.mu.Unlock()
		for _, l := range lost {
			l() // never blocks
		}
		for _, d := range delivers {
			d(seq, prev, m.Data) // enqueues: never blocks
		}
	}
}

// droppedMore reports whether NATS dropped pushes for u since the last look, and remembers
// how many it has dropped. f.mu must be held.
func (u *userPushes) droppedMore() bool {
	n, err := u.sub.Dropped()
	if err != nil || n <= u.dropped {
		return false
	}
	u.dropped = n
	return true
}

// checkDropped tells the connections of every user whose subscription dropped pushes since the
// last check that they lost some.
func (f *Feed) checkDropped() {
	var lost []func()
	f.mu.Lock()
	for _, u := range f.users {
		if !u.droppedMore() {
			continue
		}
		for _, c := range u.conns {
			lost = append(lost, c.lost)
		}
	}
	f.mu.Unlock()
	for _, l := range lost {
		l()
	}
}

// SeqHeader carries a push's stream sequence in its NATS header, so receivers can order and
// deduplicate without decoding the frame. PrevHeader carries the sequence of the push to the
// same user before it, when the projector knows it, so receivers notice a push they never got.
const (
	SeqHeader  = "Chat-Seq"
	PrevHeader = "Chat-Prev"
)

// PublishPush is the projector's Publish for core NATS.
func PublishPush(nc *nats.Conn) func(subject string, seq, prev uint64, data []byte) error {
	return func(subject string, seq, prev uint64, data []byte) error {
		m := nats.NewMsg(subject)
		m.Data = data
		if seq > 0 {
			m.Header.Set(SeqHeader, strconv.FormatUint(seq, 10))
		}
		if prev > 0 {
			m.Header.Set(PrevHeader, strconv.FormatUint(prev, 10))
		}
		return nc.PublishMsg(m)
	}
}

// Subscribe delivers every push for user until stop: its seq (0 for ephemeral frames such as
// typing) and the seq of the push to user before it (0 when the projector does not know it). A
// receiver that has passed neither prev nor seq missed a push. When the node fell so far behind
// that NATS dropped pushes for user, it calls lost instead: the connection must resume from its
// last sequence. Neither deliver nor lost may block.
func (f *Feed) Subscribe(user string, deliver func(seq, prev uint64, frame []byte), lost func()) (stop func(), err error) {
	subject := streams.PushSubject(user)
	f.mu.Lock()
	u := f.users[subject]
	if u == nil {
		// Both subscriptions feed one channel from one connection, so a check arrives after the
		// pushes published before it.
		sub, err := f.nc.ChanSubscribe(subject, f.pushes)
		if err != nil {
			f.mu.Unlock()
			return nil, domain.Unavailable("push is unavailable", fmt.Errorf("subscribe to pushes of %s: %w", user, err))
		}
		checks, err := f.nc.ChanSubscribe(streams.CheckSubject(user), f.pushes)
		if err != nil {
			_ = sub.Unsubscribe()
			f.mu.Unlock()
			return nil, domain.Unavailable("push is unavailable", fmt.Errorf("subscribe to push checks of %s: %w", user, err))
		}
		u = &userPushes{sub: sub, checks: checks, conns: map[uint64]subscriber{}}
		f.users[subject] = u
	}
	f.nextID++
	id := f.nextID
	u.conns[id] = subscriber{deliver: deliver, lost: lost}
	f.mu.Unlock()
	stop = func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(u.conns, id)
		if len(u.conns) == 0 && f.users[subject] == u {
			_ = u.sub.Unsubscribe()
			_ = u.checks.Unsubscribe()
			delete(f.users, subject)
		}
	}
	// Make sure the server knows the subscription before the caller reads a position to
	// replay up to: a push published after that position must reach us.
	if err := f.nc.Flush(); err != nil {
		stop()
		return nil, domain.Unavailable("push is unavailable", fmt.Errorf("flush subscription: %w", err))
	}
	return stop, nil
}

// Send publishes an ephemeral frame (no seq, never stored) to user.
func (f *Feed) Send(user string, frame []byte) error {
	return f.nc.Publish(streams.PushSubject(user), frame)
}

// Position is where a resume can start and end: the stream's epoch (it changes when the stream
// is recreated, which makes old sequences meaningless), its first and last sequence, and the
// sequence up to which the read models are committed.
type Position struct {
	Epoch     string
	First     uint64
	Last      uint64
	Committed uint64
}

// Position reads the current position.
func (f *Feed) Position(ctx context.Context) (Position, error) {
	info, err := f.stream.Info(ctx)
	if err != nil {
		return Position{}, domain.Unavailable("the event stream is unavailable", fmt.Errorf("stream info: %w", err))
	}
	var committed uint64
	// No row yet means the projector has not started on this database: nothing is committed.
	err = f.pool.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM projector_checkpoints WHERE name = $1), 0)`, ProjectorName).Scan(&committed)
	if err != nil {
		return Position{}, readErr(err, "read checkpoint")
	}
	return Position{
		Epoch:     strconv.FormatInt(info.Created.UnixNano(), 36),
		First:     info.State.FirstSeq,
		Last:      info.State.LastSeq,
		Committed: committed,
	}, nil
}

// conversationOf returns the conversation id of an event subject (chat.evt.conv.<id>.…).
func conversationOf(subject string) string {
	parts := strings.SplitN(subject, ".", 5)
	if len(parts) < 4 {
		return ""
	}
	return parts[3]
}

func within(spans []Span, seq uint64) bool {
	for _, s := range spans {
		if seq >= s.From && seq <= s.To {
			return true
		}
	}
	return false
}

// ErrTooFarBehind means a replay would exceed its limit: the client must resync over REST.
var ErrTooFarBehind = errors.New("too many events to replay")

// Replay sends, in stream order, the frames of every event after `after` and up to `upTo` that
// user would have been sent live: the events of their conversations while they were members
// (spans), without other members' read markers. It refuses with ErrTooFarBehind, before
// sending anything, when more than max events are candidates.
func (f *Feed) Replay(ctx context.Context, user string, spans []Span, after, upTo uint64, max int, send func(seq uint64, frame []byte) error) error {
	byConv := map[string][]Span{}
	var filters []string
	for _, s := range spans {
		if _, ok := byConv[s.ConversationID]; !ok {
			filters = append(filters, "chat.evt.conv."+s.ConversationID+".>")
		}
		byConv[s.ConversationID] = append(byConv[s.ConversationID], s)
	}
	if after >= upTo || len(filters) == 0 {
		return nil
	}
	// Live delivery never sent a parked event (pushes follow commits), and a GET would not find
	// what its frame describes: replay sends the same frames as live delivery, so not them.
	parked, err := parkedBetween(ctx, f.pool, after, upTo)
	if err != nil {
		return domain.Unavailable("the read models are unavailable", err)
	}
	cons, err := f.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       after + 1,
		FilterSubjects:    filters,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
	})
	if err != nil {
		return domain.Unavailable("the event stream is unavailable", fmt.Errorf("create replay consumer: %w", err))
	}
	defer func() { _ = f.stream.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name) }()
	pending := cons.CachedInfo().NumPending
	if pending > uint64(max) {
		// Pending counts up to the end of the stream; past upTo is a little more than needed.
		return ErrTooFarBehind
	}
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return domain.Unavailable("the event stream is unavailable", fmt.Errorf("replay fetch: %w", err))
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("replay metadata: %w", err)
			}
			pending = meta.NumPending
			seq := meta.Sequence.Stream
			if seq > upTo {
				return nil
			}
			if strings.Contains(m.Subject(), ".read.") && !strings.HasSuffix(m.Subject(), ".read."+user) {
				continue // other members' read markers are theirs
			}
			if !within(byConv[conversationOf(m.Subject())], seq) || parked[seq] {
				continue // before they joined, or after they left; or never applied
			}
			e, err := domain.DecodeEventWith(decodeJSON, m.Data())
			if err != nil {
				continue // the projector logged it; a client cannot use it either
			}
			e.Seq = seq
			frame, err := encodeFrame(frameFor(e, user))
			if err != nil {
				return err
			}
			if err := send(seq, frame); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return domain.Unavailable("the event stream is unavailable", fmt.Errorf("replay: %w", err))
		}
		if got == 0 {
			return domain.Unavailable("the event stream is unavailable", errors.New("replay fetched nothing"))
		}
	}
	return nil
}
