package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/chatd-dev/chatd/metrics"
	"github.com/chatd-dev/chatd/projections"
	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// Feed is the push side as the WebSocket handler uses it; *projections.Feed implements it.
type Feed interface {
	Subscribe(user string, deliver func(seq, prev uint64, frame []byte), lost func()) (stop func(), err error)
	Send(user string, frame []byte) error
	Position(ctx context.Context) (projections.Position, error)
	Replay(ctx context.Context, user string, spans []projections.Span, after, upTo uint64, max int, send func(seq uint64, frame []byte) error) error
}

// WebSocket close codes beyond the standard ones (4000-4999 are the application's).
const (
	CloseTokenExpired = 4001 // the token expired: reconnect with a fresh one
	CloseTooSlow      = 4008 // the client fell too far behind: reconnect with since
)

// WSConfig tunes the WebSocket endpoint.
type WSConfig struct {
	// AllowedOrigins are the browser origins (scheme://host[:port]) that may connect besides
	// chatd's own: the host sites that embed the chat.
	AllowedOrigins []string
	SendQueue      int           // frames buffered per connection before it counts as too slow
	MaxReplay      int           // most events replayed on resume before resync_required
	WriteTimeout   time.Duration // a write that takes longer ends the connection
	PingInterval   time.Duration // heartbeat; a client silent for two intervals is gone
}

func (c *WSConfig) defaults() {
	if c.SendQueue <= 0 {
		c.SendQueue = 1024
	}
	if c.MaxReplay <= 0 {
		c.MaxReplay = 10_000
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
}

// Hub knows this node's WebSocket connections, so that shutdown can close them all with "going
// away" (http.Server.Shutdown does not close hijacked connections).
type Hub struct {
	mu     sync.Mutex
	conns  map[*wsConn]struct{}
	closed bool
	// running counts the connections whose goroutine has not ended: CloseAll waits for them, so
	// that each says its user went offline before the node lets go of NATS.
	running sync.WaitGroup
}

// NewHub returns an empty hub.
func NewHub() *Hub { return &Hub{conns: map[*wsConn]struct{}{}} }

func (h *Hub) add(c *wsConn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns[c] = struct{}{}
	h.running.Add(1)
	c.metrics.Connections(1)
	return true
}

func (h *Hub) remove(c *wsConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; ok {
		delete(h.conns, c)
		h.running.Done()
		c.metrics.Connections(-1)
	}
}

// CloseAll closes every connection with 1001 "going away" and refuses new ones, so clients
// reconnect to another node. It waits until every connection has ended (its user's presence
// taken back, its push subscription stopped), or ctx ends.
func (h *Hub) CloseAll(ctx context.Context) error {
	h.mu.Lock()
	h.closed = true
	conns := make([]*wsConn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		// In parallel: a close waits up to a second for a write in progress to a client that
		// stopped reading, and one such client must not hold up the others' 1001.
		go c.close(websocket.CloseGoingAway, "server shutting down; reconnect")
	}
	ended := make(chan struct{})
	go func() { h.running.Wait(); close(ended) }()
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("websocket connections still ending: %w", ctx.Err())
	}
}

var writeBuffers sync.Pool

// wsConn is one client connection. Frames reach it from the NATS subscription (live) and from
// the replay; one writer goroutine sends them, so a slow client only ever fills its own queue.
type wsConn struct {
	ws      *websocket.Conn
	out     frameQueue
	done    chan struct{}
	once    sync.Once
	user    string
	cfg     *WSConfig
	metrics *metrics.Metrics
	// cancel ends the context of what the connection does for its client (the replay, its
	// look-ups), when the connection closes for any reason.
	cancel context.CancelFunc
	// onPing, when set, runs (in its own goroutine) at every heartbeat: presence renews its key
	// there rather than in a goroutine of its own per connection.
	onPing atomic.Pointer[func()]
	slow   atomic.Bool // closing with 4008 (too slow, or missed a push)
	state  sync.Mutex  // guards live, floor and pending
	live   bool
	floor  uint64 // live frames at or below this seq were sent, replayed or predate the client
	// pending holds live frames that arrive while the replay runs.
	pending []pendingFrame
}

type pendingFrame struct {
	seq, prev uint64
	frame     []byte
}

