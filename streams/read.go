package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stored is a message read from the stream by ReadRange. Subject is empty when the read that
// found it did not return subjects (see ReadRange).
type Stored struct {
	Seq     uint64
	Subject string
	Data    []byte
}

// ReadStall is how long ReadRange waits for the next answer before it gives up.
const ReadStall = 5 * time.Second

// readMaxBytes, when set, caps each answer's size (tests: the server's own cap is its max pending,
// 64 MB by default).
var readMaxBytes int

// ReadRange reads every message of the stream from sequence from to sequence to (both included)
// in order, span by span (batch sequences each), and passes each span's messages to fn with the
// last sequence of the span, which may hold none. It is how a rebuild reads the stream.
//
// Each span is one batched direct get without headers (JetStream's cheapest read: the server
// builds no headers and the client parses none), and two are in flight while fn works. Such a
// read does not say which sequence each message has: an answer of n messages, the last of them
// (its end-of-batch marker says) at the span's start + n - 1, holds those sequences in order. When
// that is short of the span's end (the server cuts an answer at its max pending size, or the
// replica that answered ends there), the rest is asked for next. Any other span (deleted
// messages in it, or nothing: a replica behind the leader, since any replica answers direct
// gets) is read again from the leader, message by message, with subjects.
func ReadRange(ctx context.Context, nc *nats.Conn, stream string, from, to uint64, batch int, fn func(msgs []Stored, through uint64) error) error {
	if from > to {
		return nil
	}
	inbox := nats.NewInbox()
	answers := make(chan *nats.Msg, 2*batch+8)
	sub, err := nc.ChanSubscribe(inbox+".*", answers)
	if err != nil {
		return fmt.Errorf("subscribe for direct gets: %w", err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // only ends the subscription

	type span struct {
		from, to uint64
		reply    string
		msgs     []Stored
		last     uint64 // the last sequence the answer holds, from its end-of-batch marker
		done     bool
	}
	getSubject := jetstream.DefaultAPIPrefix + "DIRECT.GET." + stream
	var spans []*span // in flight, in order
	next, id := from, 0
	get := func(from, to uint64) (*span, error) {
		s := &span{from: from, to: to, reply: inbox + "." + strconv.Itoa(id)}
		id++
		body := fmt.Appendf(nil, `{"seq":%d,"batch":%d,"no_hdr":true`, s.from, s.to-s.from+1)
		if readMaxBytes > 0 {
			body = fmt.Appendf(body, `,"max_bytes":%d`, readMaxBytes)
		}
		body = append(body, '}')
		if err := nc.PublishRequest(getSubject, s.reply, body); err != nil {
			return nil, fmt.Errorf("direct get %d..%d: %w", s.from, s.to, err)
		}
		return s, nil
	}
	request := func() error { // the next span
		if next > to {
			return nil
		}
		s, err := get(next, min(next+uint64(batch)-1, to))
		if err != nil {
			return err
		}
		spans = append(spans, s)
		next = s.to + 1
		return nil
	}
	for range 2 {
		if err := request(); err != nil {
			return err
		}
	}
	stall := time.NewTimer(ReadStall)
	defer stall.Stop()
	for len(spans) > 0 {
		select {
		case m := <-answers:
			stall.Reset(ReadStall)
			var s *span
			for _, c := range spans {
				if c.reply == m.Subject {
					s = c
				}
			}
			if s == nil {
				continue // an answer to a request of an earlier read
			}
			switch status := m.Header.Get("Status"); status {
			case "":
				s.msgs = append(s.msgs, Stored{Data: m.Data})
			case "204": // end of batch
				s.last, _ = strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
				s.done = true
			case "404": // nothing at or after s.from on the replica that answered
				s.done = true
			default:
				return fmt.Errorf("direct get %d..%d: status %s %s", s.from, s.to, status, m.Header.Get("Description"))
			}
		case <-stall.C:
			return fmt.Errorf("read of %d..%d stalled: nothing came for %v", spans[0].from, spans[0].to, ReadStall)
		case <-ctx.Done():
			return ctx.Err()
		}
		for len(spans) > 0 && spans[0].done {
			s := spans[0]
			spans = spans[1:]
			n, through := uint64(len(s.msgs)), s.to
			switch {
			case n > 0 && s.last == s.from+n-1: // sequences s.from to s.last, all there
				for i := range s.msgs {
					s.msgs[i].Seq = s.from + uint64(i)
				}
				if s.last < s.to {
					// The server stopped at its size limit (or the replica that answered ends
					// here): the rest of the span is asked for, and comes before later spans.
					rest, err := get(s.last+1, s.to)
					if err != nil {
						return err
					}
					spans = append([]*span{rest}, spans...)
					through = s.last
				}
			default:
				if s.msgs, err = readFromLeader(ctx, nc, stream, s.from, s.to); err != nil {
					return err
				}
			}
			if through == s.to {
				if err := request(); err != nil {
					return err
				}
			}
			stall.Stop()
			if err := fn(s.msgs, through); err != nil {
				return err
			}
			stall.Reset(ReadStall) // fn may take its time: that is no stall
		}
	}
	return nil
}

// readFromLeader reads the messages from..to from the stream's leader, one request each. Each
// request asks for the next message at or after a sequence, so deleted ones cost nothing.
func readFromLeader(ctx context.Context, nc *nats.Conn, stream string, from, to uint64) ([]Stored, error) {
	var msgs []Stored
	for seq := from; seq <= to; {
		m, _, err := getFromLeader(ctx, nc, msgGetSubject(stream), msgGetRequest{Seq: seq, NextFor: ">"})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		if m.Sequence > to {
			break
		}
		msgs = append(msgs, Stored{Seq: m.Sequence, Subject: m.Subject, Data: m.Data})
		seq = m.Sequence + 1
	}
	return msgs, nil
}
