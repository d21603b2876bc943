package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/streams"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
)

// Frame is what a WebSocket client receives about an event: the event itself, with its stream
// sequence, so that most clients never need a GET. The same frame is built for live pushes and
// for the replay of a resuming client.
type Frame struct {
	Type           string          `json:"type"`
	Seq            uint64          `json:"seq,omitempty"`
	ConversationID string          `json:"conversation_id,omitempty"`
	Actor          string          `json:"actor,omitempty"`
	Time           *time.Time      `json:"time,omitempty"`
	Data           json.RawMessage `json:"data,omitempty"`
}

// FrameOf returns the frame of an event.
func FrameOf(e domain.Event) Frame {
	t := e.Time
	return Frame{Type: e.Type, Seq: e.Seq, ConversationID: e.ConversationID, Actor: e.Actor, Time: &t, Data: e.Data}
}

func encodeFrame(e domain.Event) ([]byte, error) {
	b, err := json.Marshal(FrameOf(e))
	if err != nil {
		return nil, fmt.Errorf("encode frame of %s at %d: %w", e.Type, e.Seq, err)
	}
	return b, nil
}

// Push is one encoded frame and the users it goes to.
type Push struct {
	Seq   uint64
	Users []string
	Frame []byte
}

// Audience tracks who belongs to which conversation while walking events in stream order, and
// answers who is told about each event. It starts from the members before the first event.
type Audience map[string][]string

// Of returns the users told about e, and updates the audience with e's membership changes:
// members hear about their conversation's events, a member who leaves hears about leaving,
// and read markers go only to their owner (so a user's tabs stay in step).
func (a Audience) Of(e domain.Event) []string {
	switch e.Type {
	case domain.TypeConversationCreated, domain.TypeMemberJoined, domain.TypeMemberLeft:
		c, err := domain.ConversationOf(e)
		if err != nil {
			return nil
		}
		before := a[e.ConversationID]
		a[e.ConversationID] = c.Members
		if e.Type == domain.TypeMemberLeft {
			return append(append([]string(nil), c.Members...), leaver(before, c.Members)...)
		}
		return c.Members
	case domain.TypeMessageCreated, domain.TypeMessageEdited, domain.TypeMessageDeleted:
		return a[e.ConversationID]
	case domain.TypeReadUpdated:
		d, err := domain.DecodeData[domain.ReadData](e)
		if err != nil {
			return nil
		}
		return []string{d.UserID}
	}
	return nil
}

// rewind turns the audience after events into the one before them, undoing their membership
// changes: each membership event carries the conversation as it left it, so the first one of a
// conversation tells who its members were before.
func (a Audience) rewind(events []domain.Event) {
	seen := map[string]bool{}
	for _, e := range events {
		if seen[e.ConversationID] {
			continue
		}
		switch e.Type {
		case domain.TypeConversationCreated:
			delete(a, e.ConversationID)
		case domain.TypeMemberJoined, domain.TypeMemberLeft:
			d, err := domain.DecodeData[domain.MemberData](e)
			if err != nil {
				continue // Of skips it too
			}
			members := slices.DeleteFunc(slices.Clone(d.Conversation.Members), func(u string) bool { return u == d.UserID })
			if e.Type == domain.TypeMemberLeft {
				members = append(members, d.UserID)
			}
			a[e.ConversationID] = members
		default:
			continue
		}
		seen[e.ConversationID] = true
	}
}

func leaver(before, after []string) []string {
	var out []string
	for _, u := range before {
		found := false
		for _, v := range after {
			found = found || u == v
		}
		if !found {
			out = append(out, u)
		}
	}
	return out
}

// memberConversations bounds how many conversations' members a leader remembers, and
// rememberedMembers which: larger groups are read from PostgreSQL with each batch. At most
// 2,000,000 user ids, then, whatever the groups' size limit.
const (
	memberConversations = 20_000
	rememberedMembers   = 100
)

func newMembers() *lru.Cache[string, []string] {
	c, _ := lru.New[string, []string](memberConversations) // only errs on size <= 0
	return c
}

// audienceOf returns the members of the conversations of events before them, inside the
// projector's transaction: from what this leader's own commits left (remember), and from
// PostgreSQL for the rest. Only the leader writes memberships, and only through events whose
// audience it walks, so what it remembers is what the members table holds at its checkpoint,
// for as long as its term lasts and every transaction it began is known to have committed or
// not (applyTx forgets everything on any error; takeOver starts afresh).
func (p *Projector) audienceOf(ctx context.Context, tx querier, events []domain.Event) (Audience, error) {
	a := Audience{}
	var unknown []domain.Event
	for _, e := range events {
		if e.ConversationID == "" {
			continue
		}
		if _, ok := a[e.ConversationID]; ok {
			continue
		}
		if users, ok := p.members.Get(e.ConversationID); ok {
			a[e.ConversationID] = users
		} else {
			unknown = append(unknown, e)
		}
	}
	if len(unknown) == 0 {
		return a, nil
	}
	read, err := membersOf(ctx, tx, unknown)
	if err != nil {
		return nil, err
	}
	maps.Copy(a, read)
	return a, nil
}

// remember keeps the audience as a committed batch left it. The slices are never changed in
// place: Audience.Of and rewind replace them.
func (p *Projector) remember(a Audience) {
	for conv, users := range a {
		if len(users) > rememberedMembers {
			p.members.Remove(conv) // what it held is no longer the table's
			continue
		}
		p.members.Add(conv, users)
	}
}

