package natstest

import (
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// RunCluster starts n clustered in-process servers with JetStream, each storing under its own
// temporary directory, waits until JetStream has a meta leader, and shuts them down in Cleanup.
// It is how tests see what only a replicated stream does: replicas answering reads, a leader
// deciding expectations, appends in flight.
func RunCluster(tb testing.TB, n int) []*server.Server {
	tb.Helper()
	ports := make([]int, n)
	routes := make([]*url.URL, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])}
	}
	servers := make([]*server.Server, n)
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
			tb.Fatalf("nats server %d: %v", i, err)
		}
		go s.Start()
		tb.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		servers[i] = s
	}
	for i, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			tb.Fatalf("nats server %d not ready", i)
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
