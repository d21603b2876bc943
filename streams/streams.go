// Package streams is the JetStream adapter: it runs the embedded NATS server, sets up the
// CHAT_EVENTS stream, and appends events with the expectations that make each decision of the
// domain atomic with its append (see Store).
//
// Subjects of the stream (conversation and user ids are subject-safe by construction):
//
//	chat.evt.user.<user>                         user.created, user.updated
//	chat.evt.conv.<conv>.<epoch>.meta            conversation.created, member.joined, member.left
//	chat.evt.conv.<conv>.<epoch>.msg.<local>     message.created, .edited, .deleted of one message
//	chat.evt.conv.<conv>.<epoch>.read.<user>     read.updated
//
// A conversation's events are numbered by their position in its chain (0 for
// conversation.created, carried in the Chat-Position header), and its epoch k holds positions
// k·EpochSize to (k+1)·EpochSize-1 (see Layout).
//
// Push subjects (chat.push.<user>) are plain core NATS, outside the stream.
package streams

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the name of the events stream, the source of truth.
const StreamName = "CHAT_EVENTS"

// SubjectRoot covers every event subject.
const SubjectRoot = "chat.evt.>"

// probeSubject is where Setup probes for the stream's leader with an append that is always
// refused (see awaitLeader); no event is ever stored there.
const probeSubject = "chat.evt.probe"

// Config says how the stream is created.
type Config struct {
	// Replicas of the stream: 1 on the embedded server, 3 on a production cluster.
	Replicas int
	// DuplicateWindow is how long JetStream remembers Nats-Msg-Id values. Idempotency beyond it
	// rests on per-message subjects (see Store.SendMessage), so it only needs to cover
	// concurrent retries.
	DuplicateWindow time.Duration
	// DenyDelete makes JetStream refuse message deletes and purges by any client: the log can
	// only grow. JetStream never lets a stream take this back, so once set it stays set, even if
	// a later start asks without it.
	DenyDelete bool
	// EpochSize is how many events of a conversation share one epoch of subjects (see Layout):
	// DefaultEpochSize when zero. It is fixed when the stream is created and kept in the
	// stream's metadata; a later start cannot change it.
	EpochSize uint64
}

// Setup creates the stream, or updates it to cfg, and returns it.
func Setup(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Stream, error) {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	// What an existing stream says (its layout, its deny-delete) must be read, not guessed: on a
	// failed lookup, writing the defaults over it could change the epoch size under its events.
	switch existing, err := js.Stream(ctx, StreamName); {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("look up stream %s: %w", StreamName, err)
	default:
		info := existing.CachedInfo()
		cfg.DenyDelete = cfg.DenyDelete || info.Config.DenyDelete
		switch l, err := layoutOf(info.Config); {
		case err == nil:
			cfg.EpochSize = l.EpochSize
		case info.State.Msgs > 0:
			return nil, err
		}
	}
	if cfg.EpochSize == 0 {
		cfg.EpochSize = DefaultEpochSize
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "chatd events: the source of truth; read models are built from it",
		Subjects:    []string{SubjectRoot},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy, // keep everything: state is derived from the whole log
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		AllowDirect: true, // state lookups by subject are direct gets, served by any replica
		DenyDelete:  cfg.DenyDelete,
		DenyPurge:   cfg.DenyDelete,
		Metadata:    map[string]string{metaLayout: layoutVersion, metaEpochSize: strconv.FormatUint(cfg.EpochSize, 10)},
	})
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", StreamName, err)
	}
	if err := awaitLeader(ctx, js, StreamName, probeSubject); err != nil {
		return nil, err
	}
	return s, nil
}