// querier is a transaction or a pool.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// membersOf reads the current members of the conversations of events: inside the projector's
// transaction, the audience before the batch.
func membersOf(ctx context.Context, tx querier, events []domain.Event) (Audience, error) {
	var ids []string
	seen := map[string]bool{}
	for _, e := range events {
		if e.ConversationID != "" && !seen[e.ConversationID] {
			seen[e.ConversationID] = true
			ids = append(ids, e.ConversationID)
		}
	}
	a := Audience{}
	if len(ids) == 0 {
		return a, nil
	}
	rows, err := tx.Query(ctx, `SELECT conversation_id, array_agg(user_id ORDER BY user_id) FROM members
		WHERE conversation_id = ANY($1) GROUP BY conversation_id`, ids)
	if err != nil {
		return nil, fmt.Errorf("read members for pushes: %w", err)
	}
	var conv string
	var users []string
	_, err = pgx.ForEachRow(rows, []any{&conv, &users}, func() error {
		a[conv] = users
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read members for pushes: %w", err)
	}
	return a, nil
}

// pushes encodes each event's frame once and names its audience.
func pushes(a Audience, events []domain.Event) []Push {
	out := make([]Push, 0, len(events))
	for _, e := range events {
		users := a.Of(e)
		if len(users) == 0 {
			continue
		}
		joiner := ""
		if e.Type == domain.TypeMemberJoined {
			if d, err := domain.DecodeData[domain.MemberData](e); err == nil {
				joiner = d.UserID
			}
		}
		var rest []string
		for _, u := range users {
			if u == joiner {
				if frame, err := encodeFrame(frameFor(e, u)); err == nil {
					out = append(out, Push{Seq: e.Seq, Users: []string{u}, Frame: frame})
				}
			} else {
				rest = append(rest, u)
			}
		}
		if frame, err := encodeFrame(e); err == nil && len(rest) > 0 {
			out = append(out, Push{Seq: e.Seq, Users: rest, Frame: frame})
		}
	}
	return out
}

// frameFor is the event as user should see it: to the member who joins, member.joined is the
// arrival of a conversation, so it comes as conversation.created (same seq; data carries the
// whole conversation). Everyone else sees the event as it is.
func frameFor(e domain.Event, user string) domain.Event {
	if e.Type != domain.TypeMemberJoined {
		return e
	}
	if d, err := domain.DecodeData[domain.MemberData](e); err == nil && d.UserID == user {
		e.Type = domain.TypeConversationCreated
	}
	return e
}

// publish sends each push to its users' subjects on core NATS, each with the seq of the push
// to the same user before it. A lost push is not lost data: the receiving node notices the gap
// at the user's next push, and the client resumes from its last seq (see docs/api.md).
func (p *Projector) publish(list []Push) {
	if p.Publish == nil {
		return
	}
	for _, ps := range list {
		for _, u := range ps.Users {
			prev, _ := p.pushed.Get(u)
			p.pushed.Add(u, ps.Seq) // a push that fails is a gap the next one reveals
			p.unchecked[u] = struct{}{}
			err := p.Publish(streams.PushSubject(u), ps.Seq, prev, ps.Frame)
			p.Metrics.Pushed(err)
			if err != nil {
				p.log.Warn("push failed; the client will resume", "seq", ps.Seq, "user", u, "err", err)
			}
		}
	}
}

// check sends each user pushed to since the last check a push without a frame that names the
// last push to them. A node that has not delivered that one lost it, as it would notice at the
// user's next push: checks bound how long a lost last push goes unnoticed.
//
// Then, once the checks have left this node, it records in the checkpoint row how far they
// reach: every event up to the checkpoint was pushed before them (pushes follow each commit in
// this same loop). A successor pushes again what comes after (see repushFrom), because a push
// lost there would otherwise go unnoticed: the successor's pushes name no predecessor.
func (p *Projector) check(ctx context.Context) {
	if p.Publish == nil {
		return
	}
	upTo := p.Position()
	for u := range p.unchecked {
		if last, ok := p.pushed.Get(u); ok {
			p.sendCheck(u, last)
		}
	}
	clear(p.unchecked)
	if upTo <= p.checked || p.nc == nil {
		return
	}
	if err := p.nc.FlushTimeout(time.Second); err != nil {
		p.log.Warn("push checks not confirmed; a successor will push more again", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := p.pool.Exec(ctx, `UPDATE projector_checkpoints SET checked_seq = $2 WHERE name = $1 AND term = $3 AND checked_seq < $2`,
		p.name, upTo, p.term)
	if err != nil {
		p.log.Warn("could not record the checked pushes; a successor will push more again", "err", err)
		return
	}
	p.checked = upTo
}

// checkForgotten checks the last push to a user the leader is about to forget (see pushedUsers),
// if it was not checked yet: their next push names no predecessor.
func (p *Projector) checkForgotten(user string, last uint64) {
	if _, ok := p.unchecked[user]; ok {
		delete(p.unchecked, user)
		p.sendCheck(user, last)
	}
}

func (p *Projector) sendCheck(user string, last uint64) {
	if err := p.Publish(streams.CheckSubject(user), 0, last, nil); err != nil {
		p.log.Warn("push check failed", "user", user, "err", err)
	}
}
