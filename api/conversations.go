package api

import (
	"context"
	"net/http"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/labstack/echo/v4"
)

func contextWithTimeout(c echo.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Request().Context(), d)
}

// conversationWritten is what a conversation write answers: the state it decided on, from the
// stream (so writes answer while PostgreSQL is down), and the event's seq.
type conversationWritten struct {
	ID        string        `json:"id"`
	Kind      string        `json:"kind"`
	Title     string        `json:"title"`
	CreatorID string        `json:"creator_id"`
	CreatedAt time.Time     `json:"created_at"`
	Members   []memberEntry `json:"members"`
	Seq       uint64        `json:"seq"`
}

type memberEntry struct {
	UserID string `json:"user_id"`
}

func written(c domain.Conversation, seq uint64) conversationWritten {
	w := conversationWritten{ID: c.ID, Kind: c.Kind, Title: c.Title, CreatorID: c.CreatorID, CreatedAt: c.CreatedAt, Seq: seq,
		Members: make([]memberEntry, 0, len(c.Members))} // [] once the last member left, never null
	for _, m := range c.Members {
		w.Members = append(w.Members, memberEntry{UserID: m})
	}
	return w
}

// postConversation: POST /api/v1/conversations {"kind","title","members"}.
func (s *server) postConversation(c echo.Context) error {
	var req struct {
		Kind    string   `json:"kind"`
		Title   string   `json:"title"`
		Members []string `json:"members"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	conv, created, seq, err := s.Commands.CreateConversation(c.Request().Context(), currentUser(c), req.Kind, req.Title, req.Members)
	if err != nil {
		return err
	}
	if !created && !conv.IsMember(currentUser(c)) {
		return domain.Errorf(domain.CodeNotFound, "conversation not found")
	}
	setSeq(c, seq)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, written(conv, seq))
}

// listConversations: GET /api/v1/conversations?before=&limit= — mine, most recent first.
func (s *server) listConversations(c echo.Context) error {
	limit, err := queryLimit(c, 20, 100)
	if err != nil {
		return err
	}
	before, err := querySeq(c, "before")
	if err != nil {
		return err
	}
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	list, more, err := s.Conversations.List(c.Request().Context(), currentUser(c), before, limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"conversations": list, "has_more": more})
}

// getConversation: GET /api/v1/conversations/{id}.
func (s *server) getConversation(c echo.Context) error {
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	v, err := s.Conversations.Get(c.Request().Context(), currentUser(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

// postMember: POST /api/v1/conversations/{id}/members {"user_id"}.
func (s *server) postMember(c echo.Context) error {
	var req struct {
		UserID string `json:"user_id"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	conv, seq, err := s.Commands.AddMember(c.Request().Context(), currentUser(c), c.Param("id"), req.UserID)
	if err != nil {
		return err
	}
	setSeq(c, seq)
	return c.JSON(http.StatusOK, written(conv, seq))
}

// deleteMember: DELETE /api/v1/conversations/{id}/members/{user_id} — leave, or removal by the
// group's creator.
func (s *server) deleteMember(c echo.Context) error {
	conv, seq, err := s.Commands.RemoveMember(c.Request().Context(), currentUser(c), c.Param("id"), c.Param("user_id"))
	if err != nil {
		return err
	}
	setSeq(c, seq)
	return c.JSON(http.StatusOK, written(conv, seq))
}
