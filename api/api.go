// Package api is the HTTP edge of chatd: the REST API for host sites (service key) and for
// users (tokens), built on echo. Writes go to the command side (streams.Store), reads to the
// read models (projections); this package decides nothing itself beyond who may ask.
package api

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/metrics"
	"github.com/chatd-dev/chatd/projections"
	"github.com/chatd-dev/chatd/streams"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
)

// Commands is the command side as the API uses it; *streams.Store implements it.
type Commands interface {
	ProvisionUser(ctx context.Context, id, displayName string) (domain.User, bool, uint64, error)
	UserExists(ctx context.Context, id string) (bool, error)
	CreateConversation(ctx context.Context, actor, kind, title string, members []string) (domain.Conversation, bool, uint64, error)
	AddMember(ctx context.Context, actor, convID, user string) (domain.Conversation, uint64, error)
	RemoveMember(ctx context.Context, actor, convID, user string) (domain.Conversation, uint64, error)
	SendMessage(ctx context.Context, actor, convID, clientMsgID, body string) (m domain.Message, created bool, seq uint64, err error)
	EditMessage(ctx context.Context, actor, msgID, body string) (domain.Message, uint64, error)
	DeleteMessage(ctx context.Context, actor, msgID string) (domain.Message, uint64, error)
	MarkRead(ctx context.Context, actor, convID string, seq uint64) (uint64, error)
	Export(ctx context.Context, f streams.ExportFilter, w io.Writer) (int, error)
	Conversation(ctx context.Context, id string) (domain.Conversation, uint64, error)
}

// Projector tells how far the read models are; *projections.Projector implements it.
type Projector interface {
	WaitFor(ctx context.Context, seq uint64) error
	Healthy() error
	Parked() int64
	Status(ctx context.Context) (projections.Status, error)
}

// Rebuilds runs rebuilds of the read models for admins; *projections.Rebuilds implements it.
type Rebuilds interface {
	Start() (projections.RebuildStatus, error)
	Status() projections.RebuildStatus
}

// Check is one named readiness check for /readyz.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// Deps is everything the API needs, built by cmd/chatd.
type Deps struct {
	Commands      Commands
	Users         projections.Users
	Conversations projections.Conversations
	Messages      projections.Messages
	Projector     Projector
	Rebuilds      Rebuilds
	Feed          Feed
	Presence      Presence
	Hub           *Hub
	WS            WSConfig
	Auth          *Auth
	Checks        []Check
	Metrics       *metrics.Metrics
	// MetricsHandler serves GET /metrics (Prometheus text format) when Metrics is set.
	MetricsHandler http.Handler
	Log            *slog.Logger
	// MinSeqTimeout bounds how long a read with min_seq waits for the read models.
	MinSeqTimeout time.Duration
	// MaxBodyBytes bounds request bodies.
	MaxBodyBytes int64
	// Web serves the chat page for iframes (/embed/) and the host script (/embed.js), when set.
	Web http.Handler
}

type server struct{ Deps }

// New returns the HTTP handler of the API.
func New(d Deps) *echo.Echo {
	if d.MinSeqTimeout <= 0 {
		d.MinSeqTimeout = 5 * time.Second
	}
	if d.MaxBodyBytes <= 0 {
		d.MaxBodyBytes = 64 << 10
	}
	d.WS.defaults()
	if d.Hub == nil {
		d.Hub = NewHub()
	}
	s := &server{Deps: d}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.Use(middleware.Recover())
	e.Use(s.logRequests)

	e.GET("/healthz", s.healthz)
	if d.Metrics != nil {
		e.GET("/metrics", echo.WrapHandler(d.MetricsHandler))
	}
	e.GET("/readyz", s.readyz)
	if d.Web != nil {
		web := echo.WrapHandler(d.Web)
		e.GET("/embed.js", web)
		e.GET("/embed", web)
		e.GET("/embed/*", web)
	}

	// Credentials are checked per route, not per group: a group's middleware would also run for
	// unknown paths and wrong methods, answering 401 where 404 or 405 is the truth.
	v1 := e.Group("/api/v1")
	host, user := s.requireServiceKey, s.requireUser
	v1.PUT("/users/:user_id", s.putUser, host)
	v1.POST("/tokens", s.postToken, host)

	v1.GET("/me", s.getMe, user)
	v1.GET("/users", s.listUsers, user)
	v1.POST("/conversations", s.postConversation, user)
	v1.GET("/conversations", s.listConversations, user)
	v1.GET("/conversations/:id", s.getConversation, user)
	v1.POST("/conversations/:id/members", s.postMember, user)
	v1.DELETE("/conversations/:id/members/:user_id", s.deleteMember, user)
	v1.POST("/conversations/:id/messages", s.postMessage, user)
	v1.GET("/conversations/:id/messages", s.listMessages, user)
	v1.POST("/conversations/:id/read", s.postRead, user)
	v1.GET("/conversations/:id/presence", s.getPresence, user)
	v1.GET("/messages/:id", s.getMessage, user)
	v1.PATCH("/messages/:id", s.patchMessage, user)
	v1.DELETE("/messages/:id", s.deleteMessage, user)
	v1.GET("/admin/events", s.exportEvents, user, s.requireAdmin)
	if d.Rebuilds != nil {
		v1.GET("/admin/projections", s.getProjections, user, s.requireAdmin)
		v1.POST("/admin/projections/rebuild", s.postRebuild, user, s.requireAdmin)
	}
	v1.GET("/ws", s.ws) // authenticates itself: browsers cannot send headers on a WebSocket
	return e
}

// logRequests logs one line per request: the route, never the query string or headers, which
// may carry credentials.
func (s *server) logRequests(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		took := time.Since(start)
		s.Metrics.Request(c.Path(), c.Request().Method, c.Response().Status, took)
		s.Log.Debug("http", "method", c.Request().Method, "route", c.Path(), "status", c.Response().Status,
			"duration", took)
		return nil
	}
}

func (s *server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when NATS and PostgreSQL answer and the projector runs, else 503 with
// the state of each.
func (s *server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	status, code := map[string]string{}, http.StatusOK
	checks := append(slices.Clip(s.Checks), Check{Name: "projector", Check: func(context.Context) error { return s.Projector.Healthy() }})
	for _, ch := range checks {
		if err := ch.Check(ctx); err != nil {
			status[ch.Name], code = err.Error(), http.StatusServiceUnavailable
		} else {
			status[ch.Name] = "ok"
		}
	}
	// Parked events need an operator but do not make the node unfit to serve.
	if n := s.Projector.Parked(); n > 0 {
		status["parked_events"] = strconv.FormatInt(n, 10)
	}
	return c.JSON(code, status)
}
