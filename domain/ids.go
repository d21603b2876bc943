package domain

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// IDs are built from lowercase base32 so that every id is a valid NATS subject token and safe
// in a URL path. User ids come from the host site and are checked by ValidUserID.

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

const (
	idLen          = 26 // 130 bits of base32: random ids never collide, hashed ids neither
	messageHashLen = 20
	maxUserIDLen   = 64
	maxClientIDLen = 64
)

func randomToken() string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // cannot happen on Linux; nothing sane to do
	}
	return idEncoding.EncodeToString(b[:])[:idLen]
}

func hashToken(n int, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return idEncoding.EncodeToString(h.Sum(nil))[:n]
}

// NewEventID returns a fresh random event id.
func NewEventID() string { return "e" + randomToken() }

// NewGroupID returns a fresh random group conversation id.
func NewGroupID() string { return "g" + randomToken() }

// DirectID is the id of the one direct conversation between a and b, the same whichever of them
// asks: creating it twice is a conflict the stream detects, not a second conversation.
func DirectID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "d" + hashToken(idLen, "direct", a, b)
}

// MessageID is derived from what makes a send unique: the conversation, the sender and the
// client's own id for the message. A retried send therefore names the same message, which is
// what lets the stream find and refuse the duplicate at any later time.
func MessageID(conversationID, senderID, clientMsgID string) string {
	return conversationID + "-" + hashToken(messageHashLen, "message", conversationID, senderID, clientMsgID)
}

// SplitMessageID returns the conversation id and the per-conversation part of a message id.
func SplitMessageID(id string) (conversationID, local string, err error) {
	conv, local, ok := strings.Cut(id, "-")
	if !ok || !ValidConversationID(conv) || len(local) != messageHashLen || !isBase32(local) {
		return "", "", Errorf(CodeNotFound, "message not found")
	}
	return conv, local, nil
}

// ValidConversationID reports whether id has the shape of a conversation id.
func ValidConversationID(id string) bool {
	return len(id) == idLen+1 && (id[0] == 'd' || id[0] == 'g') && isBase32(id[1:])
}

func isBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// ValidUserID checks an id chosen by the host site: 1 to 64 of A-Z a-z 0-9 _ -. The limit on
// characters keeps ids usable as NATS subject tokens (per-user push subjects) and in URLs.
func ValidUserID(id string) error {
	if id == "" || len(id) > maxUserIDLen {
		return Errorf(CodeInvalid, "user id must be 1 to %d characters", maxUserIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Errorf(CodeInvalid, "user id %q may only contain A-Z, a-z, 0-9, '_' and '-'", id)
		}
	}
	return nil
}

// ValidClientMsgID checks the client's id for a message: 1 to 64 printable ASCII characters.
func ValidClientMsgID(id string) error {
	if id == "" || len(id) > maxClientIDLen {
		return Errorf(CodeInvalid, "client_msg_id must be 1 to %d characters", maxClientIDLen)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return Errorf(CodeInvalid, "client_msg_id may only contain printable ASCII without spaces")
		}
	}
	return nil
}