// awaitLeader waits until appends to stream reach a leader through the server this connection
// uses: a replicated stream answers nothing until it has elected one, and for a moment after,
// until the leader's interest in the stream's subjects has reached the other servers ("no
// response from stream"). It probes with an append to probe (one of the stream's subjects) that
// expects a last sequence no stream has: the leader refuses it, and nothing is stored.
func awaitLeader(ctx context.Context, js jetstream.JetStream, stream, probe string) error {
	for {
		_, err := js.Publish(ctx, probe, nil, jetstream.WithExpectLastSequence(math.MaxUint64))
		var refused *jetstream.APIError
		if errors.As(err, &refused) {
			return nil
		}
		if err == nil {
			return fmt.Errorf("stream %s stored the probe at %s", stream, probe)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s has no leader: %w", stream, errors.Join(ctx.Err(), err))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DefaultEpochSize is the epoch size of a new stream (see Layout).
const DefaultEpochSize = 1024

// PositionHeader carries a conversation event's position in its conversation's chain.
const PositionHeader = "Chat-Position"

// The stream's metadata names its subject layout, so that a chatd never appends in one layout to
// a stream written in another.
const (
	metaLayout    = "chatd_layout"
	metaEpochSize = "chatd_epoch_size"
	layoutVersion = "2"
)

// Layout says on which subject each event is stored.
//
// Every append to a conversation expects the conversation's last sequence to be unchanged: that
// keeps its hash chain linear and makes each decision atomic with its append (guarantee 3). The
// server finds that sequence by matching every subject under the expectation's filter, and a
// message has a subject of its own (a retried send finds the original by it), so a filter over
// the whole conversation costs time in proportion to its history. Epochs bound it: the append at
// position p goes to epoch p/EpochSize and expects the last sequence over that epoch only (0
// when p starts the epoch). Epochs are filled in order and each holds exactly EpochSize
// positions, so an append decided on a stale tip still fails: if the tip it knows ends a full
// epoch, the next epoch is no longer empty; otherwise its own epoch has moved on. Lookups of one
// message or of the conversation's state match one subject per epoch instead.
type Layout struct {
	EpochSize uint64
}

// LayoutOf returns the layout of a stream that Setup created.
func LayoutOf(stream jetstream.Stream) (Layout, error) {
	return layoutOf(stream.CachedInfo().Config)
}

func layoutOf(cfg jetstream.StreamConfig) (Layout, error) {
	switch v := cfg.Metadata[metaLayout]; v {
	case layoutVersion:
	case "":
		return Layout{}, fmt.Errorf("stream %s holds events but its metadata names no subject layout (%s): "+
			"either a development build before layout %s wrote them (no release did: start on an empty data directory or stream), "+
			"or the metadata was removed, e.g. by nats stream edit (restore %s=%s and %s as it was, %d unless chosen otherwise)",
			cfg.Name, metaLayout, layoutVersion, metaLayout, layoutVersion, metaEpochSize, DefaultEpochSize)
	default:
		return Layout{}, fmt.Errorf("stream %s is in subject layout %s, this chatd writes layout %s", cfg.Name, v, layoutVersion)
	}
	size, err := strconv.ParseUint(cfg.Metadata[metaEpochSize], 10, 64)
	if err != nil || size == 0 {
		return Layout{}, fmt.Errorf("stream %s: bad %s %q in its metadata", cfg.Name, metaEpochSize, cfg.Metadata[metaEpochSize])
	}
	return Layout{EpochSize: size}, nil
}

// Subject returns the stream subject of e when it is at position pos of its conversation (pos
// is ignored for user events).
func (l Layout) Subject(e domain.Event, pos uint64) (string, error) {
	if e.Type == domain.TypeUserCreated || e.Type == domain.TypeUserUpdated {
		d, err := domain.DecodeData[domain.UserData](e)
		if err != nil {
			return "", err
		}
		return userSubject(d.UserID), nil
	}
	conv := "chat.evt.conv." + e.ConversationID + "." + strconv.FormatUint(pos/l.EpochSize, 10)
	switch e.Type {
	case domain.TypeConversationCreated, domain.TypeMemberJoined, domain.TypeMemberLeft:
		return conv + ".meta", nil
	case domain.TypeMessageCreated, domain.TypeMessageEdited, domain.TypeMessageDeleted:
		d, err := domain.DecodeData[domain.MessageData](e)
		if err != nil {
			return "", err
		}
		c, local, err := domain.SplitMessageID(d.MessageID)
		if err != nil {
			return "", err
		}
		if c != e.ConversationID {
			return "", fmt.Errorf("message %s is not in conversation %s", d.MessageID, e.ConversationID)
		}
		return conv + ".msg." + local, nil
	case domain.TypeReadUpdated:
		d, err := domain.DecodeData[domain.ReadData](e)
		if err != nil {
			return "", err
		}
		return conv + ".read." + d.UserID, nil
	}
	return "", fmt.Errorf("no subject for event type %q", e.Type)
}

// Tip is the last event of a conversation's chain: what its next event links to and expects.
// The zero Tip is an empty conversation.
type Tip struct {
	Seq      uint64 // stream sequence (0 while unknown: see Layout.Chain)
	Position uint64
	Hash     string // empty only for an empty conversation
}

// next returns the position of the event after tip, and the expectation that keeps the chain
// linear: the last sequence over the subjects of that position's epoch.
func (l Layout) next(conv string, tip Tip) (pos uint64, filter string, expect uint64) {
	if tip.Hash == "" {
		return 0, epochSubjects(conv, 0), 0
	}
	pos = tip.Position + 1
	if pos/l.EpochSize == tip.Position/l.EpochSize {
		expect = tip.Seq
	}
	return pos, epochSubjects(conv, pos/l.EpochSize), expect
}

// Chain links e to tip and returns the message that appends it (without expectations), and
// the tip it makes once appended (its Seq is unknown until then: 0). It is how tools and tests
// write events straight into the stream, with the same next and msg as the Store's appends.
func (l Layout) Chain(e *domain.Event, tip Tip) (*nats.Msg, Tip, error) {
	pos, _, _ := l.next(e.ConversationID, tip)
	data := domain.Chain(e, tip.Hash)
	m, err := l.msg(*e, data, pos)
	return m, Tip{Position: pos, Hash: e.Hash}, err
}

// msg makes the stream message that stores e, encoded as data (as domain.Chain returned it), at
// position pos.
func (l Layout) msg(e domain.Event, data []byte, pos uint64) (*nats.Msg, error) {
	subject, err := l.Subject(e, pos)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subject)
	m.Data = data
	if e.ConversationID != "" {
		m.Header.Set(PositionHeader, strconv.FormatUint(pos, 10))
	}
	return m, nil
}

// ReadTip returns a conversation's tip, read from the stream's leader (a replica that lags
// could answer with an older tip, and an event chained to it would fork the chain). It matches
// every subject of the conversation, so it is for tools and tests, not for the send path.
func ReadTip(ctx context.Context, js jetstream.JetStream, conv string) (Tip, error) {
	e, err := readLeader(ctx, js.Conn(), msgGetSubject(StreamName), msgGetRequest{LastFor: ConversationSubjects(conv)})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Tip{}, nil
	}
	if err != nil {
		return Tip{}, err
	}
	return e.conversationTip()
}

// positionOf reads a stored conversation event's position.
func positionOf(seq uint64, h nats.Header) (uint64, error) {
	pos, err := strconv.ParseUint(h.Get(PositionHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("event at sequence %d has no valid %s header", seq, PositionHeader)
	}
	return pos, nil
}

func userSubject(user string) string { return "chat.evt.user." + user }

// ConversationSubjects covers every event of a conversation: its chain (see domain.Chain).
func ConversationSubjects(conv string) string { return "chat.evt.conv." + conv + ".>" }

// epochSubjects covers the events of one epoch of a conversation.
func epochSubjects(conv string, epoch uint64) string {
	return "chat.evt.conv." + conv + "." + strconv.FormatUint(epoch, 10) + ".>"
}

// metaSubjects covers a conversation's state changes, one subject per epoch.
func metaSubjects(conv string) string { return "chat.evt.conv." + conv + ".*.meta" }

// messageSubjects covers the events of one message, one subject per epoch it changed in.
func messageSubjects(messageID string) (string, error) {
	conv, local, err := domain.SplitMessageID(messageID)
	if err != nil {
		return "", err
	}
	return "chat.evt.conv." + conv + ".*.msg." + local, nil
}

// PushSubject is the core NATS subject on which the user's pushes are published.
func PushSubject(user string) string { return "chat.push." + user }

// CheckSubject is where the projector tells user's nodes which push to user was its last (see
// projections.Projector.check). It is not a push subject, so that a node that does not know
// checks (an older chatd, during a rolling upgrade) never passes one on to a client.
func CheckSubject(user string) string { return checkPrefix + user }

const checkPrefix = "chat.check."

// PushSubjectOfCheck returns the push subject of the user whose check subject is subject.
func PushSubjectOfCheck(subject string) (string, bool) {
	user, ok := strings.CutPrefix(subject, checkPrefix)
	if !ok {
		return "", false
	}
	return PushSubject(user), true
}

// isConflict reports whether err is JetStream refusing an append because another append got
// there first: an expected last sequence did not match (someone changed the state the decision
// was based on), or, on a cluster, an append with the same Nats-Msg-Id is still in flight. Either
// way the command is decided again on fresh state.
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant, errCodeDuplicateInFlight:
		return true
	}
	return false
}

// errCodeDuplicateInFlight is JetStream's "duplicate message id is in process"
// (JSStreamDuplicateMessageConflict), which nats.go has no constant for.
const errCodeDuplicateInFlight jetstream.ErrorCode = 10158
