// Package floor measures what the fixed stack costs per chat message with no chat logic at all:
// one REST send, appended to JetStream with its acknowledgement, applied to PostgreSQL in
// batches, published to each of the two members' push subjects and written to their WebSockets.
// It is the least CPU per message that any design built the way the issues ask (a REST POST per
// message, a JetStream append per event, per-user NATS push subjects, gorilla/websocket) pays on
// a machine, and so the ceiling on messages per second there. See docs/benchmarks.md, "The floor
// of the stack".
//
//	go test -run '^$' -bench Floor -benchtime 60000x ./internal/floor
package floor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/chatd-dev/chatd/internal/bench"
	"github.com/chatd-dev/chatd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	users   = 1000 // each with one WebSocket; user 2i and 2i+1 share conversation i
	senders = 32   // closed loop, as chatbench -senders 32
)

// BenchmarkFloor sends b.N messages and waits for both pushes of each. It reports messages per
// second and the machine's busy CPU per message (this process and PostgreSQL: every core, from
// /proc/stat), and how much of that was outside this process (PostgreSQL, and the kernel's
// work for other processes). "lookup" adds what chatd's idempotency needs on top: a direct get of the
// message's subject before the append.
func BenchmarkFloor(b *testing.B) {
	for _, lookup := range []bool{false, true} {
		name := "bare"
		if lookup {
			name = "lookup"
		}
		b.Run(name, func(b *testing.B) { benchmarkFloor(b, lookup) })
	}
}

func benchmarkFloor(b *testing.B, lookup bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js, nc := startNATS(b)
	pool := startPostgres(b, ctx)

	// Push: one subscription per user feeding that user's WebSocket writer.
	clients, received := dialWebSockets(b, listenWebSockets(b, nc))
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()

	// Projector: events in stream order, applied in batches, then pushed to both members.
	cons, err := js.OrderedConsumer(ctx, "E", jetstream.OrderedConsumerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	go project(ctx, b, cons, pool, nc)

	// Command side: REST in, JetStream append, REST out.
	addr := serveREST(b, js, lookup)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: senders}}

	b.ResetTimer()
	cpu0, self0, start := machineCPU(b), bench.ProcessCPU(), time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				body := fmt.Sprintf(`{"client_msg_id":"s%d-%d","body":%q}`, s, i, strings.Repeat("x", 100))
				resp, err := client.Post(fmt.Sprintf("http://%s/conversations/c%d/messages", addr, i%(users/2)), "application/json", strings.NewReader(body))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					b.Errorf("POST: %s", resp.Status)
					return
				}
			}
		})
	}
	wg.Wait()
	for received.Load() < int64(2*b.N) {
		if time.Since(start) > 10*time.Minute {
			b.Fatalf("%d of %d pushes arrived", received.Load(), 2*b.N)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed, cpu, self := time.Since(start), machineCPU(b)-cpu0, bench.ProcessCPU()-self0
	b.StopTimer()
	if got := received.Load(); got != int64(2*b.N) {
		b.Fatalf("%d pushes for %d messages", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(float64((cpu-self).Microseconds())/float64(b.N), "others-cpu-µs/msg")
}

func startNATS(b *testing.B) (jetstream.JetStream, *nats.Conn) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: b.TempDir(), SyncInterval: time.Second, NoSigs: true, NoLog: true})
	if err != nil {
		b.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats: not ready")
	}
	b.Cleanup(s.Shutdown)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "E", Subjects: []string{"e.>"}, AllowDirect: true}); err != nil {
		b.Fatal(err)
	}
	return js, nc
}

func startPostgres(b *testing.B, ctx context.Context) *pgxpool.Pool {
	pool, err := pgxpool.New(ctx, pgtest.NewDB(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `
		CREATE TABLE floor_messages (id text COLLATE "C" PRIMARY KEY, conversation text COLLATE "C" NOT NULL, seq bigint NOT NULL, body text NOT NULL, UNIQUE (conversation, seq));
		CREATE TABLE floor_checkpoint (seq bigint NOT NULL);
		INSERT INTO floor_checkpoint VALUES (0);`); err != nil {
		b.Fatal(err)
	}
	return pool
}

type event struct {
	ID           string `json:"id"`
	Conversation string `json:"conversation"`
	ClientMsgID  string `json:"client_msg_id"`
	Body         string `json:"body"`
}

func serveREST(b *testing.B, js jetstream.JetStream, lookup bool) string {
	e := echo.New()
	e.POST("/conversations/:id/messages", func(c echo.Context) error {
		var req struct {
			ClientMsgID string `json:"client_msg_id"`
			Body        string `json:"body"`
		}
		if err := c.Bind(&req); err != nil {
			return err
		}
		conv := c.Param("id")
		subject := "e." + conv + ".msg." + req.ClientMsgID
		if lookup {
			_, err := js.Conn().RequestWithContext(c.Request().Context(), "$JS.API.DIRECT.GET.E."+subject, nil)
			if err != nil {
				return err
			}
		}
		data, err := json.Marshal(event{ID: conv + "." + req.ClientMsgID, Conversation: conv, ClientMsgID: req.ClientMsgID, Body: req.Body})
		if err != nil {
			return err
		}
		ack, err := js.Publish(c.Request().Context(), subject, data, jetstream.WithMsgID(subject))
		if err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, map[string]any{"id": conv + "." + req.ClientMsgID, "seq": ack.Sequence})
	})
	return serve(b, e)
}

