package streams

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/chatd-dev/chatd/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// Problem is one thing Verify found wrong with the stored events.
type Problem struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject,omitempty"`
	Chain   string `json:"chain,omitempty"` // "conversation <id>" or "user <id>"
	EventID string `json:"event_id,omitempty"`
	Problem string `json:"problem"`
}

func (p Problem) String() string {
	s := fmt.Sprintf("seq %d", p.Seq)
	if p.Chain != "" {
		s += " (" + p.Chain
		if p.EventID != "" {
			s += ", event " + p.EventID
		}
		s += ")"
	}
	return s + ": " + p.Problem
}

// VerifyResult summarises a Verify run.
type VerifyResult struct {
	Events   int    `json:"events"`
	Chains   int    `json:"chains"`
	Problems int    `json:"problems"`
	LastSeq  uint64 `json:"last_seq"`
}

type chainTip struct {
	seq  uint64
	hash string
	pos  uint64 // position in a conversation's chain (see Layout)
}

// Verify checks the hash chains of every conversation and user (or, when conversationID is set,
// of that conversation only) up to the stream's last sequence when it started, and calls report
// with each problem, first broken link first. For every event it checks:
//
//   - its hash is the hash of its canonical form (domain.EventHash): the event was not altered;
//   - its prev is the hash of the previous event of its chain as stored: no event of the chain
//     was removed, inserted or reordered before it;
//   - its body, unless erased, matches its body_sha256;
//   - its conversation matches its subject;
//   - a conversation event's position (Chat-Position) follows the previous event's, and its
//     subject is in that position's epoch (see Layout), unless a link is broken already.
//
// Over the whole stream it also reports sequences that are missing (deleted or purged). A chain's
// last events removed leave no later link to break: only that check sees them.
func Verify(ctx context.Context, stream jetstream.Stream, conversationID string, report func(Problem) error) (VerifyResult, error) {
	var res VerifyResult
	cfg := jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: SubjectRoot}
	if conversationID != "" {
		if !domain.ValidConversationID(conversationID) {
			return res, domain.Errorf(domain.CodeInvalid, "%q is not a conversation id", conversationID)
		}
		cfg.FilterSubject = ConversationSubjects(conversationID)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return res, domain.Unavailable("the event stream is unavailable", fmt.Errorf("stream info: %w", err))
	}
	layout, err := layoutOf(info.Config)
	if err != nil {
		return res, err
	}
	res.LastSeq = info.State.LastSeq
	if res.LastSeq == 0 {
		return res, nil
	}
	problem := func(p Problem) error {
		res.Problems++
		return report(p)
	}
	tips := map[string]chainTip{}
	var prevSeq uint64 // the previous sequence seen, for gaps (whole stream only)
	err = scan(ctx, stream, cfg, func(m jetstream.Msg, meta *jetstream.MsgMetadata) (bool, error) {
		seq := meta.Sequence.Stream
		if seq > res.LastSeq {
			return false, nil
		}
		res.Events++
		if conversationID == "" && seq != prevSeq+1 {
			if err := problem(Problem{Seq: seq, Problem: fmt.Sprintf("sequences %d to %d are missing from the stream (deleted or purged)", prevSeq+1, seq-1)}); err != nil {
				return false, err
			}
		}
		prevSeq = seq
		p := checkEvent(seq, m.Subject(), m.Headers().Get(PositionHeader), m.Data(), tips, layout)
		for _, msg := range p.problems {
			if err := problem(Problem{Seq: seq, Subject: m.Subject(), Chain: p.chain, EventID: p.eventID, Problem: msg}); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err == nil && conversationID == "" && prevSeq < res.LastSeq {
		err = problem(Problem{Seq: res.LastSeq, Problem: fmt.Sprintf("sequences %d to %d are missing from the stream (deleted or purged)", prevSeq+1, res.LastSeq)})
	}
	res.Chains = len(tips)
	return res, err
}

type checked struct {
	chain, eventID string
	problems       []string
}

// checkEvent checks one stored event against its chain's tip and moves the tip to it.
func checkEvent(seq uint64, subject, position string, raw []byte, tips map[string]chainTip, layout Layout) checked {
	var c checked
	chain, conv := chainOf(subject)
	if chain == "" {
		c.problems = append(c.problems, "the subject belongs to no chain")
		return c
	}
	c.chain = chain
	var e struct {
		ID             string `json:"id"`
		Type           string `json:"type"`
		ConversationID string `json:"conversation_id"`
		Prev           string `json:"prev"`
		Hash           string `json:"hash"`
		Data           struct {
			Body       *string `json:"body"`
			BodySHA256 string  `json:"body_sha256"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		c.problems = append(c.problems, "not a valid event: "+err.Error())
		return c
	}
	c.eventID = e.ID
	h, err := domain.EventHash(raw)
	switch {
	case err != nil:
		c.problems = append(c.problems, err.Error())
	case e.Hash == "":
		c.problems = append(c.problems, "the event carries no hash")
	case h != e.Hash:
		c.problems = append(c.problems, fmt.Sprintf("the event was altered: its content hashes to %s, but it says %s", h, e.Hash))
	}
	tip, seen := tips[chain]
	linked := false
	switch {
	case !seen && e.Prev != "":
		c.problems = append(c.problems, fmt.Sprintf("broken link: it is the first event of its chain here, but links to %s (an earlier event was removed)", e.Prev))
	case seen && e.Prev != tip.hash:
		c.problems = append(c.problems, fmt.Sprintf("broken link: prev is %s, but the chain's previous event (seq %d) has hash %s (an event between them was removed, or one was inserted)", orNone(e.Prev), tip.seq, tip.hash))
	default:
		linked = true
	}
	var pos uint64
	if conv != "" {
		want := uint64(0)
		if seen {
			want = tip.pos + 1
		}
		var err error
		pos, err = strconv.ParseUint(position, 10, 64)
		epoch, _, _ := strings.Cut(strings.TrimPrefix(subject, "chat.evt.conv."+conv+"."), ".")
		switch {
		case err != nil:
			c.problems = append(c.problems, fmt.Sprintf("no valid %s header (%q)", PositionHeader, position))
			pos = want
		case linked && !seen && pos != 0:
			c.problems = append(c.problems, fmt.Sprintf("it is the first event of its chain, but at position %d", pos))
		case linked && pos != want:
			c.problems = append(c.problems, fmt.Sprintf("it is at position %d, but follows the event at position %d (seq %d)", pos, tip.pos, tip.seq))
		case epoch != strconv.FormatUint(pos/layout.EpochSize, 10):
			c.problems = append(c.problems, fmt.Sprintf("it is stored in epoch %s, but position %d belongs in epoch %d", epoch, pos, pos/layout.EpochSize))
		}
	}
	if e.Data.Body != nil && (e.Type == domain.TypeMessageCreated || e.Type == domain.TypeMessageEdited) && domain.BodyHash(*e.Data.Body) != e.Data.BodySHA256 {
		c.problems = append(c.problems, "the message body does not match its body_sha256")
	}
	if conv != "" && e.ConversationID != conv {
		c.problems = append(c.problems, fmt.Sprintf("the event says conversation %q but is stored under conversation %s", e.ConversationID, conv))
	}
	// Later links are judged against what is stored, so one altered event is reported once.
	tips[chain] = chainTip{seq: seq, hash: e.Hash, pos: pos}
	return c
}

// chainOf names the chain of a subject, and its conversation if it is one's.
func chainOf(subject string) (chain, conv string) {
	if rest, ok := strings.CutPrefix(subject, "chat.evt.conv."); ok {
		conv, _, _ = strings.Cut(rest, ".")
		return "conversation " + conv, conv
	}
	if user, ok := strings.CutPrefix(subject, "chat.evt.user."); ok && user != "" {
		return "user " + user, ""
	}
	return "", ""
}

func orNone(s string) string {
	if s == "" {
		return "empty"
	}
	return s
}
