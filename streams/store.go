package streams

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/metrics"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/nats-io/nats.go/jetstream"
)

// Store is the command side. It derives the state a decision needs from the stream itself (the
// last event on a subject, read with a direct get), lets the domain decide, and appends the
// resulting event with an expectation on that state:
//
//   - A conversation's events form a hash chain (domain.Chain), and every append to a conversation
//     expects the conversation's last sequence to be unchanged (over the subjects of its current
//     epoch: see Layout). So the chain stays linear, and a removal that races a send, an edit or
//     a delete makes it fail and be decided again (guarantee 3). A conversation's state is the
//     last event on its meta subjects.
//   - A message has its own subject, named after its id, which is derived from the sender's
//     client_msg_id. A retried send finds the first event on that subject, at any later time;
//     concurrent retries are caught by Nats-Msg-Id (guarantee 4).
//   - A user's events form a chain of their own on the user's subject.
//
// Appends to one conversation are serialised within a node (see lock), so a node does not race
// itself; between nodes the expectation decides.
//
// Nothing here touches PostgreSQL, so writes keep working while it is down (guarantee 2).
type Store struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	layout Layout
	limits domain.Limits
	now    func() time.Time
	// Metrics, when set, counts appends.
	Metrics *metrics.Metrics

	// convs caches conversation state by id. A stale entry is harmless: appends carry the
	// sequence the decision was based on, and a refused append or decision reloads the state.
	convs *lru.Cache[string, cachedConversation]
	// epochs remembers each conversation's latest known epoch, where a fresh read of its tip
	// starts looking; epochs only grow, so a stale entry only costs a few more reads.
	epochs *lru.Cache[string, uint64]
	// users remembers users known to exist; users are never deleted, so it never goes stale.
	users *lru.Cache[string, struct{}]
	// locks serialise the appends of one conversation within this node (striped by id).
	locks [256]chan struct{}
	// getSubject is the JetStream API subject of leader reads (see readLeader).
	getSubject string
	// replicated: the stream has replicas, which may answer direct gets (see messageSeen).
	replicated bool
}

type cachedConversation struct {
	conv domain.Conversation
	seq  uint64 // stream sequence of the meta event the state comes from
	tip  Tip    // the conversation's last event, of any kind
}

// lock serialises appends to one conversation on this node and returns the unlock. It gives up
// when ctx ends: a request whose client has gone does not queue behind a busy conversation.
func (s *Store) lock(ctx context.Context, convID string) (unlock func(), err error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(convID))
	sem := s.locks[h.Sum32()%uint32(len(s.locks))]
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, domain.Unavailable("the conversation is busy", ctx.Err())
	}
}

// maxAttempts bounds how often a command is decided again after a conflicting append.
const maxAttempts = 32

// backOff waits a random time, longer with each attempt (up to 32ms), after an append lost a race
// to another node: two nodes appending to one conversation otherwise keep colliding. On a cluster
// an append is in flight for longer (replication), so the waits must be able to outgrow it.
func backOff(ctx context.Context, attempt int) error {
	t := time.NewTimer(rand.N(time.Millisecond << min(attempt, 5)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		// As any other read or append that the request's end cut short: 503, not a 500.
		return domain.Unavailable("the request ended while retrying its append", ctx.Err())
	case <-t.C:
		return nil
	}
}

// NewStore returns a Store appending to stream, which Setup created.
func NewStore(js jetstream.JetStream, stream jetstream.Stream, limits domain.Limits) (*Store, error) {
	layout, err := LayoutOf(stream)
	if err != nil {
		return nil, err
	}
	convs, _ := lru.New[string, cachedConversation](100_000) // only errs on size <= 0
	epochs, _ := lru.New[string, uint64](100_000)
	users, _ := lru.New[string, struct{}](100_000)
	s := &Store{js: js, stream: stream, layout: layout, limits: limits, now: time.Now, convs: convs, epochs: epochs, users: users,
		getSubject: msgGetSubject(stream.CachedInfo().Config.Name), replicated: stream.CachedInfo().Config.Replicas > 1}
	for i := range s.locks {
		s.locks[i] = make(chan struct{}, 1)
	}
	return s, nil
}

// Limits returns the limits the store decides with.
func (s *Store) Limits() domain.Limits { return s.limits }

// ProvisionUser creates or updates a user. created reports whether the user is new; seq is the
// stream sequence of the user's latest event.
func (s *Store) ProvisionUser(ctx context.Context, id, displayName string) (u domain.User, created bool, seq uint64, err error) {
	if err := domain.ValidUserID(id); err != nil {
		return domain.User{}, false, 0, err
	}
	for attempt := range maxAttempts {
		current, curSeq, err := s.lastEvent(ctx, userSubject(id))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return domain.User{}, false, 0, err
		}
		var cur *domain.User
		if err == nil {
			d, err := domain.DecodeData[domain.UserData](current)
			if err != nil {
				return domain.User{}, false, 0, err
			}
			cur = &domain.User{ID: d.UserID, DisplayName: d.DisplayName, UpdatedAt: current.Time}
		}
		e, err := domain.ProvisionUser(cur, id, displayName, s.limits, s.now())
		if err != nil {
			return domain.User{}, false, 0, err
		}
		if e == nil {
			return *cur, false, curSeq, nil
		}
		data := domain.Chain(e, current.Hash)
		ack, err := s.append(ctx, *e, data, 0, jetstream.WithExpectLastSequencePerSubject(curSeq))
		if isConflict(err) {
			if err := backOff(ctx, attempt); err != nil {
				return domain.User{}, false, 0, err
			}
			continue
		}
		if err != nil {
			return domain.User{}, false, 0, err
		}
		s.users.Add(id, struct{}{})
		return domain.User{ID: id, DisplayName: displayName, UpdatedAt: e.Time}, cur == nil, ack.Sequence, nil
	}
	return domain.User{}, false, 0, errBusy("user " + id)
}

