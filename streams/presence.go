package streams

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PresenceBucket is the KV bucket of open connections: one key per WebSocket connection,
// "<user>.<connection>", refreshed while it lives and expiring PresenceTTL after its node stops
// refreshing it. A user is online while any of their keys exists, on any node.
const PresenceBucket = "CHAT_PRESENCE"

// The stream that holds the presence bucket, and the subject prefix of its keys (nats.go's KV
// naming), for the reads that go past the KV API to the stream's leader.
const (
	presenceStream = "KV_" + PresenceBucket
	presenceKeys   = "$KV." + PresenceBucket + "."
)

// PresenceTTL bounds how long a crashed node's connections still count as online. Live
// connections renew their key at every WebSocket heartbeat (25 s), well within it.
const PresenceTTL = 45 * time.Second

// Presence tracks who is online across all chatd nodes.
type Presence struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream // the bucket's stream, for purges
	nc     *nats.Conn
}

// SetupPresence creates or updates the presence bucket (memory storage: presence is not worth
// a disk write, and a restarted cluster starts with everyone offline, which is true).
func SetupPresence(ctx context.Context, js jetstream.JetStream, replicas int) (*Presence, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      PresenceBucket,
		Description: "chatd: one key per open WebSocket connection",
		TTL:         PresenceTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("create or update KV %s: %w", PresenceBucket, err)
	}
	// Like the events stream, a replicated bucket answers nothing until it has a leader. The
	// probe's key is no connection's: connection keys are "<user>.<connection>".
	if err := awaitLeader(ctx, js, presenceStream, presenceKeys+"probe"); err != nil {
		return nil, err
	}
	stream, err := js.Stream(ctx, presenceStream)
	if err != nil {
		return nil, fmt.Errorf("stream of KV %s: %w", PresenceBucket, err)
	}
	return &Presence{kv: kv, stream: stream, nc: js.Conn()}, nil
}

// Connect records a new connection of user and returns its key, and the key's revision, which
// the connection's first renewal expects.
func (p *Presence) Connect(ctx context.Context, user string) (key string, rev uint64, err error) {
	key = user + "." + domain.NewEventID()
	if rev, err = p.kv.Create(ctx, key, nil); err != nil {
		return "", 0, domain.Unavailable("presence is unavailable", fmt.Errorf("create %s: %w", key, err))
	}
	return key, rev, nil
}

// Refresh renews a connection's key, expected at revision rev, and returns its new revision.
//
// The expectation keeps a renewal that lands late from putting back a key that closing the
// connection purged: one whose caller gave up waiting for it, while it was still on its way. It
// fails instead, since the purged key has no revision. A renewal that finds the key at another
// revision (an earlier renewal that its caller gave up on did land), or finds no key (renewals
// failed for a whole TTL, and it expired), renews what it finds: the connection is still open,
// since only open connections renew.
func (p *Presence) Refresh(ctx context.Context, key string, rev uint64) (uint64, error) {
	next, err := p.kv.Update(ctx, key, nil, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		var e jetstream.KeyValueEntry
		switch e, err = p.kv.Get(ctx, key); {
		case err == nil:
			next, err = p.kv.Update(ctx, key, nil, e.Revision())
		case errors.Is(err, jetstream.ErrKeyNotFound):
			next, err = p.kv.Create(ctx, key, nil)
		}
	}
	if err != nil {
		return rev, fmt.Errorf("refresh presence %s: %w", key, err)
	}
	return next, nil
}

// Disconnect removes a connection's key and reports whether its user is still online through
// another connection.
//
// The key is purged rather than deleted: a KV delete leaves a marker on the key's subject until
// the bucket's TTL removes it, and since every connection has a key of its own, a user who
// reconnects often would leave a trail of markers for every later look-up to step over.
func (p *Presence) Disconnect(ctx context.Context, key string) (stillOnline bool, err error) {
	if err := p.stream.Purge(ctx, jetstream.WithPurgeSubject(presenceKeys+key)); err != nil {
		return false, fmt.Errorf("purge presence %s: %w", key, err)
	}
	user, _, _ := strings.Cut(key, ".")
	return p.UserOnline(ctx, user)
}

// UserOnline reports whether user has at least one open connection. It asks the bucket's
// leader, which has applied every put and purge that was acknowledged: a replica may not have
// seen a purge yet, and would leave a user who closed their last connection online. It steps
// through the user's keys in stream order and stops at the first live one, so it usually takes
// one request.
func (p *Presence) UserOnline(ctx context.Context, user string) (bool, error) {
	req := msgGetRequest{NextFor: presenceKeys + user + ".*"}
	for {
		m, h, err := getFromLeader(ctx, p.nc, msgGetSubject(presenceStream), req)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return false, nil
		case err != nil:
			return false, domain.Unavailable("presence is unavailable", fmt.Errorf("read presence of %s: %w", user, err))
		case h.Get(kvOperation) == "": // a put: the key is live
			return true, nil
		}
		req.Seq = m.Sequence + 1 // a delete or purge marker (a KV client's, not chatd's)
	}
}

// kvOperation is the header that marks a KV delete or purge.
const kvOperation = "KV-Operation"

// Online returns those of users who have at least one open connection. It lists the users' keys
// with a consumer of the bucket, one request for any number of users, which a replica may answer
// a moment behind the leader: for showing presence, not for deciding on it (UserOnline).
func (p *Presence) Online(ctx context.Context, users []string) ([]string, error) {
	if len(users) == 0 {
		return nil, nil
	}
	filters := make([]string, len(users))
	for i, u := range users {
		filters[i] = u + ".*"
	}
	lister, err := p.kv.ListKeysFiltered(ctx, filters...)
	if err != nil {
		return nil, domain.Unavailable("presence is unavailable", fmt.Errorf("list presence: %w", err))
	}
	defer lister.Stop() //nolint:errcheck // only stops the listing
	seen := map[string]bool{}
	var online []string
	for key := range lister.Keys() {
		user, _, _ := strings.Cut(key, ".")
		if !seen[user] {
			seen[user] = true
			online = append(online, user)
		}
	}
	return online, nil
}
