package streams

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reads that a decision rests on go to the stream's leader.
//
// The stream allows direct gets, which any replica may answer, and a replica may lag the leader
// by a few appends. An append's expectation covers only the conversation's last sequence, so a
// decision must never combine a current tip with a state read from a lagging replica: it would be
// accepted on stale state (a removed member sending, say). The leader's store is the one the
// expectations are checked against, and it only moves forward; reading every input of a decision
// from it, tip first, makes whatever is read after the tip at least as new as the tip.
//
// On a single server (the embedded default) leader and replica are the same store; the cost is
// the JetStream API's request queue instead of the stream's own direct-get subscription.

// msgGetRequest is the body of a $JS.API.STREAM.MSG.GET request.
type msgGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// msgGetResponse is its answer.
type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *storedMsg          `json:"message,omitempty"`
}

// storedMsg is a message as the stream's leader returns it.
type storedMsg struct {
	Subject  string    `json:"subject"`
	Sequence uint64    `json:"seq"`
	Header   []byte    `json:"hdrs,omitempty"`
	Data     []byte    `json:"data"`
	Time     time.Time `json:"time"`
}

// defaultReadTimeout bounds a read whose context has no deadline.
const defaultReadTimeout = 5 * time.Second

// storedEvent is an event read from the stream, with its position in its conversation's chain
// when it carries one (conversation events do).
type storedEvent struct {
	domain.Event
	pos    uint64
	hasPos bool
}

// conversationTip returns the tip that a conversation event makes, or why it cannot be one.
func (e storedEvent) conversationTip() (Tip, error) {
	switch {
	case !e.hasPos:
		return Tip{}, fmt.Errorf("event at sequence %d has no %s header", e.Seq, PositionHeader)
	case e.Hash == "":
		return Tip{}, fmt.Errorf("event at sequence %d has no hash: nothing can be chained to it", e.Seq)
	}
	return Tip{Seq: e.Seq, Position: e.pos, Hash: e.Hash}, nil
}

// msgGetSubject is the JetStream API subject of reads that the stream's leader answers.
func msgGetSubject(stream string) string {
	return jetstream.DefaultAPIPrefix + "STREAM.MSG.GET." + stream
}

// readLeader gets one message from the stream's leader.
func (s *Store) readLeader(ctx context.Context, req msgGetRequest) (storedEvent, error) {
	return readLeader(ctx, s.js.Conn(), s.getSubject, req)
}

// readLeader gets one event from the leader of the stream whose API subject is getSubject. It
// answers jetstream.ErrMsgNotFound when there is no such message, and "unavailable" for every
// other failure.
func readLeader(ctx context.Context, nc *nats.Conn, getSubject string, req msgGetRequest) (storedEvent, error) {
	m, h, err := getFromLeader(ctx, nc, getSubject, req)
	if err != nil {
		return storedEvent{}, err
	}
	e, err := domain.DecodeEvent(m.Data)
	if err != nil {
		return storedEvent{}, fmt.Errorf("event at sequence %d: %w", m.Sequence, err)
	}
	e.Seq = m.Sequence
	stored := storedEvent{Event: e}
	if h.Get(PositionHeader) != "" {
		if stored.pos, err = positionOf(m.Sequence, h); err != nil {
			return storedEvent{}, err
		}
		stored.hasPos = true
	}
	return stored, nil
}

// getFromLeader gets one message, with its headers, from the leader of the stream whose API
// subject is getSubject. It answers jetstream.ErrMsgNotFound when there is no such message, and
// "unavailable" for every other failure.
func getFromLeader(ctx context.Context, nc *nats.Conn, getSubject string, req msgGetRequest) (*storedMsg, nats.Header, error) {
	what := req.LastFor + req.NextFor
	if what == "" {
		what = fmt.Sprintf("sequence %d", req.Seq)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReadTimeout)
		defer cancel()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	msg, err := nc.RequestWithContext(ctx, getSubject, body)
	if err != nil {
		return nil, nil, wrapLookup(err, what)
	}
	var resp msgGetResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, nil, wrapLookup(fmt.Errorf("decode answer: %w", err), what)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, nil, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return nil, nil, wrapLookup(resp.Error, what)
	case resp.Message == nil:
		return nil, nil, wrapLookup(jetstream.ErrInvalidJetStreamResponse, what)
	}
	m := resp.Message
	h := nats.Header{}
	if len(m.Header) > 0 {
		if h, err = nats.DecodeHeadersMsg(m.Header); err != nil {
			return nil, nil, fmt.Errorf("message at sequence %d: headers: %w", m.Sequence, err)
		}
	}
	return m, h, nil
}
