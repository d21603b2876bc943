package api

import (
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/domain"
)

// A token verified once is remembered, but its times are checked on every use: it expires on
// time even when its signature is not checked again.
func TestRememberedTokensStillExpire(t *testing.T) {
	a, err := NewAuth(strings.Repeat("k", 32), strings.Repeat("s", 32), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	token, _, err := a.Mint("alice", time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the first parses, the second is remembered
		if user, err := a.Verify(token); err != nil || user != "alice" {
			t.Fatalf("Verify = %q, %v; want alice", user, err)
		}
	}
	if a.verified.Len() != 1 {
		t.Fatalf("%d tokens remembered, want 1", a.verified.Len())
	}
	now = now.Add(time.Minute + 31*time.Second) // past the expiry and its 30 s leeway
	if _, err := a.Verify(token); domain.ErrorCode(err) != domain.CodeUnauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Verify after expiry: %v, want the token has expired", err)
	}

	// A token whose signature fails is never remembered.
	forged := token[:len(token)-2] + "AA"
	for range 2 {
		if _, err := a.Verify(forged); domain.ErrorCode(err) != domain.CodeUnauthenticated {
			t.Fatalf("Verify(forged) = %v, want unauthenticated", err)
		}
	}
	if a.verified.Contains(forged) {
		t.Fatal("a forged token was remembered")
	}
}
