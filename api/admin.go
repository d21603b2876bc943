package api

import (
	"errors"
	"net/http"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/projections"
	"github.com/chatd-dev/chatd/streams"
	"github.com/labstack/echo/v4"
)

// exportEvents: GET /api/v1/admin/events — the raw event log as JSON Lines, for auditors:
// filtered by conversation_id, actor, type, from_seq/to_seq and since/until (RFC 3339), and
// streamed, so any size is served in constant memory.
func (s *server) exportEvents(c echo.Context) error {
	f := streams.ExportFilter{ConversationID: c.QueryParam("conversation_id"), Actor: c.QueryParam("actor"), Type: c.QueryParam("type")}
	var err error
	if f.FromSeq, err = querySeq(c, "from_seq"); err != nil {
		return err
	}
	if f.ToSeq, err = querySeq(c, "to_seq"); err != nil {
		return err
	}
	for name, t := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := c.QueryParam(name); v != "" {
			if *t, err = time.Parse(time.RFC3339, v); err != nil {
				return domain.Errorf(domain.CodeInvalid, "%s must be an RFC 3339 time such as 2026-11-23T10:00:00Z", name)
			}
		}
	}
	w := &ndjsonWriter{resp: c.Response()}
	_, err = s.Commands.Export(c.Request().Context(), f, w)
	if err != nil && !w.started {
		return err // nothing sent yet: a proper error answer
	}
	if err != nil {
		// The status is sent; the client sees a truncated stream, the log says why.
		s.Log.Warn("audit export ended early", "err", err)
		return nil
	}
	w.start()
	return nil
}

// ndjsonWriter sends the 200 and its headers with the first line, so that a failure before
// any line is still answered with a proper error status.
type ndjsonWriter struct {
	resp    *echo.Response
	started bool
}

func (w *ndjsonWriter) start() {
	if !w.started {
		w.started = true
		w.resp.Header().Set(echo.HeaderContentType, "application/x-ndjson")
		w.resp.WriteHeader(http.StatusOK)
	}
}

func (w *ndjsonWriter) Write(p []byte) (int, error) {
	w.start()
	n, err := w.resp.Write(p)
	w.resp.Flush()
	return n, err
}

// getProjections: GET /api/v1/admin/projections — each read model's checkpoint and lag (in
// events and seconds), parked events, and the latest rebuild.
func (s *server) getProjections(c echo.Context) error {
	st, err := s.Projector.Status(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"projections": []projections.Status{st}, "rebuild": s.Rebuilds.Status()})
}

// postRebuild: POST /api/v1/admin/projections/rebuild — starts rebuilding the read models from
// the stream in the background (202); answers 409 while one runs, 503 while the node shuts down.
func (s *server) postRebuild(c echo.Context) error {
	st, err := s.Rebuilds.Start()
	switch {
	case errors.Is(err, projections.ErrRebuildRunning):
		return c.JSON(http.StatusConflict, map[string]any{
			"error":   map[string]string{"code": string(domain.CodeConflict), "message": err.Error()},
			"rebuild": st,
		})
	case err != nil:
		return domain.Unavailable("no rebuild started: "+err.Error()+"; ask another node", err)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/admin/projections")
	return c.JSON(http.StatusAccepted, map[string]any{"rebuild": st})
}
