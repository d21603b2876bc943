// Package domain is the heart of chatd: users, conversations, messages, the events that change
// them, and the rules that decide whether a command may produce an event. It imports the standard
// library only; the adapters (streams, projections, api) depend on it, never the other way round.
//
// Commands are decided against state derived from the event stream: each Decide function takes
// the current state and a command and returns the one event to append, or an *Error saying why
// not. Appending, and making the decision atomic with it, is the streams adapter's job.
package domain

import (
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits bound what users may send. They are configuration (see README) with these defaults.
type Limits struct {
	MaxMessageBytes     int // message body, in bytes of UTF-8
	MaxTitleBytes       int // group title
	MaxDisplayNameBytes int // user display name
	MaxGroupMembers     int // members of one group, creator included
}

// DefaultLimits are sane for a chat embedded in a web site.
var DefaultLimits = Limits{
	MaxMessageBytes:     4000,
	MaxTitleBytes:       200,
	MaxDisplayNameBytes: 100,
	MaxGroupMembers:     256,
}

// MaxSeq is the largest stream sequence chatd accepts from a client: the read models store
// sequences as PostgreSQL bigint (int8), and JetStream never gets near it.
const MaxSeq = 1<<63 - 1

// Kind of conversation.
const (
	KindDirect = "direct"
	KindGroup  = "group"
)

// User is someone the host site provisioned.
type User struct {
	ID          string    `json:"id"`
	DisplayName string    `json:"display_name"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
}

// Conversation is the state of a conversation that the command side decides against. Every
// membership event carries the whole of it, so one read of the conversation's last membership
// event is enough to rebuild it (event-carried state; see docs/architecture.md).
type Conversation struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Title     string    `json:"title"`
	CreatorID string    `json:"creator_id"`
	Members   []string  `json:"members"`
	CreatedAt time.Time `json:"created_at"`
}

// IsMember reports whether user belongs to the conversation now.
func (c Conversation) IsMember(user string) bool {
	for _, m := range c.Members {
		if m == user {
			return true
		}
	}
	return false
}

// Message is one message of a conversation as the command side knows it.
type Message struct {
	ID             string     `json:"id"`
	ConversationID string     `json:"conversation_id"`
	Seq            uint64     `json:"seq"`
	SenderID       string     `json:"sender_id"`
	ClientMsgID    string     `json:"client_msg_id"`
	Body           string     `json:"body"`
	CreatedAt      time.Time  `json:"created_at"`
	EditedAt       *time.Time `json:"edited_at,omitempty"`
	Deleted        bool       `json:"deleted"`
}

// validText checks user-supplied text: valid UTF-8, no NUL (PostgreSQL text cannot hold it, and
// an event the projector cannot store must never be accepted), within max bytes.
func validText(what, s string, max int, required bool) error {
	switch {
	case required && isBlank(s):
		return Errorf(CodeInvalid, "%s must not be empty", what)
	case !utf8.ValidString(s):
		return Errorf(CodeInvalid, "%s must be valid UTF-8", what)
	case len(s) > max:
		return Errorf(CodeInvalid, "%s is %d bytes, more than the limit of %d", what, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return Errorf(CodeInvalid, "%s must not contain NUL characters", what)
		}
	}
	return nil
}

// isBlank reports whether s shows nothing: only white space and zero-width characters.
func isBlank(s string) bool {
	for _, r := range s {
		if !unicode.IsSpace(r) && r != '\u200b' && r != '\u200c' && r != '\u200d' && r != '\u2060' && r != '\ufeff' {
			return false
		}
	}
	return true
}