// deliver takes a live frame from the node's push dispatcher; it never blocks. prev is the seq
// of the push to this user before it, when the projector knows it.
func (c *wsConn) deliver(seq, prev uint64, frame []byte) {
	c.state.Lock()
	if !c.live {
		if len(c.pending) >= c.cfg.SendQueue {
			c.state.Unlock()
			c.tooSlow()
			return
		}
		c.pending = append(c.pending, pendingFrame{seq, prev, frame})
		c.state.Unlock()
		return
	}
	send, gap := c.pass(seq, prev)
	c.state.Unlock()
	switch {
	case gap:
		if c.missed() {
			go c.close(CloseTooSlow, reasonMissed) // the dispatcher must not wait for one client
		}
	case send && len(frame) > 0: // a check has none
		c.enqueue(frame)
	}
}

// pass moves the floor past a live frame and reports whether to send it, or whether a frame
// before it never arrived. Live frames come in stream order, so one at or below the floor is one
// the client has: a new projector leader pushes its predecessor's last events again (see
// projections.Projector.repush). One whose prev is above the floor follows a push that NATS lost
// on its way here (core NATS delivers at most once); so does a check (seq 0, no frame) whose
// prev is. Frames without seq or prev (typing) pass. c.state must be held.
func (c *wsConn) pass(seq, prev uint64) (send, gap bool) {
	if seq != 0 && seq <= c.floor {
		return false, false
	}
	if prev > c.floor {
		return false, true
	}
	c.floor = max(c.floor, seq)
	return true, false
}

// goLive sends the live frames that arrived during the replay, past floor, waiting for queue
// space like the replay, then switches to live delivery. Frames that keep arriving meanwhile
// join pending, so their order holds.
func (c *wsConn) goLive(ctx context.Context, floor uint64) error {
	c.state.Lock()
	c.floor = floor
	for len(c.pending) > 0 {
		batch := c.pending
		c.pending = nil
		var frames [][]byte
		for _, p := range batch {
			send, gap := c.pass(p.seq, p.prev)
			if gap {
				c.state.Unlock()
				if c.missed() {
					c.close(CloseTooSlow, reasonMissed)
				}
				return errPushLost
			}
			if send && len(p.frame) > 0 {
				frames = append(frames, p.frame)
			}
		}
		c.state.Unlock()
		for _, f := range frames {
			if err := c.enqueueWait(ctx, f); err != nil {
				return err
			}
		}
		c.state.Lock()
	}
	c.live = true
	c.state.Unlock()
	return nil
}

// frameQueue holds a connection's frames until the writer takes them. It allocates only for
// frames actually waiting, so an idle connection costs a few words, not a preallocated buffer
// per connection.
type frameQueue struct {
	mu    sync.Mutex
	items [][]byte
	max   int
	ready chan struct{} // signalled when frames wait
	space chan struct{} // signalled when the writer took frames
}

