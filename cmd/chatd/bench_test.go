package main

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/internal/bench"
)

// The load tool runs against a real chatd and its numbers agree with each other: every
// acknowledged message is pushed once to each member, none lost or duplicated. (It measures
// speed; this test never asserts any.)
func TestLoadToolSmallRun(t *testing.T) {
	c := startWithDB(t)
	for _, rate := range []float64{0, 400} { // closed loop, then open loop
		res, err := bench.Run(context.Background(), bench.Config{
			URL: c.url, ServiceKey: testServiceKey, RunID: fmt.Sprint("t", rate),
			Users: 10, Directs: 5, Groups: 1, GroupSize: 4, Rate: rate,
			Senders: 4, Messages: 200, BodyBytes: 100, PushWait: 20 * time.Second, SampleRead: 10,
		})
		if err != nil {
			t.Fatal(err)
		}
		// 5 direct conversations of 2 and one group of 4, sent to in turn: 200 messages reach
		// (2*5 + 4) * 200/6 members on average; count exactly from the run itself.
		if res.Sent != 200 || res.Acked != 200 || res.Errors != 0 {
			t.Fatalf("rate %v: sent %d, acknowledged %d, errors %d (%s)", rate, res.Sent, res.Acked, res.Errors, res.FirstError)
		}
		if res.ExpectedPushes == 0 || res.Pushes != res.ExpectedPushes || res.LostPushes != 0 || res.Duplicates != 0 {
			t.Fatalf("rate %v: pushes %d of %d, lost %d, duplicates %d", rate, res.Pushes, res.ExpectedPushes, res.LostPushes, res.Duplicates)
		}
		if res.ChatdCPU <= 0 || res.ChatdCPU > res.Elapsed {
			t.Fatalf("rate %v: chatd CPU per message %v, over a run of %v", rate, res.ChatdCPU, res.Elapsed)
		}
		// The machine did at least what this process (chatd and the tool, here) did; /proc/stat
		// counts in ticks of 10 ms per core, so allow two per core at each end.
		if slack := 40 * time.Millisecond / 200; res.BenchCPU <= 0 || res.MachineCPU+slack < res.BenchCPU {
			t.Fatalf("rate %v: machine CPU per message %v, this process's %v", rate, res.MachineCPU, res.BenchCPU)
		}
		if res.POST.N != 200 || res.Push.N != res.Pushes || res.ReadVisible.N != 20 {
			t.Fatalf("rate %v: samples: POST %d, push %d, read %d", rate, res.POST.N, res.Push.N, res.ReadVisible.N)
		}
		want := 0
		for n := range 200 {
			if n%6 == 5 {
				want += 4
			} else {
				want += 2
			}
		}
		if res.ExpectedPushes != want {
			t.Fatalf("rate %v: expected pushes %d, want %d", rate, res.ExpectedPushes, want)
		}
		// The open loop sends message n at n/rate, never sooner: the last one is due at 497.5 ms.
		if rate > 0 && res.Elapsed < 497*time.Millisecond {
			t.Fatalf("200 messages at %v/s sent in %v", rate, res.Elapsed)
		}
	}
}

// The replay benchmark's numbers are consistent: every generated event, and the setup's, is
// rebuilt, and the generated events are chained like chatd's own (audit verify passes).
func TestLoadToolReplay(t *testing.T) {
	env := dbEnv(t)
	ns := externalNATS(t, env)
	c := start(t, env)
	res, err := bench.Replay(context.Background(), bench.ReplayConfig{
		URL: c.url, ServiceKey: testServiceKey, RunID: "t", NATSURL: ns.ClientURL(),
		Events: 3000, Conversations: 7, BodyBytes: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 14 users and 7 conversations were created over the API before the 3,000 messages.
	if res.Generated != 3000 || res.RebuildEvents != 3000+14+7 || res.EventsPerSec <= 0 {
		t.Fatalf("result %+v", res)
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"audit", "verify"}, func(k string) string { return env[k] }, &out, &errOut); err != nil {
		t.Fatalf("audit verify after the replay benchmark: %v\n%s%s", err, out.String(), errOut.String())
	}
}