// UserExists reports whether the host provisioned id. It answers from the stream.
func (s *Store) UserExists(ctx context.Context, id string) (bool, error) {
	if domain.ValidUserID(id) != nil {
		return false, nil
	}
	if s.users.Contains(id) {
		return true, nil
	}
	_, _, err := s.lastEvent(ctx, userSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.users.Add(id, struct{}{})
	return true, nil
}

func (s *Store) requireUsers(ctx context.Context, ids []string) error {
	for _, id := range ids {
		ok, err := s.UserExists(ctx, id)
		if err != nil {
			return err
		}
		if !ok {
			return domain.Errorf(domain.CodeInvalid, "unknown user %q: the host site has not provisioned it", id)
		}
	}
	return nil
}

// CreateConversation creates a direct conversation or a group. Asking again for a direct
// conversation that exists returns it with created false.
func (s *Store) CreateConversation(ctx context.Context, actor, kind, title string, members []string) (c domain.Conversation, created bool, seq uint64, err error) {
	var e domain.Event
	switch kind {
	case domain.KindDirect:
		if title != "" {
			return c, false, 0, domain.Errorf(domain.CodeInvalid, "a direct conversation has no title")
		}
		e, err = domain.CreateDirect(actor, members, s.now())
	case domain.KindGroup:
		e, err = domain.CreateGroup(actor, title, members, s.limits, s.now())
	default:
		return c, false, 0, domain.Errorf(domain.CodeInvalid, `kind must be "direct" or "group"`)
	}
	if err != nil {
		return c, false, 0, err
	}
	c, err = domain.ConversationOf(e)
	if err != nil {
		return c, false, 0, err
	}
	if err := s.requireUsers(ctx, c.Members); err != nil {
		return c, false, 0, err
	}
	// Expecting an empty conversation makes creation atomic: of two concurrent requests for the
	// same direct conversation exactly one appends, and the other finds its result.
	pos, filter, expect := s.layout.next(c.ID, Tip{})
	data := domain.Chain(&e, "")
	for attempt := range maxAttempts {
		ack, err := s.append(ctx, e, data, pos, jetstream.WithExpectLastSequenceForSubject(expect, filter))
		if isConflict(err) {
			existing, seq, err := s.Conversation(ctx, c.ID)
			if domain.ErrorCode(err) == domain.CodeNotFound {
				// On a cluster the leader also refuses while the other append is still in
				// flight, before it can be read: look again shortly.
				if err := backOff(ctx, attempt); err != nil {
					return c, false, 0, err
				}
				continue
			}
			if err != nil {
				return c, false, 0, err
			}
			return existing, false, seq, nil
		}
		if err != nil {
			return c, false, 0, err
		}
		s.convs.Add(c.ID, cachedConversation{conv: c, seq: ack.Sequence, tip: Tip{Seq: ack.Sequence, Position: pos, Hash: e.Hash}})
		return c, true, ack.Sequence, nil
	}
	return c, false, 0, errBusy("conversation " + c.ID)
}

// Conversation returns the current state of a conversation, read fresh from the stream (never
// from the cache: callers use it to decide who may see what), and the sequence of the event it
// comes from. It does not check membership: callers decide.
func (s *Store) Conversation(ctx context.Context, id string) (domain.Conversation, uint64, error) {
	if !domain.ValidConversationID(id) {
		return domain.Conversation{}, 0, errNoConversation
	}
	meta, seq, err := s.lastEvent(ctx, metaSubjects(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return domain.Conversation{}, 0, errNoConversation
	}
	if err != nil {
		return domain.Conversation{}, 0, err
	}
	c, err := domain.ConversationOf(meta)
	return c, seq, err
}

// conversation returns the conversation's state and chain tip, from the cache unless fresh.
func (s *Store) conversation(ctx context.Context, id string, fresh bool) (cachedConversation, error) {
	if !domain.ValidConversationID(id) {
		return cachedConversation{}, errNoConversation
	}
	if !fresh {
		if c, ok := s.convs.Get(id); ok {
			return c, nil
		}
	}
	// The tip first: whatever is read after it is at least as new, and an append expecting it
	// fails if anything changed since.
	last, err := s.readTip(ctx, id)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return cachedConversation{}, errNoConversation
	}
	if err != nil {
		return cachedConversation{}, err
	}
	tip, err := last.conversationTip()
	if err != nil {
		return cachedConversation{}, err
	}
	meta := last.Event
	if !isConversationEvent(meta.Type) {
		if meta, _, err = s.lastEvent(ctx, metaSubjects(id)); err != nil {
			return cachedConversation{}, err
		}
	}
	conv, err := domain.ConversationOf(meta)
	if err != nil {
		return cachedConversation{}, err
	}
	c := cachedConversation{conv: conv, seq: meta.Seq, tip: tip}
	s.convs.Add(id, c)
	return c, nil
}

// readTip reads a conversation's last event from the leader: the last event of its latest epoch.
// Epochs are filled in order, so it gallops forward from the latest epoch it knew of and then
// bisects, each step matching one epoch's subjects only.
func (s *Store) readTip(ctx context.Context, conv string) (storedEvent, error) {
	known, _ := s.epochs.Get(conv)
	last, err := s.lastInEpoch(ctx, conv, known)
	if errors.Is(err, jetstream.ErrMsgNotFound) && known > 0 {
		known = 0 // a stream replaced under us: look from the start
		last, err = s.lastInEpoch(ctx, conv, known)
	}
	if err != nil {
		return storedEvent{}, err
	}
	// Invariant: epoch lo exists and last is its last event; epoch hi does not exist.
	lo, hi := known, known+1
	for step := uint64(1); ; step *= 2 {
		next, err := s.lastInEpoch(ctx, conv, hi)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return storedEvent{}, err
		}
		lo, last, hi = hi, next, hi+step
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		next, err := s.lastInEpoch(ctx, conv, mid)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			hi = mid
		case err != nil:
			return storedEvent{}, err
		default:
			lo, last = mid, next
		}
	}
	s.epochs.Add(conv, lo)
	return last, nil
}

