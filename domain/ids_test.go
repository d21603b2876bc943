package domain_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chatd-dev/chatd/domain"
)

func TestDirectID(t *testing.T) {
	pairs := []struct{ a, b string }{
		{"alice", "bob"},
		{"bob", "alice"},
		{"a", "bc"},
		{"ab", "c"},
		{"A", "a"},
		{"same", "same"},
		{strings.Repeat("x", 64), "y"},
	}
	seen := map[string]string{}
	for _, p := range pairs {
		t.Run(p.a+"+"+p.b, func(t *testing.T) {
			id := domain.DirectID(p.a, p.b)
			if other := domain.DirectID(p.b, p.a); other != id {
				t.Errorf("DirectID(%q, %q) = %s but DirectID(%q, %q) = %s", p.a, p.b, id, p.b, p.a, other)
			}
			if id[0] != 'd' || !domain.ValidConversationID(id) {
				t.Errorf("DirectID(%q, %q) = %q, not a direct conversation id", p.a, p.b, id)
			}
			if again := domain.DirectID(p.a, p.b); again != id {
				t.Errorf("DirectID is not deterministic: %s then %s", id, again)
			}
			key := min(p.a, p.b) + "\x00" + max(p.a, p.b)
			for k, v := range seen {
				if v == id && k != key {
					t.Errorf("pairs %q and %q share id %s", k, key, id)
				}
			}
			seen[key] = id
		})
	}
}

// TestIDsAreStable pins the derived ids: existing conversations and retried sends are found by
// them, so a change here splits conversations and duplicates messages already stored.
func TestIDsAreStable(t *testing.T) {
	if got, want := domain.DirectID("alice", "bob"), "ddpair3jwqjfcl3g6kmfiqz233i"; got != want {
		t.Errorf("DirectID(alice, bob) = %s, want %s", got, want)
	}
	if got, want := domain.MessageID(groupID, "bob", "c-1"), groupID+"-6jwz6sjj3kjxwa3whyzw"; got != want {
		t.Errorf("MessageID(%s, bob, c-1) = %s, want %s", groupID, got, want)
	}
}

func TestNewIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		e, g := domain.NewEventID(), domain.NewGroupID()
		if !validEventID(e) {
			t.Fatalf("NewEventID() = %q, want e followed by 26 base32 characters", e)
		}
		if g[0] != 'g' || !domain.ValidConversationID(g) {
			t.Fatalf("NewGroupID() = %q, not a group id", g)
		}
		if seen[e] || seen[g] {
			t.Fatalf("id repeated: %s or %s", e, g)
		}
		seen[e], seen[g] = true, true
	}
}

func TestMessageID(t *testing.T) {
	direct := domain.DirectID("alice", "bob")
	base := domain.MessageID(groupID, "bob", "c-1")
	if again := domain.MessageID(groupID, "bob", "c-1"); again != base {
		t.Fatalf("MessageID is not deterministic: %s then %s", base, again)
	}
	others := []struct {
		name                string
		conv, sender, local string
	}{
		{"other conversation", direct, "bob", "c-1"},
		{"other sender", groupID, "carol", "c-1"},
		{"other client_msg_id", groupID, "bob", "c-2"},
		{"parts shifted between sender and client_msg_id", groupID, "bobc", "-1"},
		{"parts shifted the other way", groupID, "bo", "bc-1"},
	}
	for _, o := range others {
		t.Run(o.name, func(t *testing.T) {
			if id := domain.MessageID(o.conv, o.sender, o.local); id == base {
				t.Errorf("MessageID(%s, %s, %s) = %s, the same as bob's c-1", o.conv, o.sender, o.local, id)
			}
		})
	}

	for _, conv := range []string{groupID, direct, domain.NewGroupID()} {
		t.Run("split "+conv, func(t *testing.T) {
			id := domain.MessageID(conv, "bob", "c-1")
			gotConv, local, err := domain.SplitMessageID(id)
			if err != nil {
				t.Fatalf("SplitMessageID(%q): %v", id, err)
			}
			if gotConv != conv || gotConv+"-"+local != id {
				t.Errorf("SplitMessageID(%q) = %q, %q; want %q and the rest", id, gotConv, local, conv)
			}
			if len(local) != 20 || !isBase32(local) {
				t.Errorf("local part %q is not 20 base32 characters", local)
			}
		})
	}
}

