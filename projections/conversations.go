package projections

import (
	"context"
	"errors"
	"maps"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Conversations is the read model of conversations, their members and each member's read
// marker: what a user's conversation list shows.
type Conversations struct{ pool *pgxpool.Pool }

// NewConversations returns the conversations read model on pool.
func NewConversations(pool *pgxpool.Pool) Conversations { return Conversations{pool: pool} }

func (Conversations) apply(b *pgx.Batch, e domain.Event) error {
	switch e.Type {
	case domain.TypeConversationCreated:
		c, err := domain.ConversationOf(e)
		if err != nil {
			return err
		}
		b.Queue(`INSERT INTO conversations (id, kind, title, creator_id, created_at, last_activity_seq, last_activity_at)
			VALUES ($1, $2, $3, $4, $5, $6, $5) ON CONFLICT (id) DO NOTHING`,
			c.ID, c.Kind, c.Title, c.CreatorID, e.Time, e.Seq)
		b.Queue(`INSERT INTO members (conversation_id, user_id, joined_seq, joined_at)
			SELECT $1, unnest($2::text[]), $3, $4 ON CONFLICT DO NOTHING`, c.ID, c.Members, e.Seq, e.Time)
	case domain.TypeMemberJoined, domain.TypeMemberLeft:
		d, err := domain.DecodeData[domain.MemberData](e)
		if err != nil {
			return err
		}
		if e.Type == domain.TypeMemberJoined {
			b.Queue(`INSERT INTO members (conversation_id, user_id, joined_seq, joined_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT DO NOTHING`, e.ConversationID, d.UserID, e.Seq, e.Time)
		} else {
			b.Queue(`INSERT INTO departures (conversation_id, user_id, joined_seq, left_seq)
				SELECT conversation_id, user_id, joined_seq, $3 FROM members WHERE conversation_id = $1 AND user_id = $2
				ON CONFLICT DO NOTHING`, e.ConversationID, d.UserID, e.Seq)
			b.Queue(`DELETE FROM members WHERE conversation_id = $1 AND user_id = $2`, e.ConversationID, d.UserID)
		}
		queueActivity(b, e)
	case domain.TypeReadUpdated:
		d, err := domain.DecodeData[domain.ReadData](e)
		if err != nil {
			return err
		}
		// A marker beyond the conversation's last message would hide messages still to come.
		b.Queue(`UPDATE members m SET last_read_seq = LEAST($3, c.last_activity_seq)
			FROM conversations c
			WHERE c.id = $1 AND m.conversation_id = $1 AND m.user_id = $2 AND m.last_read_seq < LEAST($3, c.last_activity_seq)`,
			e.ConversationID, d.UserID, min(d.Seq, domain.MaxSeq)) // a marker past int8 (refused since) must not stop the projector
	}
	return nil
}

// applyCreated moves each conversation's last message, and each sender's read marker (sending
// a message means having read everything before it), once per run of message.created events:
// to the run's newest message in that conversation. A bulk load defers these updates (see
// bulk.go): deferredConversations.apply must know whose rows each event type reads or writes.
func (Conversations) applyCreated(b *pgx.Batch, run []created) {
	a := activity{}
	a.add(run)
	a.queue(b)
}

// activity is what runs of message.created events leave in conversations and members, merged:
// per conversation its newest message, and per sender there their newest message.
type activity map[string]*convActivity

// convActivity is a conversation's part of an activity.
type convActivity struct {
	seq     uint64            // the newest message
	at      time.Time         // and its time
	readers map[string]uint64 // sender → sequence of their newest message here
}

func (c *convActivity) clone() *convActivity {
	out := *c
	out.readers = maps.Clone(c.readers)
	return &out
}

// add merges a run of message.created events, in stream order. The ids it keeps are copies:
// a decoder may hand out strings that share the memory of their whole event, which a bulk load
// would otherwise keep for as long as the activity waits.
func (a activity) add(run []created) {
	for _, m := range run {
		c := a[m.ConversationID]
		if c == nil {
			c = &convActivity{readers: map[string]uint64{}}
			a[strings.Clone(m.ConversationID)] = c
		}
		c.seq, c.at = m.Seq, m.Time
		if _, ok := c.readers[m.SenderID]; !ok {
			c.readers[strings.Clone(m.SenderID)] = m.Seq
		} else {
			c.readers[m.SenderID] = m.Seq
		}
	}
}

// merge merges newer activity into a. It takes over newer's entries where a has none, so newer
// is not to be used afterwards.
func (a activity) merge(newer activity) {
	for id, n := range newer {
		c := a[id]
		if c == nil {
			a[id] = n
			continue
		}
		c.seq, c.at = n.seq, n.at
		for u, seq := range n.readers {
			c.readers[u] = seq
		}
	}
}

// queue queues the UPDATEs that write a onto b: each conversation's last message and activity,
// and each sender's read marker, moved forward only.
func (a activity) queue(b *pgx.Batch) {
	if len(a) == 0 {
		return
	}
	var convs []string
	var seqs []uint64
	var times []time.Time
	var rconvs, rusers []string
	var rseqs []uint64
	for id, c := range a {
		convs, seqs, times = append(convs, id), append(seqs, c.seq), append(times, c.at)
		for u, seq := range c.readers {
			rconvs, rusers, rseqs = append(rconvs, id), append(rusers, u), append(rseqs, seq)
		}
	}
	b.Queue(`UPDATE conversations c SET last_message_seq = u.seq, last_activity_seq = u.seq, last_activity_at = u.at
		FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, seq, at)
		WHERE c.id = u.id AND c.last_activity_seq < u.seq`, convs, seqs, times)
	b.Queue(`UPDATE members m SET last_read_seq = u.seq
		FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(conv, usr, seq)
		WHERE m.conversation_id = u.conv AND m.user_id = u.usr AND m.last_read_seq < u.seq`, rconvs, rusers, rseqs)
}

func queueActivity(b *pgx.Batch, e domain.Event) {
	b.Queue(`UPDATE conversations SET last_activity_seq = $2, last_activity_at = $3
		WHERE id = $1 AND last_activity_seq < $2`, e.ConversationID, e.Seq, e.Time)
}

// Member is a member of a conversation as the API shows it.
type Member struct {
	UserID      string `json:"user_id" db:"user_id"`
	DisplayName string `json:"display_name" db:"display_name"`
}

// ConversationView is a conversation as one of its members sees it.
type ConversationView struct {
	ID              string          `json:"id"`
	Kind            string          `json:"kind"`
	Title           string          `json:"title"`
	CreatorID       string          `json:"creator_id"`
	CreatedAt       time.Time       `json:"created_at"`
	LastActivitySeq uint64          `json:"last_activity_seq"`
	LastActivityAt  time.Time       `json:"last_activity_at"`
	LastReadSeq     uint64          `json:"last_read_seq"`
	UnreadCount     int64           `json:"unread_count"`
	LastMessage     *domain.Message `json:"last_message"`
	Members         []Member        `json:"members"`
}

// conversationSelect reads conversations with the caller's read marker, unread count (messages
// by others after the marker, not deleted) and last message. $1 is the caller.
const conversationSelect = `
SELECT c.id, c.kind, c.title, c.creator_id, c.created_at, c.last_activity_seq, c.last_activity_at, m.last_read_seq,
       (SELECT count(*) FROM messages x
         WHERE x.conversation_id = c.id AND x.seq > m.last_read_seq
           AND x.sender_id <> m.user_id AND x.deleted_at IS NULL) AS unread_count,
       lm.id, lm.seq, lm.sender_id, lm.client_msg_id, lm.body, lm.created_at, lm.edited_at, lm.deleted_at
  FROM members m
  JOIN conversations c ON c.id = m.conversation_id
  LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_message_seq
 WHERE m.user_id = $1`

func scanConversation(row pgx.CollectableRow) (ConversationView, error) {
	var v ConversationView
	var (
		id, sender, clientID, body *string
		seq                        *uint64
		created, edited, deleted   *time.Time
	)
	err := row.Scan(&v.ID, &v.Kind, &v.Title, &v.CreatorID, &v.CreatedAt, &v.LastActivitySeq, &v.LastActivityAt,
		&v.LastReadSeq, &v.UnreadCount, &id, &seq, &sender, &clientID, &body, &created, &edited, &deleted)
	if err != nil {
		return v, err
	}
	if id != nil {
		v.LastMessage = &domain.Message{
			ID: *id, ConversationID: v.ID, Seq: *seq, SenderID: *sender, ClientMsgID: *clientID,
			Body: *body, CreatedAt: *created, EditedAt: edited, Deleted: deleted != nil,
		}
	}
	return v, nil
}

// List returns the user's conversations, most recent activity first. before is the
// last_activity_seq of the last conversation of the previous page (0 for the first page).
func (c Conversations) List(ctx context.Context, user string, before uint64, limit int) ([]ConversationView, bool, error) {
	if before == 0 {
		before = maxSeq
	}
	rows, _ := c.pool.Query(ctx, conversationSelect+` AND c.last_activity_seq < $2
		ORDER BY c.last_activity_seq DESC LIMIT $3`, user, before, limit+1)
	list, err := pgx.CollectRows(rows, scanConversation)
	if err != nil {
		return nil, false, readErr(err, "list conversations")
	}
	more := len(list) > limit
	if more {
		list = list[:limit]
	}
	if err := c.attachMembers(ctx, list); err != nil {
		return nil, false, err
	}
	return list, more, nil
}

// Get returns one conversation as user sees it; not found unless user is a member.
func (c Conversations) Get(ctx context.Context, user, id string) (ConversationView, error) {
	rows, _ := c.pool.Query(ctx, conversationSelect+` AND c.id = $2`, user, id)
	v, err := pgx.CollectExactlyOneRow(rows, scanConversation)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, domain.Errorf(domain.CodeNotFound, "conversation not found")
	}
	if err != nil {
		return v, readErr(err, "get conversation")
	}
	list := []ConversationView{v}
	if err := c.attachMembers(ctx, list); err != nil {
		return v, err
	}
	return list[0], nil
}

