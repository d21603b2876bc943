package streams

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// ExportFilter selects events for an audit export. Zero fields select everything.
type ExportFilter struct {
	ConversationID string
	Actor          string
	Type           string
	FromSeq, ToSeq uint64    // inclusive stream sequences
	Since, Until   time.Time // inclusive stream times
}

// Exported is one line of an audit export: the event exactly as stored, with where and when
// the stream stored it, and a conversation event's position in its chain (its Chat-Position
// header, see Layout).
type Exported struct {
	Seq      uint64          `json:"seq"`
	Subject  string          `json:"subject"`
	Position *uint64         `json:"position,omitempty"`
	Stored   time.Time       `json:"stored"`
	Event    json.RawMessage `json:"event"`
}

// Export writes the events that f selects to w as JSON Lines, in stream order (see scan).
// It stops at the stream's last sequence when it started, so a busy stream cannot keep it
// going forever. It returns how many events it wrote.
func Export(ctx context.Context, stream jetstream.Stream, f ExportFilter, w io.Writer) (int, error) {
	if f.ConversationID != "" && !domain.ValidConversationID(f.ConversationID) {
		return 0, domain.Errorf(domain.CodeInvalid, "conversation_id is not a conversation id")
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, domain.Unavailable("the event stream is unavailable", fmt.Errorf("stream info: %w", err))
	}
	last := info.State.LastSeq
	if f.ToSeq > 0 {
		last = min(last, f.ToSeq)
	}
	if last == 0 || (f.FromSeq > 0 && f.FromSeq > last) {
		return 0, nil
	}
	cfg := jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: SubjectRoot}
	if f.ConversationID != "" {
		cfg.FilterSubject = ConversationSubjects(f.ConversationID)
	}
	switch {
	case f.FromSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.FromSeq
	case !f.Since.IsZero():
		t := f.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	bw := bufio.NewWriter(w)
	written := 0
	err = scan(ctx, stream, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) (bool, error) {
		seq := meta.Sequence.Stream
		if seq > last || (!f.Until.IsZero() && meta.Timestamp.After(f.Until)) {
			return false, nil
		}
		if !f.Since.IsZero() && meta.Timestamp.Before(f.Since) {
			return true, nil // from_seq started the consumer; since still applies
		}
		if f.Actor != "" || f.Type != "" {
			var env struct{ Type, Actor string }
			if json.Unmarshal(m.Data(), &env) != nil || (f.Actor != "" && env.Actor != f.Actor) || (f.Type != "" && env.Type != f.Type) {
				return true, nil
			}
		}
		out := Exported{Seq: seq, Subject: m.Subject(), Stored: meta.Timestamp.UTC(), Event: json.RawMessage(m.Data())}
		if pos, err := positionOf(seq, m.Headers()); err == nil {
			out.Position = &pos
		}
		line, err := json.Marshal(out)
		if err != nil {
			// Only an event that is not valid JSON gets here; export it as a string so that
			// auditors still see exactly what is stored.
			out.Event, _ = json.Marshal(string(m.Data()))
			line, _ = json.Marshal(out)
		}
		if _, err := bw.Write(append(line, '\n')); err != nil {
			return false, err
		}
		written++
		return true, nil
	})
	if err != nil {
		return written, err
	}
	return written, bw.Flush()
}

// scan reads the events cfg selects, in stream order, through an ephemeral consumer in batches
// of 500, and calls fn with each until fn returns false or nothing is pending. Memory stays
// constant whatever the size of the stream.
func scan(ctx context.Context, stream jetstream.Stream, cfg jetstream.ConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata) (bool, error)) error {
	cfg.AckPolicy, cfg.InactiveThreshold, cfg.MemoryStorage = jetstream.AckNonePolicy, time.Minute, true
	cons, err := stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return domain.Unavailable("the event stream is unavailable", fmt.Errorf("create consumer: %w", err))
	}
	defer func() { _ = stream.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name) }()
	pending := cons.CachedInfo().NumPending
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return domain.Unavailable("the event stream is unavailable", fmt.Errorf("fetch: %w", err))
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("event metadata: %w", err)
			}
			pending = meta.NumPending
			if more, err := fn(m, meta); err != nil || !more {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return domain.Unavailable("the event stream is unavailable", fmt.Errorf("fetch: %w", err))
		}
		if got == 0 {
			// Events are pending but none came: never pass a truncated read off as complete.
			return domain.Unavailable("the event stream is unavailable", errors.New("fetched nothing while events were pending"))
		}
	}
	return nil
}
