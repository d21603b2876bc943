package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Tamper evidence. Every event carries the hash of the previous event of its chain (Prev) and its
// own hash (Hash). A chain is a conversation's events, or a user's; changing, inserting or
// removing an event anywhere in it breaks every later link. Appends keep chains linear by
// expecting the chain's last sequence to be unchanged (see streams.Store).
//
// Hash is the SHA-256, in hex, of the event's canonical form: its stored JSON without "hash"
// and without "data"."body", re-encoded with object keys sorted, no insignificant whitespace,
// numbers as written, and strings escaped as Go's encoding/json does with HTML escaping off.
// Leaving the body out is what lets a body be erased (for a legal request, say) while the chain
// stays verifiable: the body's own hash, data.body_sha256, is part of the canonical form.

// Chain links e to the previous event of its chain (prev is that event's hash, or "" for the
// first event of a chain), sets e.Hash, and returns e's JSON as it is to be stored: what
// encoding/json writes with HTML escaping off, so the encoding the hash was computed from is not
// made again.
func Chain(e *Event, prev string) []byte {
	e.Prev, e.Hash = prev, ""
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		panic(fmt.Sprintf("marshal %s event: %v", e.Type, err)) // events always marshal
	}
	raw := bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})
	// The fast path rewrites this encoding without decoding it; anything it does not handle
	// (nothing chatd writes today) takes the general one.
	canonical, err := appendCanonical(make([]byte, 0, len(raw)), raw)
	if err != nil {
		if e.Hash, err = EventHash(raw); err != nil {
			panic(fmt.Sprintf("hash %s event: %v", e.Type, err))
		}
	} else {
		e.Hash = sha256Hex(canonical)
	}
	// Hash is Event's last field: the encoding with it is the one without, and it at the end.
	stored := append(raw[:len(raw)-1:len(raw)-1], `,"hash":"`...)
	stored = append(stored, e.Hash...)
	return append(stored, `"}`...)
}

// EventHash returns the hash that an event stored as raw must carry.
func EventHash(raw []byte) (string, error) {
	var v map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("canonical form: %w", err)
	}
	if v == nil {
		return "", fmt.Errorf("canonical form: the event is not a JSON object")
	}
	delete(v, "hash")
	if data, ok := v["data"].(map[string]any); ok {
		delete(data, "body")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // map keys come out sorted
		return "", fmt.Errorf("canonical form: %w", err)
	}
	return sha256Hex(bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})), nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// BodyHash is the content hash of a message body, kept in data.body_sha256.
func BodyHash(body string) string {
	return sha256Hex([]byte(body))
}
