package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/projections"
)

// startOnly is a Rebuilds whose Start answers with err.
type startOnly struct{ err error }

func (r startOnly) Start() (projections.RebuildStatus, error) {
	return projections.RebuildStatus{State: "running"}, r.err
}
func (startOnly) Status() projections.RebuildStatus { return projections.RebuildStatus{} }

// POST /admin/projections/rebuild says why it started nothing: 409 while a rebuild runs, 503
// while the node shuts down.
func TestRebuildRefusals(t *testing.T) {
	auth, err := NewAuth(strings.Repeat("k", 32), strings.Repeat("s", 32), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := auth.Mint("root", time.Minute, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err  error
		want int
		code string
	}{
		{nil, http.StatusAccepted, ""},
		{projections.ErrRebuildRunning, http.StatusConflict, "conflict"},
		{projections.ErrRebuildsClosed, http.StatusServiceUnavailable, "unavailable"},
	} {
		h := New(Deps{Auth: auth, Rebuilds: startOnly{tc.err}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		req := httptest.NewRequest(http.MethodPost, "/api/v1/admin/projections/rebuild", nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body struct {
			Error struct{ Code, Message string }
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != tc.want || body.Error.Code != tc.code {
			t.Errorf("Start error %v: %d %s, want %d with code %q", tc.err, rec.Code, rec.Body, tc.want, tc.code)
		}
	}
}