func TestSplitMessageIDRejects(t *testing.T) {
	valid := domain.MessageID(groupID, "bob", "c-1")
	local := valid[len(groupID)+1:]
	tests := []struct{ name, id string }{
		{"empty", ""},
		{"dash only", "-"},
		{"conversation only", groupID},
		{"conversation and dash", groupID + "-"},
		{"local part only", local},
		{"dash and local part", "-" + local},
		{"local part one short", groupID + "-" + local[1:]},
		{"local part one long", valid + "a"},
		{"uppercase local part", groupID + "-" + strings.ToUpper(local)},
		{"local part outside base32", groupID + "-" + "0" + local[1:]},
		{"second dash", valid + "-" + local},
		{"dash inside local part", groupID + "-" + local[:10] + "-" + local[11:]},
		{"event id as conversation", "e" + groupID[1:] + "-" + local},
		{"conversation one short", groupID[1:] + "-" + local},
		{"conversation one long", groupID + "a-" + local},
		{"uppercase conversation", strings.ToUpper(groupID) + "-" + local},
		{"leading space", " " + valid},
		{"trailing newline", valid + "\n"},
		{"NATS wildcard", groupID + "-" + local[:19] + "*"},
		{"path traversal", "../" + valid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conv, local, err := domain.SplitMessageID(tt.id)
			wantCode(t, err, domain.CodeNotFound)
			if conv != "" || local != "" {
				t.Errorf("got %q, %q with the error", conv, local)
			}
		})
	}
}

func TestValidConversationID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{groupID, true},
		{"d" + groupID[1:], true},
		{"d22222222222222222222222222", true},
		{"", false},
		{"g", false},
		{groupID[:26], false},
		{groupID + "a", false},
		{"e" + groupID[1:], false},
		{"G" + groupID[1:], false},
		{"gABCDEFGHIJKLMNOPQRSTUVWXYZ", false},
		{"g0bcdefghijklmnopqrstuvwxyz", false},
		{"g1bcdefghijklmnopqrstuvwxyz", false},
		{"g8bcdefghijklmnopqrstuvwxyz", false},
		{"g-bcdefghijklmnopqrstuvwxyz", false},
		{"g.bcdefghijklmnopqrstuvwxyz", false},
	}
	for _, tt := range tests {
		if got := domain.ValidConversationID(tt.id); got != tt.want {
			t.Errorf("ValidConversationID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

func TestValidUserID(t *testing.T) {
	valid := []string{
		"a",
		"Z",
		"0",
		"_",
		"-",
		"alice",
		"Alice_Liddell-1865",
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"[:64],
		strings.Repeat("x", 64),
	}
	for _, id := range valid {
		if err := domain.ValidUserID(id); err != nil {
			t.Errorf("ValidUserID(%q) = %v, want nil", id, err)
		}
	}
	invalid := []string{
		"",
		strings.Repeat("x", 65),
		"al ice",
		" alice",
		"alice\n",
		"a.b",
		"a*",
		"a>",
		"a/b",
		"a@b",
		"a+b",
		"ålice",
		"a\x00",
		"a\xff",
	}
	for _, id := range invalid {
		err := domain.ValidUserID(id)
		if domain.ErrorCode(err) != domain.CodeInvalid {
			t.Errorf("ValidUserID(%q) = %v, want an error with code %s", id, err, domain.CodeInvalid)
		}
	}
}

func TestValidClientMsgID(t *testing.T) {
	valid := []string{
		"a",
		"!",
		"~",
		"c-1",
		"550e8400-e29b-41d4-a716-446655440000",
		`!"#$%&'()*+,-./:;<=>?@[\]^_{|}~`,
		strings.Repeat("x", 64),
	}
	for _, id := range valid {
		if err := domain.ValidClientMsgID(id); err != nil {
			t.Errorf("ValidClientMsgID(%q) = %v, want nil", id, err)
		}
	}
	invalid := []string{
		"",
		strings.Repeat("x", 65),
		" ",
		"c 1",
		"c-1\n",
		"\t",
		"\x7f",
		"\x00",
		"é",
		"\xff",
	}
	for _, id := range invalid {
		err := domain.ValidClientMsgID(id)
		if domain.ErrorCode(err) != domain.CodeInvalid {
			t.Errorf("ValidClientMsgID(%q) = %v, want an error with code %s", id, err, domain.CodeInvalid)
		}
	}
}

func TestErrorCode(t *testing.T) {
	notFound := domain.Errorf(domain.CodeNotFound, "conversation not found")
	tests := []struct {
		name string
		err  error
		want domain.Code
	}{
		{"domain error", notFound, domain.CodeNotFound},
		{"wrapped domain error", fmt.Errorf("load: %w", notFound), domain.CodeNotFound},
		{"unavailable", domain.Unavailable("nats is down", errors.New("timeout")), domain.CodeUnavailable},
		{"plain error", errors.New("boom"), domain.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.ErrorCode(tt.err); got != tt.want {
				t.Errorf("ErrorCode(%v) = %s, want %s", tt.err, got, tt.want)
			}
		})
	}
	if got := domain.ErrorMessage(errors.New("secret detail")); got != "internal error" {
		t.Errorf("ErrorMessage of a plain error = %q, want a generic message", got)
	}
	if got := domain.ErrorMessage(fmt.Errorf("x: %w", notFound)); got != "conversation not found" {
		t.Errorf("ErrorMessage = %q, want the domain error's message", got)
	}
}
