package brokertest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// NATSServerConf is the configuration file of one nats-server that
// WriteNATSConfs wrote.
type NATSServerConf struct {
	Name string // s1, s2, ...: the server_name, which JetStream reports as a stream's leader
	Port int    // its client port on 127.0.0.1
	Path string // the configuration file
}

// URL is the server's client URL.
func (c NATSServerConf) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", c.Port) }

// WriteNATSConfs writes into dir the configuration files of count
// nats-servers with JetStream (stores under dir), on free loopback ports,
// routed to each other as the cluster named cluster when count > 1. The
// tests that need real server processes (a server killed without a word,
// which an in-process server cannot be) start them from these files.
func WriteNATSConfs(t testing.TB, dir, cluster string, count int) []NATSServerConf {
	t.Helper()
	confs := make([]NATSServerConf, count)
	routes := make([]int, count)
	for i := range count {
		confs[i] = NATSServerConf{Name: fmt.Sprintf("s%d", i+1), Port: FreePort(t)}
		routes[i] = FreePort(t)
	}
	for i := range confs {
		c := &confs[i]
		var conf strings.Builder
		fmt.Fprintf(&conf, "server_name: %s\nlisten: 127.0.0.1:%d\n", c.Name, c.Port)
		fmt.Fprintf(&conf, "jetstream {\n  store_dir: %q\n}\n", filepath.Join(dir, c.Name+"-store"))
		if count > 1 {
			fmt.Fprintf(&conf, "cluster {\n  name: %s\n  listen: 127.0.0.1:%d\n  routes: [\n", cluster, routes[i])
			for j := range count {
				if j != i {
					fmt.Fprintf(&conf, "    nats-route://127.0.0.1:%d\n", routes[j])
				}
			}
			conf.WriteString("  ]\n}\n")
		}
		c.Path = filepath.Join(dir, c.Name+".conf")
		if err := os.WriteFile(c.Path, []byte(conf.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return confs
}
