// Package streams is the JetStream adapter: it runs the embedded NATS server, sets up the
// CHAT_EVENTS stream, and appends events with the expectations that make each decision of the
// domain atomic with its append (see Store).
//
// Subjects of the stream (conversation and user ids are subject-safe by construction):
//
//	chat.evt.user.<user>                 user.created, user.updated
//	chat.evt.conv.<conv>.meta            conversation.created, member.joined, member.left
//	chat.evt.conv.<conv>.msg.<local>     message.created, .edited, .deleted of one message
//	chat.evt.conv.<conv>.read.<user>     read.updated
//
// Push subjects (chat.push.<user>) are plain core NATS, outside the stream.
package streams

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the name of the events stream, the source of truth.
const StreamName = "CHAT_EVENTS"

// SubjectRoot covers every event subject.
const SubjectRoot = "chat.evt.>"

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
}

// Setup creates the stream, or updates it to cfg, and returns it.
func Setup(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Stream, error) {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	if existing, err := js.Stream(ctx, StreamName); err == nil && existing.CachedInfo().Config.DenyDelete {
		cfg.DenyDelete = true
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
	})
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", StreamName, err)
	}
	if err := awaitLeader(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// awaitLeader waits until a replicated stream has elected its leader: until then appends go
// unanswered ("no response from stream").
func awaitLeader(ctx context.Context, s jetstream.Stream) error {
	for {
		info, err := s.Info(ctx)
		if err == nil && (info.Cluster == nil || info.Cluster.Leader != "") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s has no leader: %w", s.CachedInfo().Config.Name, errors.Join(ctx.Err(), err))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Subject returns the stream subject that e is appended to.
func Subject(e domain.Event) (string, error) {
	switch e.Type {
	case domain.TypeUserCreated, domain.TypeUserUpdated:
		d, err := domain.DecodeData[domain.UserData](e)
		if err != nil {
			return "", err
		}
		return userSubject(d.UserID), nil
	case domain.TypeConversationCreated, domain.TypeMemberJoined, domain.TypeMemberLeft:
		return metaSubject(e.ConversationID), nil
	case domain.TypeMessageCreated, domain.TypeMessageEdited, domain.TypeMessageDeleted:
		d, err := domain.DecodeData[domain.MessageData](e)
		if err != nil {
			return "", err
		}
		return messageSubject(d.MessageID)
	case domain.TypeReadUpdated:
		d, err := domain.DecodeData[domain.ReadData](e)
		if err != nil {
			return "", err
		}
		return "chat.evt.conv." + e.ConversationID + ".read." + d.UserID, nil
	}
	return "", fmt.Errorf("no subject for event type %q", e.Type)
}

func userSubject(user string) string { return "chat.evt.user." + user }

func metaSubject(conv string) string { return "chat.evt.conv." + conv + ".meta" }

// ConversationSubjects covers every event of a conversation: its chain (see domain.Chain).
func ConversationSubjects(conv string) string { return "chat.evt.conv." + conv + ".>" }

func messageSubject(messageID string) (string, error) {
	conv, local, err := domain.SplitMessageID(messageID)
	if err != nil {
		return "", err
	}
	return "chat.evt.conv." + conv + ".msg." + local, nil
}

// PushSubject is the core NATS subject on which the user's pushes are published.
func PushSubject(user string) string { return "chat.push." + user }

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
