package domain_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/chatd-dev/chatd/domain"
)

// The golden events form two chains (the group's and alice's); each stored event's hash is the
// hash of its stored form, and each links to the one before it. The golden files pin the
// canonical form: changing how hashes are computed fails here.
func TestGoldenChains(t *testing.T) {
	order := []string{domain.TypeConversationCreated, domain.TypeMemberJoined, domain.TypeMemberLeft,
		domain.TypeMessageCreated, domain.TypeMessageEdited, domain.TypeMessageDeleted, domain.TypeReadUpdated}
	users := []string{domain.TypeUserCreated, domain.TypeUserUpdated}
	for _, chain := range [][]string{order, users} {
		prev := ""
		for _, typ := range chain {
			raw, err := os.ReadFile(goldenPath(typ))
			if err != nil {
				t.Fatal(err)
			}
			e, err := domain.DecodeEvent(raw)
			if err != nil {
				t.Fatal(err)
			}
			h, err := domain.EventHash(raw)
			if err != nil {
				t.Fatal(err)
			}
			if e.Hash == "" || h != e.Hash {
				t.Errorf("%s: stored hash %q, computed %q", typ, e.Hash, h)
			}
			if e.Prev != prev {
				t.Errorf("%s: prev %q, want the previous event's hash %q", typ, e.Prev, prev)
			}
			prev = e.Hash
		}
	}
}

func TestEventHashCoversEverythingButTheBody(t *testing.T) {
	raw, err := os.ReadFile(goldenPath(domain.TypeMessageCreated))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := domain.EventHash(raw)
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	hashOf := func(change func(v map[string]any)) string {
		t.Helper()
		var c map[string]any
		b, _ := json.Marshal(v)
		_ = json.Unmarshal(b, &c)
		change(c)
		b, _ = json.Marshal(c)
		h, err := domain.EventHash(b)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	data := func(v map[string]any) map[string]any { return v["data"].(map[string]any) }

	// Layout does not matter: indentation, key order and escaping are canonicalised.
	if got := hashOf(func(map[string]any) {}); got != want {
		t.Errorf("re-encoded event hashes to %s, want %s", got, want)
	}
	// An erased body keeps the hash: the chain stays verifiable.
	if got := hashOf(func(v map[string]any) { delete(data(v), "body") }); got != want {
		t.Error("erasing the body changed the hash")
	}
	for name, change := range map[string]func(map[string]any){
		"actor":       func(v map[string]any) { v["actor"] = "mallory" },
		"time":        func(v map[string]any) { v["time"] = strings.Replace(v["time"].(string), "03:04", "03:05", 1) },
		"prev":        func(v map[string]any) { v["prev"] = strings.Repeat("0", 64) },
		"body_sha256": func(v map[string]any) { data(v)["body_sha256"] = domain.BodyHash("forged") },
		"sender":      func(v map[string]any) { data(v)["sender_id"] = "alice" },
		"new field":   func(v map[string]any) { data(v)["extra"] = true },
	} {
		if got := hashOf(change); got == want {
			t.Errorf("changing %s kept the hash", name)
		}
	}
	if _, err := domain.EventHash([]byte(`[1]`)); err == nil {
		t.Error("a JSON array hashed like an event")
	}
}