func newFrameQueue(max int) frameQueue {
	return frameQueue{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// push adds a frame unless max frames already wait.
func (q *frameQueue) push(frame []byte) bool {
	q.mu.Lock()
	if len(q.items) >= q.max {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, frame)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// take removes and returns every waiting frame.
func (q *frameQueue) take() [][]byte {
	q.mu.Lock()
	items := q.items
	q.items = nil
	q.mu.Unlock()
	select {
	case q.space <- struct{}{}:
	default:
	}
	return items
}

// enqueue never blocks: a client whose queue is full is closed and resumes later with since.
// Once it is being closed for that, or for a missed push, nothing more is queued: the client
// resumes from the last seq it got, and a later frame would make it skip the ones it missed.
func (c *wsConn) enqueue(frame []byte) {
	select {
	case <-c.done:
		return
	default:
	}
	if c.slow.Load() {
		return
	}
	if !c.out.push(frame) {
		c.tooSlow()
	}
}

// tooSlow closes a client that fell too far behind (4008). The close runs in a goroutine of its
// own: it waits for the writer, which may be stuck on this very client, and the caller is the
// node's push dispatcher, which must never wait for one client.
func (c *wsConn) tooSlow() {
	if c.slow.CompareAndSwap(false, true) {
		c.metrics.SlowClose()
		go c.close(CloseTooSlow, "too far behind; reconnect with since")
	}
}

// missed reports whether the connection is to be closed because a push never reached it (4008),
// so that the client resumes from its last seq and gets the event from the read models; false
// when it is being closed already.
func (c *wsConn) missed() bool {
	if !c.slow.CompareAndSwap(false, true) {
		return false
	}
	c.metrics.PushGap()
	return true
}

const reasonMissed = "missed a push; reconnect with since"

// errPushLost ends a connection's start when a push it was owed never arrived.
var errPushLost = errors.New("a push was lost on its way to this node")

// enqueueWait is for the replay, which may hold more frames than the queue: it waits for the
// writer instead of treating a full queue as a slow client.
func (c *wsConn) enqueueWait(ctx context.Context, frame []byte) error {
	if c.slow.Load() {
		return errors.New("connection closing with 4008") // see enqueue
	}
	for !c.out.push(frame) {
		select {
		case <-c.out.space:
		case <-c.done:
			return errors.New("connection closed during replay")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// close ends the connection, with a close frame unless the connection already failed (1006
// may not be sent on the wire). The close frame waits at most a second for a frame being
// written (gorilla's WriteControl may run beside the writer); then the socket closes under it.
func (c *wsConn) close(code int, reason string) {
	c.once.Do(func() {
		c.cancel()
		if code != websocket.CloseAbnormalClosure {
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		}
		close(c.done)
		_ = c.ws.Close()
	})
}

// closed reports whether close has run.
func (c *wsConn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// writer sends queued frames and heartbeats until the connection closes.
func (c *wsConn) writer() {
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-c.out.ready:
			for _, frame := range c.out.take() {
				_ = c.ws.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
				if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
					c.close(websocket.CloseAbnormalClosure, "write failed")
					return
				}
				c.metrics.FrameSent()
			}
		case <-ping.C:
			if f := c.onPing.Load(); f != nil {
				go (*f)()
			}
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.cfg.WriteTimeout)); err != nil {
				c.close(websocket.CloseAbnormalClosure, "ping failed")
				return
			}
		}
	}
}

// controlFrame is a frame chatd makes itself (not an event).
type controlFrame struct {
	Type           string `json:"type"`
	ConversationID string `json:"conversation_id,omitempty"`
	Data           any    `json:"data,omitempty"`
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // control frames are plain structs
	}
	return b
}

// websocketToken reads the user token: the token query parameter (browsers cannot set headers
// on a WebSocket) or an Authorization header. Neither is ever logged.
func websocketToken(c echo.Context) string {
	if tok, ok := bearer(c); ok {
		return tok
	}
	return c.QueryParam("token")
}

// checkOrigin allows requests without an Origin (not a browser), from chatd's own origin, and
// from the configured host sites.
func (s *server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, o := range s.WS.AllowedOrigins {
		if strings.EqualFold(strings.TrimRight(o, "/"), origin) {
			return true
		}
	}
	return false
}

// ws: GET /api/v1/ws?token=&since=&epoch= — the push channel. See docs/api.md for frames,
// close codes and the resume contract.
func (s *server) ws(c echo.Context) error {
	claims, err := s.Auth.verify(websocketToken(c))
	if err != nil {
		return err
	}
	user, exp := claims.Subject, claims.ExpiresAt.Time
	if !s.checkOrigin(c.Request()) {
		return domain.Errorf(domain.CodeForbidden, "origin %q may not open the chat", c.Request().Header.Get("Origin"))
	}
	since, err := querySeq(c, "since")
	if err != nil {
		return err
	}
	resume := c.QueryParam("since") != ""
	// Write buffers come from a pool, held only while a frame is written: an idle connection
	// keeps none.
	upgrader := websocket.Upgrader{CheckOrigin: s.checkOrigin, ReadBufferSize: 1024, WriteBufferSize: 4096, WriteBufferPool: &writeBuffers}
	ws, err := upgrader.Upgrade(c.Response(), c.Request(), nil)
	if err != nil {
		return nil // the upgrader has answered the client
	}
	// The connection lives on in goroutines of its own, and this handler returns: net/http then
	// drops what it keeps per request (buffers, the request, its goroutine's stack), about half
	// of an idle connection's memory. The request's context ends with the handler; the
	// connection's ends when it closes.
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.Request().Context()))
	conn := &wsConn{ws: ws, out: newFrameQueue(s.WS.SendQueue), done: make(chan struct{}), user: user, cfg: &s.WS, metrics: s.Metrics, cancel: cancel}
	if !s.Hub.add(conn) {
		conn.close(websocket.CloseGoingAway, "server shutting down; reconnect")
		return nil
	}
	go s.serveConn(ctx, conn, exp, resume, since, c.QueryParam("epoch"))
	return nil
}

