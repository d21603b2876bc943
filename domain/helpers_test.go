package domain_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
)

// Fixtures shared by the tests of the domain package.

var (
	// now is deliberately not UTC and has nanoseconds: events keep UTC to the microsecond.
	now      = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("UTC+2", 2*3600))
	wantTime = time.Date(2025, 3, 14, 13, 9, 26, 535897000, time.UTC)
	created  = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

	lim = domain.DefaultLimits
	// small limits prove that the Limits passed in are the ones applied.
	small = domain.Limits{MaxMessageBytes: 10, MaxTitleBytes: 8, MaxDisplayNameBytes: 6, MaxGroupMembers: 3}
)

// limitSets are the limits every text rule is tested under.
var limitSets = []struct {
	name   string
	limits domain.Limits
}{
	{"default limits", lim},
	{"small limits", small},
}

const groupID = "gabcdefghijklmnopqrstuvwxyz"

// testGroup is alice's group with bob and carol.
func testGroup() domain.Conversation {
	return domain.Conversation{
		ID:        groupID,
		Kind:      domain.KindGroup,
		Title:     "Team",
		CreatorID: "alice",
		Members:   []string{"alice", "bob", "carol"},
		CreatedAt: created,
	}
}

// testDirect is the direct conversation alice opened with bob.
func testDirect() domain.Conversation {
	return domain.Conversation{
		ID:        domain.DirectID("alice", "bob"),
		Kind:      domain.KindDirect,
		CreatorID: "alice",
		Members:   []string{"alice", "bob"},
		CreatedAt: created,
	}
}

// withMembers returns c with members instead of its own.
func withMembers(c domain.Conversation, members ...string) domain.Conversation {
	c.Members = members
	return c
}

func wantCode(t *testing.T, err error, want domain.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one with code %s", want)
	}
	if got := domain.ErrorCode(err); got != want {
		t.Fatalf("got error %q with code %s, want code %s", err, got, want)
	}
}

func isBase32(s string) bool {
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz234567") == ""
}

func validEventID(id string) bool {
	return len(id) == 27 && id[0] == 'e' && isBase32(id[1:])
}

// checkEvent checks the envelope of an event that a Decide function returned at now, and that
// its stored form decodes back to the same envelope.
func checkEvent(t *testing.T, e domain.Event, typ, conversationID, actor string) {
	t.Helper()
	if e.V != domain.SchemaVersion {
		t.Errorf("V = %d, want %d", e.V, domain.SchemaVersion)
	}
	if !validEventID(e.ID) {
		t.Errorf("ID = %q, want e followed by 26 base32 characters", e.ID)
	}
	if e.Type != typ {
		t.Errorf("Type = %q, want %q", e.Type, typ)
	}
	if e.ConversationID != conversationID {
		t.Errorf("ConversationID = %q, want %q", e.ConversationID, conversationID)
	}
	if e.Actor != actor {
		t.Errorf("Actor = %q, want %q", e.Actor, actor)
	}
	if !e.Time.Equal(wantTime) || e.Time.Location() != time.UTC {
		t.Errorf("Time = %v, want %v (UTC, truncated to the microsecond)", e.Time, wantTime)
	}
	if e.Seq != 0 {
		t.Errorf("Seq = %d, want 0: only the stream assigns it", e.Seq)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatalf("marshal event: %v", err)
	}
	back, err := domain.DecodeEvent(b)
	if err != nil {
		t.Fatalf("DecodeEvent(%s): %v", b, err)
	}
	if back.V != e.V || back.ID != e.ID || back.Type != e.Type || back.ConversationID != e.ConversationID ||
		back.Actor != e.Actor || !back.Time.Equal(e.Time) || !bytes.Equal(back.Data, e.Data) {
		t.Errorf("stored event decodes to %+v, want %+v", back, e)
	}
}

// checkData checks that e carries exactly want: it decodes to want, and its JSON is want's.
func checkData[T any](t *testing.T, e domain.Event, want T) {
	t.Helper()
	got, err := domain.DecodeData[T](e)
	if err != nil {
		t.Fatalf("DecodeData: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("data decodes to\n%+v\nwant\n%+v", got, want)
	}
	wantJSON, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Data, wantJSON) {
		t.Errorf("data is\n%s\nwant\n%s", e.Data, wantJSON)
	}
}

// checkConversationOf checks the conversation state an event carries, as readers get it.
func checkConversationOf(t *testing.T, e domain.Event, want domain.Conversation) {
	t.Helper()
	got, err := domain.ConversationOf(e)
	if err != nil {
		t.Fatalf("ConversationOf: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ConversationOf = %+v, want %+v", got, want)
	}
}

type textCase struct{ name, text string }

// badTexts are texts that every required text field limited to max bytes refuses.
func badTexts(max int) []textCase {
	return []textCase{
		{"empty", ""},
		{"spaces", "   "},
		{"ASCII whitespace", " \t\n\r\v\f"},
		{"Unicode blanks", "\u00a0\u200b\ufeff"},
		{"more Unicode blanks", "\u3000\u2003\u2028\u0085\u200d"},
		{"one byte over the limit", strings.Repeat("x", max+1)},
		{"over the limit in bytes not characters", strings.Repeat("é", max/2+1)},
		{"invalid UTF-8", "hello \xff"},
		{"truncated multibyte character", "caf\xc3"},
		{"encoded UTF-16 surrogate", "\xed\xa0\x80"},
		{"overlong encoding", "\xc0\xaf"},
		{"NUL inside", "a\x00b"},
		{"only NUL", "\x00"},
		{"trailing NUL", "hi\x00"},
	}
}

// goodTexts are texts that every text field limited to max bytes keeps as they are.
func goodTexts(max int) []textCase {
	all := []textCase{
		{"one character", "x"},
		{"exactly the limit", strings.Repeat("x", max)},
		{"multibyte up to the limit", strings.Repeat("€", max/3)},
		{"surrounding spaces kept", "  hi  "},
		{"lines and emoji", "line 1\nline 2 👋"},
	}
	var fit []textCase
	for _, tc := range all {
		if len(tc.text) <= max {
			fit = append(fit, tc)
		}
	}
	return fit
}