func (s *Store) lastInEpoch(ctx context.Context, conv string, epoch uint64) (storedEvent, error) {
	e, err := s.readLeader(ctx, msgGetRequest{LastFor: epochSubjects(conv, epoch)})
	if err == nil {
		_, err = e.conversationTip()
	}
	return e, err
}

// isConversationEvent reports whether events of type typ carry the conversation's state (and
// are on its meta subjects).
func isConversationEvent(typ string) bool {
	return typ == domain.TypeConversationCreated || typ == domain.TypeMemberJoined || typ == domain.TypeMemberLeft
}

// decideOnConversation runs decide against the conversation's state and appends the event it
// returns, chained to the conversation's last event and expecting that event to be the last
// still. A refused append, or a decision refused on cached state, is decided again on fresh
// state. decide returns a nil event when there is nothing to append; fresh forces the first
// decision onto fresh state.
func (s *Store) decideOnConversation(ctx context.Context, convID string, fresh bool, decide func(domain.Conversation) (*domain.Event, error), opts ...jetstream.PublishOpt) (*domain.Event, uint64, error) {
	unlock, err := s.lock(ctx, convID)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	for attempt := range maxAttempts {
		c, err := s.conversation(ctx, convID, fresh)
		if err != nil {
			return nil, 0, err
		}
		e, err := decide(c.conv)
		if err != nil {
			if !fresh {
				fresh = true // the cache may be behind another node's change: decide on fresh state
				continue
			}
			return nil, 0, err
		}
		if e == nil {
			if !fresh {
				fresh = true // "nothing to do" on cached state may be stale too
				continue
			}
			return nil, c.seq, nil
		}
		pos, filter, expect := s.layout.next(convID, c.tip)
		data := domain.Chain(e, c.tip.Hash)
		ack, err := s.append(ctx, *e, data, pos, append(opts, jetstream.WithExpectLastSequenceForSubject(expect, filter))...)
		if isConflict(err) {
			s.convs.Remove(convID)
			fresh = true
			if err := backOff(ctx, attempt); err != nil {
				return nil, 0, err
			}
			continue
		}
		if err != nil {
			s.convs.Remove(convID) // the append may have landed without its acknowledgement
			return nil, 0, err
		}
		e.Seq = ack.Sequence
		if ack.Duplicate {
			s.convs.Remove(convID)
			return e, ack.Sequence, errDuplicate
		}
		c.tip = Tip{Seq: ack.Sequence, Position: pos, Hash: e.Hash}
		s.epochs.Add(convID, pos/s.layout.EpochSize) // where a reload after a conflict starts looking
		if isConversationEvent(e.Type) {
			if after, err := domain.ConversationOf(*e); err == nil {
				c.conv, c.seq = after, ack.Sequence
			}
		}
		s.convs.Add(convID, c)
		return e, ack.Sequence, nil
	}
	return nil, 0, errBusy("conversation " + convID)
}