// serveConn runs an upgraded connection until it closes: it subscribes the user's pushes, starts
// the stream (replay, ready, live), keeps the user's presence, and reads client frames.
func (s *server) serveConn(ctx context.Context, conn *wsConn, exp time.Time, resume bool, since uint64, epoch string) {
	defer s.Hub.remove(conn)
	defer func() {
		if v := recover(); v != nil { // no middleware recovers this goroutine
			s.Log.Error("websocket connection panicked", "panic", v, "stack", string(debug.Stack()))
			conn.close(websocket.CloseInternalServerErr, "internal error")
		}
		if conn.slow.Load() { // closing with 4008 in a goroutine of its own: that close, not 1000
			conn.close(CloseTooSlow, "too far behind; reconnect with since")
		}
		conn.close(websocket.CloseNormalClosure, "")
	}()
	go conn.writer()
	expiry := time.AfterFunc(time.Until(exp), func() { conn.close(CloseTokenExpired, "token expired; reconnect with a fresh token") })
	defer expiry.Stop()

	// Subscribe before reading the position: every event committed after the position read
	// below is pushed after this subscription exists, so nothing falls between replay and live.
	stop, err := s.Feed.Subscribe(conn.user, conn.deliver, conn.tooSlow)
	if err != nil {
		conn.close(websocket.CloseTryAgainLater, "push unavailable; try again")
		return
	}
	defer stop()
	if err := s.startStream(ctx, conn, resume, since, epoch); errors.Is(err, errPushLost) || conn.slow.Load() {
		return // closing with 4008: the client resumes
	} else if err != nil {
		if !conn.closed() { // a closed connection's start ends as it should
			s.Log.Warn("websocket start failed", "err", err)
			conn.close(websocket.CloseTryAgainLater, "try again")
		}
		return
	}
	defer s.trackPresence(conn)()
	s.readClient(ctx, conn)
}

// startStream replays what a resuming client missed (up to the committed position), tells it
// where it stands (ready), and switches to live frames.
func (s *server) startStream(ctx context.Context, conn *wsConn, resume bool, since uint64, epoch string) error {
	pos, err := s.Feed.Position(ctx)
	if err != nil {
		return err
	}
	resync := func(reason string) {
		conn.enqueue(mustJSON(controlFrame{Type: "resync_required", Data: map[string]string{"reason": reason}}))
	}
	if resume {
		switch {
		case epoch != "" && epoch != pos.Epoch:
			resync("the event stream was recreated since your last seq; reload over REST")
		case since > pos.Last:
			resync("since is beyond the end of the event stream (another stream epoch); reload over REST")
		case pos.First > 1 && since < pos.First-1:
			resync("events after since are no longer retained; reload over REST")
		default:
			spans, err := s.Conversations.Spans(ctx, conn.user, since)
			if err != nil {
				return err
			}
			err = s.Feed.Replay(ctx, conn.user, spans, since, pos.Committed, s.WS.MaxReplay, func(_ uint64, frame []byte) error {
				return conn.enqueueWait(ctx, frame)
			})
			if errors.Is(err, projections.ErrTooFarBehind) {
				resync("too many events to replay; reload over REST")
			} else if err != nil {
				return err
			}
		}
	}
	if err := conn.enqueueWait(ctx, mustJSON(controlFrame{Type: "ready", Data: map[string]any{"epoch": pos.Epoch, "seq": pos.Committed}})); err != nil {
		return err
	}
	return conn.goLive(ctx, pos.Committed)
}

// clientFrame is what a client may send.
type clientFrame struct {
	Type           string `json:"type"`
	ConversationID string `json:"conversation_id"`
}

// readClient reads client frames (typing) until the connection ends. Pongs keep it alive.
func (s *server) readClient(ctx context.Context, conn *wsConn) {
	ws := conn.ws
	ws.SetReadLimit(4096)
	deadline := func() { _ = ws.SetReadDeadline(time.Now().Add(2*s.WS.PingInterval + 5*time.Second)) }
	deadline()
	ws.SetPongHandler(func(string) error { deadline(); return nil })
	typing := rate.NewLimiter(rate.Every(time.Second), 3)
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		deadline()
		var f clientFrame
		if err := json.Unmarshal(data, &f); err != nil {
			conn.enqueue(mustJSON(controlFrame{Type: "error", Data: map[string]string{"message": "frames must be JSON objects"}}))
			continue
		}
		switch f.Type {
		case "typing":
			if typing.Allow() {
				s.typing(ctx, conn.user, f.ConversationID)
			}
		default:
			conn.enqueue(mustJSON(controlFrame{Type: "error", Data: map[string]string{"message": "unknown frame type " + f.Type}}))
		}
	}
}

// typing tells the other members of a conversation that user is typing. It is ephemeral:
// never stored, no seq.
func (s *server) typing(ctx context.Context, user, convID string) {
	conv, _, err := s.Commands.Conversation(ctx, convID)
	if err != nil || !conv.IsMember(user) {
		return
	}
	frame := mustJSON(controlFrame{Type: "typing", ConversationID: convID, Data: map[string]string{"user_id": user}})
	for _, m := range conv.Members {
		if m != user {
			_ = s.Feed.Send(m, frame)
		}
	}
}
