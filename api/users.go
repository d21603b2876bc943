package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/labstack/echo/v4"
)

// SeqHeader carries the stream sequence of the event a write appended. Passing it as min_seq to
// a later read makes that read see the write (read-your-writes).
const SeqHeader = "X-Chat-Seq"

func setSeq(c echo.Context, seq uint64) {
	c.Response().Header().Set(SeqHeader, strconv.FormatUint(seq, 10))
}

// putUser: PUT /api/v1/users/{user_id} {"display_name"} by the host: create or update.
func (s *server) putUser(c echo.Context) error {
	var req struct {
		DisplayName string `json:"display_name"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	u, created, seq, err := s.Commands.ProvisionUser(c.Request().Context(), c.Param("user_id"), req.DisplayName)
	if err != nil {
		return err
	}
	setSeq(c, seq)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, map[string]any{"id": u.ID, "display_name": u.DisplayName, "seq": seq})
}

// postToken: POST /api/v1/tokens {"user_id","ttl_seconds"} by the host: a token for a user it
// provisioned.
func (s *server) postToken(c echo.Context) error {
	var req struct {
		UserID     string `json:"user_id"`
		TTLSeconds int64  `json:"ttl_seconds"`
		Admin      bool   `json:"admin"`
	}
	if err := s.bind(c, &req); err != nil {
		return err
	}
	if err := domain.ValidUserID(req.UserID); err != nil {
		return err
	}
	if req.TTLSeconds == 0 {
		req.TTLSeconds = 3600
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > int64(s.Auth.maxTTL/time.Second) {
		return domain.Errorf(domain.CodeInvalid, "ttl_seconds must be between 1 and %d", int64(s.Auth.maxTTL/time.Second))
	}
	ok, err := s.Commands.UserExists(c.Request().Context(), req.UserID)
	if err != nil {
		return err
	}
	if !ok {
		return domain.Errorf(domain.CodeNotFound, "user %s has not been provisioned (PUT /api/v1/users/%s first)", req.UserID, req.UserID)
	}
	tok, exp, err := s.Auth.Mint(req.UserID, time.Duration(req.TTLSeconds)*time.Second, req.Admin)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"token": tok, "expires_at": exp.UTC()})
}

// getMe: GET /api/v1/me.
func (s *server) getMe(c echo.Context) error {
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	u, err := s.Users.Get(c.Request().Context(), currentUser(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, u)
}

// listUsers: GET /api/v1/users?q=&cursor=&limit= — the directory.
func (s *server) listUsers(c echo.Context) error {
	limit, err := queryLimit(c, 20, 100)
	if err != nil {
		return err
	}
	q := c.QueryParam("q")
	if len(q) > 100 {
		return domain.Errorf(domain.CodeInvalid, "q is longer than 100 bytes")
	}
	if err := s.waitMinSeq(c); err != nil {
		return err
	}
	users, next, err := s.Users.Search(c.Request().Context(), q, c.QueryParam("cursor"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"users": users, "next_cursor": next})
}

// waitMinSeq makes a read with ?min_seq=N wait, up to MinSeqTimeout, until the read models
// hold every event up to N (guarantee 9).
func (s *server) waitMinSeq(c echo.Context) error {
	seq, err := querySeq(c, "min_seq")
	if err != nil || seq == 0 {
		return err
	}
	ctx, cancel := contextWithTimeout(c, s.MinSeqTimeout)
	defer cancel()
	if err := s.Projector.WaitFor(ctx, seq); err != nil {
		return domain.Errorf(domain.CodeUnavailable, "the read models have not reached seq %d yet; try again", seq)
	}
	return nil
}
