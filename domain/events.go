package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SchemaVersion is the version of the event envelope and payloads written by this build.
// Readers accept every version up to it; a change that old readers cannot read bumps it.
const SchemaVersion = 1

// Event types. Their JSON is a contract with auditors and future readers: see the golden files
// in domain/testdata/events.
const (
	TypeUserCreated         = "user.created"
	TypeUserUpdated         = "user.updated"
	TypeConversationCreated = "conversation.created"
	TypeMemberJoined        = "member.joined"
	TypeMemberLeft          = "member.left"
	TypeMessageCreated      = "message.created"
	TypeMessageEdited       = "message.edited"
	TypeMessageDeleted      = "message.deleted"
	TypeReadUpdated         = "read.updated"
)

// ErrNewerSchema means an event was written by a newer chatd than this one. Readers must not
// skip it (the read models would silently differ); they stop until they are upgraded.
var ErrNewerSchema = errors.New("event from a newer schema version")

// ActorService is the actor of events caused by the host site through its service key.
const ActorService = "service"

// Event is the envelope of every change. Seq is not part of the JSON: the stream assigns it on
// append and readers attach it from the stream's metadata.
type Event struct {
	V              int             `json:"v"`
	ID             string          `json:"id"`
	Type           string          `json:"type"`
	ConversationID string          `json:"conversation_id,omitempty"`
	Actor          string          `json:"actor"`
	Time           time.Time       `json:"time"`
	Data           json.RawMessage `json:"data"`
	// Prev and Hash link the event into its chain: see Chain.
	Prev string `json:"prev,omitempty"`
	Hash string `json:"hash,omitempty"`

	Seq uint64 `json:"-"`
}

// UserData is the payload of user.created and user.updated.
type UserData struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name"`
}

// ConversationData is the payload of conversation.created: the whole new conversation.
type ConversationData struct {
	Conversation Conversation `json:"conversation"`
}

// MemberData is the payload of member.joined and member.left: who joined or left, and the
// conversation as it is after the change.
type MemberData struct {
	UserID       string       `json:"user_id"`
	Conversation Conversation `json:"conversation"`
}