// errNoConversation answers for a conversation that does not exist, or that the caller may
// not know of.
var errNoConversation = domain.Errorf(domain.CodeNotFound, "conversation not found")

// errNoMessage answers for a message that does not exist, or that the caller may not know of.
var errNoMessage = domain.Errorf(domain.CodeNotFound, "message not found")

// errDuplicate reports that JetStream recognised an append as a retry (Nats-Msg-Id).
var errDuplicate = errors.New("duplicate append")

// AddMember adds user to a group. seq is the sequence of the member.joined event, or of the
// conversation's current state when user was a member already.
func (s *Store) AddMember(ctx context.Context, actor, convID, user string) (domain.Conversation, uint64, error) {
	if err := domain.ValidUserID(user); err != nil {
		return domain.Conversation{}, 0, err
	}
	// Outsiders hear "not found" about the conversation before anything about the user.
	if err := s.requireMember(ctx, convID, actor); err != nil {
		return domain.Conversation{}, 0, err
	}
	if err := s.requireUsers(ctx, []string{user}); err != nil {
		return domain.Conversation{}, 0, err
	}
	e, seq, err := s.decideOnConversation(ctx, convID, false, func(c domain.Conversation) (*domain.Event, error) {
		return domain.AddMember(c, actor, user, s.limits, s.now())
	})
	if err != nil {
		return domain.Conversation{}, 0, err
	}
	if e == nil {
		c, seq, err := s.Conversation(ctx, convID)
		return c, seq, err
	}
	c, err := domain.ConversationOf(*e)
	return c, seq, err
}

// requireMember answers not found unless actor is a member of the conversation now.
func (s *Store) requireMember(ctx context.Context, convID, actor string) error {
	for _, fresh := range []bool{false, true} {
		c, err := s.conversation(ctx, convID, fresh)
		if err != nil {
			return err
		}
		if c.conv.IsMember(actor) {
			return nil
		}
	}
	return errNoConversation
}

// RemoveMember removes user from a group: a member leaving, or the creator removing them.
func (s *Store) RemoveMember(ctx context.Context, actor, convID, user string) (domain.Conversation, uint64, error) {
	e, seq, err := s.decideOnConversation(ctx, convID, false, func(c domain.Conversation) (*domain.Event, error) {
		e, err := domain.RemoveMember(c, actor, user, s.now())
		return &e, err
	})
	if err != nil {
		return domain.Conversation{}, 0, err
	}
	c, err := domain.ConversationOf(*e)
	return c, seq, err
}

