package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of the test's own: masters with one replica
// each, on free loopback ports, every node writing an append-only file
// synced on every write. It is stopped at cleanup.
type Cluster struct {
	t     testing.TB
	Nodes []string // host:port of every node, masters first as created
	URL   string   // redis+cluster://masters, as serve --redis takes it
	cmds  []*exec.Cmd
}

// StartCluster starts a cluster of masters masters, each with one replica,
// and waits until every node reports cluster_state:ok. It skips the test
// when redis-server or redis-cli is not installed.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	c := &Cluster{t: t}
	t.Cleanup(c.stop)
	dir := t.TempDir()
	for i := range 2 * masters {
		port, bus := freePort(t), freePort(t)
		d := filepath.Join(dir, strconv.Itoa(i))
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(bus),
			"--bind", "127.0.0.1", "--dir", t.TempDir(), "--cluster-enabled", "yes",
			"--cluster-config-file", d+"-nodes.conf", "--cluster-node-timeout", "2000",
			"--save", "", "--appendonly", "yes", "--appendfsync", "always")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		c.cmds = append(c.cmds, cmd)
		c.Nodes = append(c.Nodes, "127.0.0.1:"+strconv.Itoa(port))
	}
	for _, n := range c.Nodes {
		c.waitPing(n)
	}
	args := append([]string{"--cluster", "create"}, c.Nodes...)
	out, err := exec.Command("redis-cli", append(args, "--cluster-replicas", "1", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.URL = "redis+cluster://" + strings.Join(c.Nodes[:masters], ",")
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range c.Nodes {
		for !strings.Contains(c.Do(n, "CLUSTER", "INFO"), "cluster_state:ok") {
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok: %s", n, c.Do(n, "CLUSTER", "INFO"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c
}

// Do runs one command on node and returns its reply as text ("" on error).
func (c *Cluster) Do(node string, args ...any) string {
	cl := redis.NewClient(&redis.Options{Addr: node, MaxRetries: -1})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, err := cl.Do(ctx, args...).Result()
	if err != nil {
		return ""
	}
	return fmt.Sprint(v)
}

// Role is node's replication role: "master" or "slave" ("" when it does
// not answer).
func (c *Cluster) Role(node string) string {
	for _, line := range strings.Split(c.Do(node, "INFO", "replication"), "\n") {
		if r, ok := strings.CutPrefix(strings.TrimSpace(line), "role:"); ok {
			return r
		}
	}
	return ""
}

func (c *Cluster) waitPing(node string) {
	deadline := time.Now().Add(10 * time.Second)
	for c.Do(node, "PING") != "PONG" {
		if time.Now().After(deadline) {
			c.t.Fatalf("redis-server %s not answering", node)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Cluster) stop() {
	for _, cmd := range c.cmds {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