// MessageData is the payload of message.created, message.edited and message.deleted. Edits and
// deletes repeat the sender so that a later decision needs only the message's last event.
type MessageData struct {
	MessageID   string `json:"message_id"`
	SenderID    string `json:"sender_id"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
	Body        string `json:"body,omitempty"`
	// BodySHA256 is the hash of Body (see BodyHash): it stays when a body is erased, so the
	// event's chain stays verifiable.
	BodySHA256 string `json:"body_sha256,omitempty"`
}

// ReadData is the payload of read.updated: user has read the conversation up to Seq.
type ReadData struct {
	UserID string `json:"user_id"`
	Seq    uint64 `json:"seq"`
}

// Timestamps are kept to the microsecond, as PostgreSQL keeps them, so that a write's answer
// and a later read of the same thing agree to the letter.
func eventTime(now time.Time) time.Time { return now.UTC().Truncate(time.Microsecond) }

func newEvent(typ, conversationID, actor string, now time.Time, data any) Event {
	now = eventTime(now)
	// Without HTML escaping, as the canonical form has it: Chain then hashes it without
	// decoding (see appendCanonical), and the stream stores the encoding Chain returns.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(data); err != nil {
		panic(fmt.Sprintf("marshal %s data: %v", typ, err)) // plain structs always marshal
	}
	raw := bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})
	return Event{
		V:              SchemaVersion,
		ID:             NewEventID(),
		Type:           typ,
		ConversationID: conversationID,
		Actor:          actor,
		Time:           now,
		Data:           raw,
	}
}

// Unmarshal decodes JSON into v as encoding/json's Unmarshal does. The decoders take one so that
// an adapter that decodes many events can bring a faster one (see projections/decode.go).
type Unmarshal func(data []byte, v any) error

// DecodeEvent parses an event as stored in the stream and checks its envelope.
func DecodeEvent(b []byte) (Event, error) { return DecodeEventWith(json.Unmarshal, b) }

// DecodeEventWith is DecodeEvent with unmarshal instead of json.Unmarshal.
func DecodeEventWith(unmarshal Unmarshal, b []byte) (Event, error) {
	var e Event
	err := DecodeEventInto(unmarshal, b, &e)
	return e, err
}

// DecodeEventInto is DecodeEventWith decoding into *e, which it leaves zero on error: a decoder of
// many events fills them in place rather than copying each from the heap.
func DecodeEventInto(unmarshal Unmarshal, b []byte, e *Event) error {
	*e = Event{}
	err := unmarshal(b, e)
	switch {
	case err != nil:
		err = fmt.Errorf("decode event: %w", err)
	case e.V > SchemaVersion:
		err = fmt.Errorf("decode event %s: %w (version %d, this build reads up to %d)", e.ID, ErrNewerSchema, e.V, SchemaVersion)
	case e.V < 1:
		err = fmt.Errorf("decode event %s: unsupported schema version %d", e.ID, e.V)
	case e.Type == "" || e.ID == "" || e.Time.IsZero():
		err = fmt.Errorf("decode event %q: missing type, id or time", e.ID)
	default:
		if d := bytes.TrimLeft(e.Data, " \t\r\n"); len(d) == 0 || d[0] != '{' {
			err = fmt.Errorf("decode event %q: data must be a JSON object", e.ID)
		}
	}
	if err != nil {
		*e = Event{}
	}
	return err
}

// DecodeData parses the payload of e into T.
func DecodeData[T any](e Event) (T, error) { return DecodeDataWith[T](json.Unmarshal, e) }

// DecodeDataWith is DecodeData with unmarshal instead of json.Unmarshal.
func DecodeDataWith[T any](unmarshal Unmarshal, e Event) (T, error) {
	var v T
	err := DecodeDataInto(unmarshal, e, &v)
	return v, err
}

// DecodeDataInto is DecodeDataWith decoding into v, a pointer.
func DecodeDataInto(unmarshal Unmarshal, e Event, v any) error {
	if err := unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s data of event %s: %w", e.Type, e.ID, err)
	}
	return nil
}

// ConversationOf returns the conversation state carried by a conversation.created,
// member.joined or member.left event.
func ConversationOf(e Event) (Conversation, error) {
	switch e.Type {
	case TypeConversationCreated:
		d, err := DecodeData[ConversationData](e)
		return d.Conversation, err
	case TypeMemberJoined, TypeMemberLeft:
		d, err := DecodeData[MemberData](e)
		return d.Conversation, err
	}
	return Conversation{}, fmt.Errorf("event %s of type %s carries no conversation", e.ID, e.Type)
}

// MessageOf returns the message described by the first event of a message (created). Later
// events change its body or mark it deleted: see ApplyMessage.
func MessageOf(created Event) (Message, error) {
	if created.Type != TypeMessageCreated {
		return Message{}, fmt.Errorf("event %s is %s, not %s", created.ID, created.Type, TypeMessageCreated)
	}
	d, err := DecodeData[MessageData](created)
	if err != nil {
		return Message{}, err
	}
	return Message{
		ID:             d.MessageID,
		ConversationID: created.ConversationID,
		Seq:            created.Seq,
		SenderID:       d.SenderID,
		ClientMsgID:    d.ClientMsgID,
		Body:           d.Body,
		CreatedAt:      created.Time,
	}, nil
}

// ApplyMessage returns m changed by a later event of the same message (edited or deleted).
func ApplyMessage(m Message, e Event) (Message, error) {
	d, err := DecodeData[MessageData](e)
	if err != nil {
		return m, err
	}
	switch e.Type {
	case TypeMessageEdited:
		t := e.Time
		m.Body, m.EditedAt = d.Body, &t
	case TypeMessageDeleted:
		m.Body, m.Deleted = "", true
	default:
		return m, fmt.Errorf("event %s of type %s does not change a message", e.ID, e.Type)
	}
	return m, nil
}