// SendMessage appends a message unless the sender already sent one with this clientMsgID to
// this conversation, in which case it returns that one with created false. seq is the stream
// position of what the answer shows: the message's creation, or for a retry its last change
// since (an edit, a delete), so that a read with that min_seq shows the same.
func (s *Store) SendMessage(ctx context.Context, actor, convID, clientMsgID, body string) (m domain.Message, created bool, seq uint64, err error) {
	if err := domain.ValidClientMsgID(clientMsgID); err != nil {
		return m, false, 0, err
	}
	msgID := domain.MessageID(convID, actor, clientMsgID)
	if !domain.ValidConversationID(convID) {
		return m, false, 0, errNoConversation
	}
	// A retry at any later time: the message's own subject already holds it. The answer is the
	// message as it is now (edited or deleted since), never a deleted text, and only to a member:
	// a sender removed since is answered as any non-member is.
	if seen, err := s.messageSeen(ctx, msgID); err != nil {
		return m, false, 0, err
	} else if seen {
		c, _, err := s.Conversation(ctx, convID)
		if err != nil {
			return m, false, 0, err
		}
		if !c.IsMember(actor) {
			return m, false, 0, errNoConversation
		}
		m, seq, err := s.Message(ctx, msgID)
		return m, false, seq, err
	}
	e, _, err := s.decideOnConversation(ctx, convID, false, func(c domain.Conversation) (*domain.Event, error) {
		e, err := domain.SendMessage(c, actor, clientMsgID, body, s.limits, s.now())
		return &e, err
	}, jetstream.WithMsgID(msgID))
	if errors.Is(err, errDuplicate) {
		// A concurrent retry won the race; answer with what it stored.
		stored, err := s.eventAt(ctx, e.Seq)
		if err != nil {
			return m, false, 0, err
		}
		m, err := domain.MessageOf(stored)
		return m, false, m.Seq, err
	}
	if err != nil {
		return m, false, 0, err
	}
	m, err = domain.MessageOf(*e)
	return m, true, m.Seq, err
}

// Message returns a message's current state from the stream: its first event, changed by its
// last. It also returns the sequence of that last event, which an edit or delete expects.
func (s *Store) Message(ctx context.Context, msgID string) (domain.Message, uint64, error) {
	first, err := s.firstMessageEvent(ctx, msgID)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return first, 0, errNoMessage
	}
	if err != nil {
		return first, 0, err
	}
	subjects, _ := messageSubjects(msgID)
	last, lastSeq, err := s.lastEvent(ctx, subjects)
	if err != nil {
		return first, 0, err
	}
	if lastSeq == first.Seq {
		return first, lastSeq, nil
	}
	m := first
	if last.Type == domain.TypeMessageDeleted {
		// A tombstone keeps the time of the message's last edit, as the read models do: the
		// events between are read one by one (a message has few).
		for seq := first.Seq; ; {
			e, err := s.readLeader(ctx, msgGetRequest{Seq: seq + 1, NextFor: subjects})
			if err != nil {
				return first, 0, err
			}
			if e.Seq >= lastSeq {
				break
			}
			if e.Type == domain.TypeMessageEdited {
				if m, err = domain.ApplyMessage(m, e.Event); err != nil {
					return first, 0, err
				}
			}
			seq = e.Seq
		}
	}
	m, err = domain.ApplyMessage(m, last)
	return m, lastSeq, err
}

// EditMessage replaces the body of the actor's own message.
func (s *Store) EditMessage(ctx context.Context, actor, msgID, body string) (domain.Message, uint64, error) {
	return s.changeMessage(ctx, actor, msgID, func(c domain.Conversation, m domain.Message) (domain.Event, error) {
		return domain.EditMessage(c, m, actor, body, s.limits, s.now())
	})
}

// DeleteMessage deletes a message (its author, or the group's creator).
func (s *Store) DeleteMessage(ctx context.Context, actor, msgID string) (domain.Message, uint64, error) {
	return s.changeMessage(ctx, actor, msgID, func(c domain.Conversation, m domain.Message) (domain.Event, error) {
		return domain.DeleteMessage(c, m, actor, s.now())
	})
}

// changeMessage decides an edit or delete on fresh state and appends it expecting the
// conversation unchanged since, so an edit can never resurrect a message deleted in the
// meantime, nor act for someone removed in the meantime.
func (s *Store) changeMessage(ctx context.Context, actor, msgID string, decide func(domain.Conversation, domain.Message) (domain.Event, error)) (domain.Message, uint64, error) {
	convID, _, err := domain.SplitMessageID(msgID)
	if err != nil {
		return domain.Message{}, 0, err
	}
	var m domain.Message
	e, seq, err := s.decideOnConversation(ctx, convID, true, func(c domain.Conversation) (*domain.Event, error) {
		// Read after the conversation's tip, so the message is at least as new as it.
		var err error
		if m, _, err = s.Message(ctx, msgID); err != nil {
			return nil, err
		}
		e, err := decide(c, m)
		return &e, err
	})
	if domain.ErrorCode(err) == domain.CodeNotFound {
		// The same answer whether the conversation exists or not: direct conversation ids are
		// derived from user ids, and which pairs of users talk is not the caller's to probe.
		return domain.Message{}, 0, errNoMessage
	}
	if err != nil {
		return domain.Message{}, 0, err
	}
	m, err = domain.ApplyMessage(m, *e)
	return m, seq, err
}

