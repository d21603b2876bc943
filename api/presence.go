package api

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/labstack/echo/v4"
)

// Presence tracks open connections across nodes; *streams.Presence implements it.
type Presence interface {
	Connect(ctx context.Context, user string) (key string, rev uint64, err error)
	Refresh(ctx context.Context, key string, rev uint64) (uint64, error)
	Disconnect(ctx context.Context, key string) (stillOnline bool, err error)
	UserOnline(ctx context.Context, user string) (bool, error)
	Online(ctx context.Context, users []string) ([]string, error)
}

// trackPresence marks the connection's user online and returns what to call when the
// connection ends. The key is renewed at every heartbeat (every 25 s by default, well within
// the bucket's 45 s TTL); contacts hear when the user comes online and when their last
// connection goes.
func (s *server) trackPresence(conn *wsConn) (done func()) {
	if s.Presence == nil {
		return func() {}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	key, rev, err := s.Presence.Connect(ctx, conn.user)
	cancel()
	if err != nil {
		s.Log.Warn("presence unavailable", "err", err)
		return func() {}
	}
	s.announce(conn.user, true)
	cp := &connPresence{p: s.Presence, key: key, rev: rev}
	refresh := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := cp.refresh(ctx); err != nil {
			s.Log.Warn("presence refresh failed", "err", err)
		}
	}
	conn.onPing.Store(&refresh)
	return func() {
		conn.onPing.Store(nil)
		still, err := cp.close(5 * time.Second)
		if err == nil && !still {
			s.announce(conn.user, false)
		}
	}
}

// connPresence is one connection's presence key. Renewals run in goroutines of their own, from
// the connection's writer, which may outlive its reader: one that is still under way when the
// connection closes, or that starts after, must not put back the key that closing removed, or
// the user would show online for a whole TTL after leaving.
type connPresence struct {
	p      Presence
	key    string
	rev    uint64     // the key's revision, which the next renewal expects
	mu     sync.Mutex // held across a renewal and across the close's removal of the key
	closed bool
}

// refresh renews the key unless the connection has closed.
func (c *connPresence) refresh(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	rev, err := c.p.Refresh(ctx, c.key, c.rev)
	c.rev = rev
	return err
}

// close removes the key, after any renewal under way, and reports whether the user is still
// online through another connection. Its timeout starts once the renewal is done: a renewal
// that hangs until its own timeout must not leave the removal none.
func (c *connPresence) close(timeout time.Duration) (stillOnline bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.p.Disconnect(ctx, c.key)
}

// announce sends a presence frame about user to everyone who shares a conversation with them.
func (s *server) announce(user string, online bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	contacts, err := s.Conversations.Contacts(ctx, user)
	if err != nil {
		s.Log.Warn("presence not announced", "user", user, "err", err)
		return
	}
	if !online {
		// A reload's new connection may have come up meanwhile: do not let a late "offline"
		// overtake its "online".
		if now, err := s.Presence.UserOnline(ctx, user); err == nil && now {
			return
		}
	}
	frame := mustJSON(controlFrame{Type: "presence", Data: map[string]any{"user_id": user, "online": online}})
	for _, c := range contacts {
		_ = s.Feed.Send(c, frame)
	}
}

// getPresence: GET /api/v1/conversations/{id}/presence — which members are online now.
func (s *server) getPresence(c echo.Context) error {
	ctx := c.Request().Context()
	conv, _, err := s.Commands.Conversation(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	if !conv.IsMember(currentUser(c)) {
		return domain.Errorf(domain.CodeNotFound, "conversation not found")
	}
	online := []string{}
	if s.Presence != nil {
		if online, err = s.Presence.Online(ctx, conv.Members); err != nil {
			return err
		}
	}
	if online == nil {
		online = []string{}
	}
	return c.JSON(http.StatusOK, map[string]any{"conversation_id": conv.ID, "online": online})
}