// project applies the stream to PostgreSQL in batches of what has arrived (at most 500), one
// transaction each with the checkpoint, and pushes every event to both members after commit.
func project(ctx context.Context, b *testing.B, cons jetstream.Consumer, pool *pgxpool.Pool, nc *nats.Conn) {
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		b.Error(err)
		return
	}
	defer it.Stop()
	msgs := make(chan jetstream.Msg, 1000)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			if err != nil {
				return
			}
			msgs <- m
		}
	}()
	go func() { <-ctx.Done(); it.Stop() }()
	for m := range msgs {
		batch := []jetstream.Msg{m}
	fill:
		for len(batch) < 500 {
			select {
			case m, ok := <-msgs:
				if !ok {
					break fill
				}
				batch = append(batch, m)
			default:
				break fill
			}
		}
		ids, convs, bodies := make([]string, len(batch)), make([]string, len(batch)), make([]string, len(batch))
		seqs := make([]int64, len(batch))
		for i, m := range batch {
			var e event
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				b.Error(err)
				return
			}
			md, err := m.Metadata()
			if err != nil {
				b.Error(err)
				return
			}
			ids[i], convs[i], bodies[i], seqs[i] = e.ID, e.Conversation, e.Body, int64(md.Sequence.Stream)
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var cp int64
			if err := tx.QueryRow(ctx, `SELECT seq FROM floor_checkpoint FOR UPDATE`).Scan(&cp); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO floor_messages SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) ON CONFLICT (id) DO NOTHING`, ids, convs, seqs, bodies); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE floor_checkpoint SET seq = $1`, seqs[len(seqs)-1])
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				b.Error(err)
			}
			return
		}
		for i, m := range batch {
			n, _ := strconv.Atoi(strings.TrimPrefix(convs[i], "c"))
			for _, u := range []int{2 * n, 2*n + 1} {
				if err := nc.Publish("p."+strconv.Itoa(u), m.Data()); err != nil {
					b.Error(err)
					return
				}
			}
		}
	}
}

// listenWebSockets accepts /ws?user=N: a writer per connection, fed by that user's push
// subscription. It returns the address.
func listenWebSockets(b *testing.B, nc *nats.Conn) string {
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		frames := make(chan []byte, 1024)
		sub, err := nc.Subscribe("p."+r.URL.Query().Get("user"), func(m *nats.Msg) { frames <- m.Data })
		if err != nil {
			c.Close()
			return
		}
		go func() {
			defer sub.Unsubscribe() //nolint:errcheck // the connection is closing
			defer c.Close()
			for f := range frames {
				if err := c.WriteMessage(websocket.TextMessage, f); err != nil {
					return
				}
			}
		}()
	})
	return serve(b, mux)
}

// serve serves h on a loopback port until the benchmark ends and returns its address.
func serve(b *testing.B, h http.Handler) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l) //nolint:errcheck // closed below
	b.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// dialWebSockets connects every user and counts the frames they receive.
func dialWebSockets(b *testing.B, addr string) ([]*websocket.Conn, *atomic.Int64) {
	var received atomic.Int64
	clients := make([]*websocket.Conn, users)
	for u := range users {
		c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/ws?user=%d", addr, u), nil)
		if err != nil {
			b.Fatal(err)
		}
		clients[u] = c
		go func() {
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				var e event
				if err := json.Unmarshal(data, &e); err != nil {
					b.Error(err)
					return
				}
				received.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the subscriptions reach the server
	return clients, &received
}

// machineCPU is bench.MachineCPU: this process and PostgreSQL together.
func machineCPU(b *testing.B) time.Duration {
	d, err := bench.MachineCPU()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
