package api

import (
	"net/http"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/projections"
	"github.com/labstack/echo/v4"
)

// postMessage: POST /api/v1/conversations/{id}/messages {"client_msg_id","body"}. 201 with the
// new message; 200 with the original when client_msg_id was sent before, at any time.
func (s *server) postMessage(c echo.Context) error {
	var req struct {
		ClientMsgID string `json:"client_msg_id"`
		Body        string `json:"body"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	m, created, seq, err := s.Commands.SendMessage(c.Request().Context(), currentUser(c), c.Param("id"), req.ClientMsgID, req.Body)
	if err != nil {
		return err
	}
	setSeq(c, seq)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, m)
}

// listMessages: GET /api/v1/conversations/{id}/messages?before=&after=&limit=&min_seq=.
func (s *server) listMessages(c echo.Context) error {
	limit, err := queryLimit(c, 15, 100)
	if err != nil {
		return err
	}
	before, err := querySeq(c, "before")
	if err != nil {
		return err
	}
	after, err := querySeq(c, "after")
	if err != nil {
		return err
	}
	if before > 0 && after >= before {
		return domain.Errorf(domain.CodeInvalid, "after must be less than before")
	}
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	ctx, convID := c.Request().Context(), c.Param("id")
	if err := s.requireMember(c, convID); err != nil {
		return err
	}
	list, more, err := s.Messages.List(ctx, convID, projections.Page{Before: before, After: after, Limit: limit})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"messages": list, "has_more": more})
}

func (s *server) requireMember(c echo.Context, convID string) error {
	ok, err := s.Conversations.IsMember(c.Request().Context(), currentUser(c), convID)
	if err != nil {
		return err
	}
	if !ok {
		return domain.Errorf(domain.CodeNotFound, "conversation not found")
	}
	return nil
}

// getMessage: GET /api/v1/messages/{id}.
func (s *server) getMessage(c echo.Context) error {
	convID, _, err := domain.SplitMessageID(c.Param("id"))
	if err != nil {
		return err
	}
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	if err := s.requireMember(c, convID); err != nil {
		if domain.ErrorCode(err) == domain.CodeNotFound {
			return domain.Errorf(domain.CodeNotFound, "message not found")
		}
		return err // e.g. 503 while the read models are down: retry, not "gone"
	}
	m, err := s.Messages.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, m)
}

// patchMessage: PATCH /api/v1/messages/{id} {"body"} — the author edits.
func (s *server) patchMessage(c echo.Context) error {
	var req struct {
		Body string `json:"body"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	m, seq, err := s.Commands.EditMessage(c.Request().Context(), currentUser(c), c.Param("id"), req.Body)
	if err != nil {
		return err
	}
	setSeq(c, seq)
	return c.JSON(http.StatusOK, m)
}

// deleteMessage: DELETE /api/v1/messages/{id} — the author, or the group's creator.
func (s *server) deleteMessage(c echo.Context) error {
	m, seq, err := s.Commands.DeleteMessage(c.Request().Context(), currentUser(c), c.Param("id"))
	if err != nil {
		return err
	}
	setSeq(c, seq)
	return c.JSON(http.StatusOK, m)
}

// postRead: POST /api/v1/conversations/{id}/read {"seq"} — move my read marker.
func (s *server) postRead(c echo.Context) error {
	var req struct {
		Seq uint64 `json:"seq"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	seq, err := s.Commands.MarkRead(c.Request().Context(), currentUser(c), c.Param("id"), req.Seq)
	if err != nil {
		return err
	}
	setSeq(c, seq)
	return c.JSON(http.StatusOK, map[string]any{"conversation_id": c.Param("id"), "read_seq": req.Seq, "seq": seq})
}
