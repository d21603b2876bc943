package natstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// RunCluster starts n clustered in-process servers with JetStream, each storing under its own
// temporary directory, waits until the JetStream meta leader sees every server online, and shuts
// them down in Cleanup.
// It is how tests see what only a replicated stream does: replicas answering reads, a leader
// deciding expectations, appends in flight.
func RunCluster(tb testing.TB, n int) []*server.Server {
	tb.Helper()
	var servers []*server.Server
	for attempt := 1; servers == nil; attempt++ {
		var err error
		if servers, err = startCluster(tb, n); err != nil {
			if attempt == 3 {
				tb.Fatal(err)
			}
			tb.Logf("nats cluster, attempt %d: %v; trying other ports", attempt, err)
		}
	}
	// The cluster places replicated streams once its meta leader sees every server online.
	deadline := time.Now().Add(30 * time.Second)
	for !clusterReady(servers) {
		if time.Now().After(deadline) {
			tb.Fatal("nats cluster: JetStream never saw every server online")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return servers
}

// startCluster starts n servers routed to one another. The route ports are picked free and then
// released for the servers to bind, so another process may take one meanwhile: then a server
// never becomes ready, and every server of the attempt is shut down.
func startCluster(tb testing.TB, n int) ([]*server.Server, error) {
	ports := make([]int, n)
	routes := make([]*url.URL, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])}
	}
	servers := make([]*server.Server, n)
	shutdown := func() {
		for _, s := range servers {
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
	}
	for i := range servers {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("chatd-test-%d", i),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			Cluster:    server.ClusterOpts{Name: "chatd-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
			NoSigs:     true,
			NoLog:      true,
		})
		if err != nil {
			shutdown()
			return nil, fmt.Errorf("nats server %d: %w", i, err)
		}
		go s.Start()
		servers[i] = s
	}
	for i, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			shutdown()
			return nil, fmt.Errorf("nats server %d not ready", i)
		}
	}
	tb.Cleanup(shutdown)
	return servers, nil
}

func clusterReady(servers []*server.Server) bool {
	for _, s := range servers {
		if !s.JetStreamIsCurrent() {
			return false
		}
	}
	for _, s := range servers {
		if s.JetStreamIsLeader() {
			return len(s.JetStreamClusterPeers()) == len(servers)
		}
	}
	return false
}

// AwaitStream waits until every server answers for the stream: its info, and a direct get
// (which a replica serves once it has caught up and its interest has reached the others). A
// cluster that has just placed a stream answers "no responders" for a moment otherwise.
func AwaitStream(tb testing.TB, servers []*server.Server, name string) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for i, s := range servers {
		js, err := jetstream.New(Connect(tb, s))
		if err != nil {
			tb.Fatal(err)
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var st jetstream.Stream
			if st, err = js.Stream(ctx, name); err == nil {
				_, err = st.GetLastMsgForSubject(ctx, "chat.evt.readiness-probe")
			}
			cancel()
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("stream %s not ready on server %d: %v", name, i, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
