package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// process is chatd running as a child process (this test binary in CHATD_TEST_RUN_MAIN mode).
type process struct {
	*instance
	cmd *exec.Cmd
}

// killWhenAcked kills the process (SIGKILL: no shutdown of any kind) once acked has reached n,
// in the middle of the senders' burst, and waits for it to be gone.
func (p *process) killWhenAcked(t *testing.T, acked *atomic.Int64, n int64) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		if got := acked.Load(); got < n {
			return fmt.Errorf("%d sends acknowledged so far", got)
		}
		return nil
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

func startProcess(t *testing.T, env map[string]string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CHATD_TEST_RUN_MAIN=1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{instance: &instance{t: t, out: out, stdo: &lockedBuffer{}}, cmd: cmd}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	u, err := awaitListening(stdout, p.stdo)
	if err != nil {
		t.Fatalf("chatd process: %v\n%s", err, out)
	}
	p.url = u
	return p
}

// Killing chatd with SIGKILL in the middle of a send burst loses no acknowledged message and
// duplicates none, and unacknowledged sends can be retried with their client_msg_id.
func TestKillDuringSendBurst(t *testing.T) {
	env := dbEnv(t)
	p := startProcess(t, env)
	p.provision("alice", "Alice")
	p.provision("bob", "Bob")
	alice := p.token("alice")
	conv := p.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}}).str("id")
	path := "/api/v1/conversations/" + conv + "/messages"

	const senders, perSender = 8, 200
	var (
		mu     sync.Mutex
		acked  = map[string]uint64{} // client_msg_id -> seq, for 2xx answers
		tried  []string
		okSend atomic.Int64
		wg     sync.WaitGroup
	)
	client := p.instance
	for s := range senders {
		wg.Go(func() {
			for i := range perSender {
				id := fmt.Sprintf("s%d-%d", s, i)
				mu.Lock()
				tried = append(tried, id)
				mu.Unlock()
				r, err := post(client.url+path, alice, fmt.Sprintf(`{"client_msg_id":%q,"body":"burst"}`, id))
				if err != nil {
					return // the process is gone
				}
				if r.status == 201 || r.status == 200 {
					mu.Lock()
					acked[id] = r.num("seq")
					mu.Unlock()
					okSend.Add(1)
				}
			}
		})
	}
	p.killWhenAcked(t, &okSend, 300)
	wg.Wait()
	if len(acked) >= senders*perSender {
		t.Fatalf("the kill came after the burst (%d acknowledged): nothing was tested", len(acked))
	}

	p2 := startProcess(t, env)
	// Every send is retried with its client_msg_id: the acknowledged ones answer 200 with the
	// same seq, the others are created now (or found, if they made it in before the kill).
	var last uint64
	for _, id := range tried {
		r := p2.do("POST", path, alice, fmt.Sprintf(`{"client_msg_id":%q,"body":"burst"}`, id))
		if r.status != 200 && r.status != 201 {
			t.Fatalf("retry %s: %d %s", id, r.status, r.raw)
		}
		if seq, ok := acked[id]; ok && (r.status != 200 || r.num("seq") != seq) {
			t.Fatalf("acknowledged %s at seq %d; after the restart: %d seq %d", id, seq, r.status, r.num("seq"))
		}
		last = max(last, r.num("seq"))
	}
	seen := map[string]int{}
	before := ""
	for {
		q := fmt.Sprintf("?limit=100&min_seq=%d%s", last, before)
		r := p2.must(200, "GET", path+q, alice, nil)
		msgs := r.list("messages")
		for _, m := range msgs {
			seen[m["client_msg_id"].(string)]++
		}
		if r.body["has_more"] != true {
			break
		}
		before = fmt.Sprintf("&before=%d", uint64(msgs[len(msgs)-1]["seq"].(float64)))
	}
	if len(seen) != len(tried) {
		t.Fatalf("%d distinct messages in the read model, %d sent", len(seen), len(tried))
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("message %s appears %d times", id, n)
		}
	}
	t.Logf("%d sends acknowledged before SIGKILL, %d tried; all present exactly once after restart", len(acked), len(tried))
}

// Killing the node whose projector leads, in the middle of a send burst through another node,
// costs a client connected to that other node nothing: its connection stays open, and it gets
// every acknowledged message once, in order. The node that takes over pushes the last events
// again (for any the dead leader committed without pushing), and the connection drops those it
// has sent.
func TestKillTheProjectorLeader(t *testing.T) {
	env := dbEnv(t)
	externalNATS(t, env)
	leader := startProcess(t, env)
	leader.provision("alice", "Alice")
	leader.provision("bob", "Bob")
	alice, bob := leader.token("alice"), leader.token("bob")
	d := leader.must(201, "POST", "/api/v1/conversations", alice, map[string]any{"kind": "direct", "members": []string{"bob"}})
	leader.must(200, "GET", "/api/v1/me?min_seq="+d.header.Get("X-Chat-Seq"), bob, nil) // its projector leads

	survivor := start(t, env)
	ws := survivor.mustWS(bob, "")
	ws.nextOf("ready")
	path := "/api/v1/conversations/" + d.str("id") + "/messages"

	const senders, perSender = 4, 150
	var (
		mu     sync.Mutex
		acked  = map[uint64]bool{}
		okSend atomic.Int64
		wg     sync.WaitGroup
	)
	for s := range senders {
		wg.Go(func() {
			for i := range perSender {
				r := survivor.do("POST", path, alice, fmt.Sprintf(`{"client_msg_id":"s%d-%d","body":"burst"}`, s, i))
				if r.status != 201 {
					t.Errorf("send: %d %s", r.status, r.raw)
					return
				}
				mu.Lock()
				acked[r.num("seq")] = true
				mu.Unlock()
				okSend.Add(1)
			}
		})
	}
	leader.killWhenAcked(t, &okSend, senders*perSender/4)
	wg.Wait()
	if len(acked) != senders*perSender {
		t.Fatalf("%d sends acknowledged, want %d", len(acked), senders*perSender)
	}

	var last uint64
	got := 0
	for got < len(acked) {
		f := ws.next() // fails the test if the connection closes
		if f.Seq == 0 {
			continue
		}
		if f.Seq <= last || !acked[f.Seq] || f.Type != "message.created" {
			t.Fatalf("frame %s at %d after %d: want each acknowledged message once, in order", f.Type, f.Seq, last)
		}
		last = f.Seq
		got++
	}
}