// Export writes the events f selects as JSON Lines (see the package function Export).
func (s *Store) Export(ctx context.Context, f ExportFilter, w io.Writer) (int, error) {
	return Export(ctx, s.stream, f, w)
}

// MarkRead moves the actor's read marker in a conversation.
func (s *Store) MarkRead(ctx context.Context, actor, convID string, seq uint64) (uint64, error) {
	_, evSeq, err := s.decideOnConversation(ctx, convID, false, func(c domain.Conversation) (*domain.Event, error) {
		e, err := domain.MarkRead(c, actor, seq, s.now())
		return &e, err
	})
	return evSeq, err
}

// messageSeen reports whether the message's subject holds an event. It is the one read on the
// send path, so it is a direct get that any replica may answer (see readLeader). A replica in
// step with its leader lags by a few appends at most, and JetStream's duplicate window
// (Nats-Msg-Id) catches a retry of a message sent moments ago. But a replica catching up after
// a restart answers direct gets before it has caught up, and a retry that comes after the
// window and reaches it would store the message a second time: so on a replicated stream, "not
// seen" is asked again of the leader. A single server (the embedded default) is its own leader.
func (s *Store) messageSeen(ctx context.Context, msgID string) (bool, error) {
	subject, err := messageSubjects(msgID)
	if err != nil {
		return false, err
	}
	_, err = s.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return false, wrapLookup(err, subject)
	case !s.replicated:
		return false, nil
	}
	_, _, err = getFromLeader(ctx, s.js.Conn(), s.getSubject, msgGetRequest{Seq: 1, NextFor: subject})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *Store) firstMessageEvent(ctx context.Context, msgID string) (domain.Message, error) {
	subject, err := messageSubjects(msgID)
	if err != nil {
		return domain.Message{}, err
	}
	e, err := s.readLeader(ctx, msgGetRequest{Seq: 1, NextFor: subject})
	if err != nil {
		return domain.Message{}, err
	}
	return domain.MessageOf(e.Event)
}

func (s *Store) lastEvent(ctx context.Context, subject string) (domain.Event, uint64, error) {
	e, err := s.readLeader(ctx, msgGetRequest{LastFor: subject})
	return e.Event, e.Seq, err
}

func (s *Store) eventAt(ctx context.Context, seq uint64) (domain.Event, error) {
	e, err := s.readLeader(ctx, msgGetRequest{Seq: seq})
	return e.Event, err
}

// wrapLookup keeps ErrMsgNotFound recognisable and turns every other failure into
// "unavailable": the caller may retry once NATS is back.
func wrapLookup(err error, what string) error {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	return domain.Unavailable("the event stream is unavailable", fmt.Errorf("read %s: %w", what, err))
}

// append publishes e, encoded as data (see domain.Chain), at position pos of its conversation,
// to its subject and waits for the
// stream's acknowledgement: only then is the event durable and the API may answer 2xx
// (guarantee 1).
func (s *Store) append(ctx context.Context, e domain.Event, data []byte, pos uint64, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	m, err := s.layout.msg(e, data, pos)
	if err != nil {
		return nil, err
	}
	opts = append([]jetstream.PublishOpt{
		jetstream.WithMsgID(e.ID),
		jetstream.WithExpectStream(StreamName),
		// "No responders" means no server stored it: on a cluster, while a stream leader is
		// being elected or its interest reaches this server. Nothing was stored, so trying
		// again for a while is safe; a disconnected client still fails at once.
		jetstream.WithRetryWait(100 * time.Millisecond),
		jetstream.WithRetryAttempts(20),
	}, opts...)
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	s.Metrics.Append(e.Type, isConflict(err), err)
	if err != nil {
		if isConflict(err) {
			return nil, err
		}
		return nil, domain.Unavailable("the event stream is unavailable", fmt.Errorf("append %s to %s: %w", e.Type, m.Subject, err))
	}
	return ack, nil
}

func errBusy(what string) error {
	return domain.Errorf(domain.CodeConflict, "%s changed too often while deciding; try again", what)
}