// IsMember reports whether user is a member of conversation id in the read model.
func (c Conversations) IsMember(ctx context.Context, user, id string) (bool, error) {
	var ok bool
	err := c.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)`, id, user).Scan(&ok)
	if err != nil {
		return false, readErr(err, "check membership")
	}
	return ok, nil
}

func (c Conversations) attachMembers(ctx context.Context, list []ConversationView) error {
	if len(list) == 0 {
		return nil
	}
	ids := make([]string, len(list))
	index := make(map[string]int, len(list))
	for i, v := range list {
		ids[i] = v.ID
		index[v.ID] = i
		list[i].Members = []Member{}
	}
	rows, err := c.pool.Query(ctx, `SELECT m.conversation_id, m.user_id, coalesce(u.display_name, m.user_id)
		FROM members m LEFT JOIN users u ON u.id = m.user_id
		WHERE m.conversation_id = ANY($1) ORDER BY m.conversation_id, m.user_id`, ids)
	if err != nil {
		return readErr(err, "list members")
	}
	var conv string
	var m Member
	_, err = pgx.ForEachRow(rows, []any{&conv, &m.UserID, &m.DisplayName}, func() error {
		i := index[conv]
		list[i].Members = append(list[i].Members, m)
		return nil
	})
	if err != nil {
		return readErr(err, "list members")
	}
	return nil
}

// maxSeq stands for "no upper bound" in keyset pagination (bigint's maximum).
const maxSeq = uint64(1<<63 - 1)

// Span is a stretch of stream sequences during which a user belonged to a conversation: from
// the event that made them a member to the one that removed them (maxSeq while they still are).
type Span struct {
	ConversationID string
	From, To       uint64
}

// Spans returns user's memberships that reach past after: the current ones and those that
// ended after it. A resuming client is told about exactly the events inside them.
func (c Conversations) Spans(ctx context.Context, user string, after uint64) ([]Span, error) {
	rows, _ := c.pool.Query(ctx, `
		SELECT conversation_id, joined_seq, $2::bigint FROM members WHERE user_id = $1
		UNION ALL
		SELECT conversation_id, joined_seq, left_seq FROM departures WHERE user_id = $1 AND left_seq > $3`,
		user, maxSeq, after)
	spans, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Span, error) {
		var s Span
		err := row.Scan(&s.ConversationID, &s.From, &s.To)
		return s, err
	})
	if err != nil {
		return nil, readErr(err, "list memberships")
	}
	return spans, nil
}

// Contacts returns everyone who shares a conversation with user: who hears of user's presence.
func (c Conversations) Contacts(ctx context.Context, user string) ([]string, error) {
	rows, _ := c.pool.Query(ctx, `SELECT DISTINCT o.user_id FROM members m
		JOIN members o ON o.conversation_id = m.conversation_id
		WHERE m.user_id = $1 AND o.user_id <> $1`, user)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, readErr(err, "list contacts")
	}
	return ids, nil
}
