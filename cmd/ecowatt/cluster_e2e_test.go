package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/redistest"
)

// startCluster starts n replicas in replica mode (--cluster) on one Redis
// prefix, named r0, r1, ..., each with its own broker and HTTP port.
func startCluster(t *testing.T, n int, extra ...string) []*testServer {
	t.Helper()
	args := append([]string{"--cluster", "--replica-id", "r0", "--presence-sweep", "1s"}, extra...)
	first := startServer(t, args...)
	out := []*testServer{first}
	for i := 1; i < n; i++ {
		out = append(out, startReplica(t, first, fmt.Sprintf("r%d", i)))
	}
	return out
}

// clusterRedis is s.redis for any test Redis URL, Cluster included.
func clusterRedis(t *testing.T, s *testServer) (redis.UniversalClient, string) {
	t.Helper()
	prefix := ""
	for i, a := range s.args {
		if a == "--redis-prefix" && i+1 < len(s.args) {
			prefix = s.args[i+1]
		}
	}
	c, err := redistest.NewClient(os.Getenv(redistest.EnvURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, prefix
}

// TestClusterFlagsBad: --cluster without a shared Redis, or with an
// external broker, is a usage error before anything is created.
func TestClusterFlagsBad(t *testing.T) {
	for name, args := range map[string][]string{
		"no redis":   {"serve", "--cluster"},
		"broker url": {"serve", "--cluster", "--redis", "redis://127.0.0.1:1", "--broker-url", "tcp://127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			var out syncBuffer
			err := run(context.Background(), append(args, "--data-dir", dir), func(string) string { return "" }, &out, &out)
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), "--cluster") {
				t.Fatalf("%v, want a usage error naming --cluster\n%s", err, out.String())
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("data dir created: %v", err)
			}
		})
	}
}

// sseEvents collects the events of s's SSE stream (GET /api/v1/events).
type sseEvents struct {
	mu  sync.Mutex // guards evs
	evs []backend.Event
}

func streamEvents(t *testing.T, s *testServer) *sseEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.HTTP+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		cancel()
		t.Fatalf("event stream: %v %v", err, resp)
	}
	c := &sseEvents{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev backend.Event
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Errorf("sse event %q: %v", data, err)
				return
			}
			c.mu.Lock()
			c.evs = append(c.evs, ev)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	return c
}

// counts returns how often each audit event of dev was streamed.
func (c *sseEvents) counts(dev string) map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for _, ev := range c.evs {
		if ev.Device == dev && ev.ID != "" {
			m[ev.ID]++
		}
	}
	return m
}

// auditIDs returns the IDs of dev's audit events.
func auditIDs(t *testing.T, s *testServer, dev string) []string {
	t.Helper()
	var page struct {
		Events []backend.Event `json:"events"`
	}
	if code := s.api(t, "GET", "/api/v1/devices/"+dev+"/events?n=500", nil, &page); code != 200 {
		t.Fatalf("events of %s: %d", dev, code)
	}
	var ids []string
	for _, ev := range page.Events {
		ids = append(ids, ev.ID)
	}
	return ids
}

// TestReplicaMode: three replicas in replica mode, one device on each. A
// config change made through r0's API reaches the device on r2; commands
// submitted on r1 run on the devices of all three (the delivery lease
// holder sends them all, so most are routed); an MQTT operator command
// published to r1's broker runs on the device held by r0 and an operator
// subscribed on r2's broker sees its result; r0's SSE stream carries every
// audit event of the devices on r1 and r2 exactly once.
func TestReplicaMode(t *testing.T) {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test.sh installs it)", tool)
		}
	}
	rs := startCluster(t, 3, append(commandArgs, "--operator", "ops:s3cret-pass")...)
	sse := streamEvents(t, rs[0])
	keys := rs[0].provision(t, "rm", 3)
	held := map[string]int{"rm-0001": 2, "rm-0002": 0, "rm-0003": 1} // device -> replica it connects to
	for dev, r := range held {
		startFleet(t, rs[r], map[string][]byte{dev: keys[dev]}, "", newFeatureSet().setup)
	}
	waitOnline(t, rs[0], 3)
	rdb, prefix := clusterRedis(t, rs[0])
	for dev, r := range held {
		if got := rdb.HGet(context.Background(), prefix+"{dev:"+dev+"}:dev", "replica").Val(); got != fmt.Sprintf("r%d", r) {
			t.Fatalf("%s held by %q, want r%d", dev, got, r)
		}
	}

	t.Run("config via r0 reaches device on r2", func(t *testing.T) {
		var res configStateDoc
		if code := rs[0].api(t, "PUT", "/api/v1/devices/rm-0001/config", json.RawMessage(`{"sampling_interval":2,"upload_interval":4}`), &res); code != 200 {
			t.Fatalf("PUT config: %d %+v", code, res)
		}
		waitInSync(t, rs[0], "rm-0001", res.Desired.Version)
	})

	t.Run("commands via r1 run on the devices of every replica", func(t *testing.T) {
		// One replica holds the delivery lease and sends every command:
		// at least two of the three are routed to another replica.
		for _, dev := range []string{"rm-0002", "rm-0001", "rm-0003"} {
			c := rs[1].submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 42})
			rs[1].waitCommand(t, c.ID, "succeeded", 30*time.Second)
		}
	})

	t.Run("mqtt operator on r1 and r2", func(t *testing.T) {
		fast, _ := bcrypt.GenerateFromPassword([]byte("s3cret-pass"), bcrypt.MinCost)
		if err := rdb.HSet(context.Background(), prefix+"op:ops", "hash", fast).Err(); err != nil {
			t.Fatal(err)
		}
		auth := func(s *testServer) []string {
			host, port, _ := strings.Cut(s.MQTT, ":")
			return []string{"-h", host, "-p", port, "-u", "ops", "-P", "s3cret-pass", "-V", "mqttv311"}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		sub := exec.CommandContext(ctx, "mosquitto_sub", append(auth(rs[2]), "-q", "1", "-t", "ecowatt/v1/events/rm-0002/command")...)
		stdout, err := sub.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := sub.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); sub.Wait() }()
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Let the subscription settle: mosquitto_sub says nothing on stdout
		// when its SUBACK comes, and under load 500 ms was too short (the
		// Cluster run of test-scale saw no event at all).
		time.Sleep(2 * time.Second)
		msg := `{"action":"write_register","target_register":"export_power","value":61,"request_id":"req-x"}`
		if out, err := exec.CommandContext(ctx, "mosquitto_pub", append(auth(rs[1]), "-q", "1", "-t", "ecowatt/v1/ops/rm-0002/command", "-m", msg)...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		var seen []string
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("mosquitto_sub ended; seen %v", seen)
				}
				seen = append(seen, line)
				if strings.Contains(line, `"req-x"`) && strings.Contains(line, `"succeeded"`) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("no succeeded event for req-x on r2's broker; seen:\n%s", strings.Join(seen, "\n"))
			}
		}
	})

	t.Run("sse on r0 sees r1 and r2 events once", func(t *testing.T) {
		for _, dev := range []string{"rm-0001", "rm-0003"} {
			want := auditIDs(t, rs[0], dev)
			if len(want) == 0 {
				t.Fatalf("%s has no audit events", dev)
			}
			eventually(t, 10*time.Second, dev+"'s events on r0's stream", func() (bool, string) {
				got := sse.counts(dev)
				for _, id := range want {
					if got[id] != 1 {
						return false, fmt.Sprintf("event %s streamed %d times (all: %v)", id, got[id], got)
					}
				}
				return true, ""
			})
		}
		time.Sleep(500 * time.Millisecond) // a duplicate would arrive within this
		for _, dev := range []string{"rm-0001", "rm-0002", "rm-0003"} {
			for id, n := range sse.counts(dev) {
				if n != 1 {
					t.Errorf("%s event %s streamed %d times", dev, id, n)
				}
			}
		}
	})
}

// balancer is a TCP balancer for one test: it forwards each new
// connection to its current target. switchTo moves the clients to another
// target the way a rebalanced or failed-over balancer path does: it cuts
// the client side and keeps the old server side open, so the old replica
// still holds a live session (as it would behind a half-open connection)
// until something closes it.
type balancer struct {
	ln     net.Listener
	mu     sync.Mutex // guards target and conns
	target string
	conns  []*proxied
	wg     sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	target         string
	serverClosed   chan struct{} // the server side ended the connection
}

func startBalancer(t *testing.T, target string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, target: target}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			tgt := b.target
			b.mu.Unlock()
			s, err := net.Dial("tcp", tgt)
			if err != nil {
				c.Close()
				continue
			}
			p := &proxied{client: c, server: s, target: tgt, serverClosed: make(chan struct{})}
			b.mu.Lock()
			b.conns = append(b.conns, p)
			b.mu.Unlock()
			b.wg.Add(2)
			go func() { defer b.wg.Done(); io.Copy(s, c) }() // the server side stays open when the client goes
			go func() {
				defer b.wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						c.Write(buf[:n]) // fails once the client side is cut; keep reading the server
					}
					if err != nil {
						close(p.serverClosed)
						c.Close()
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, p := range b.conns {
			p.client.Close()
			p.server.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *balancer) addr() string { return b.ln.Addr().String() }

// switchTo sends new connections to target and cuts the clients of the
// old one; it returns the cut connections.
func (b *balancer) switchTo(target string) []*proxied {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.target
	b.target = target
	var cut []*proxied
	for _, p := range b.conns {
		if p.target == old {
			p.client.Close()
			cut = append(cut, p)
		}
	}
	return cut
}

// TestReplicaTakeover: 50 devices behind a balancer move from r0 to r1
// while their sessions on r0 are still open. r0 closes each old session
// within seconds (not at the 45 s keepalive), the devices end online on
// r1, and no offline is recorded after their new birth.
func TestReplicaTakeover(t *testing.T) {
	rs := startCluster(t, 2)
	const n = 50
	keys := rs[0].provision(t, "tk", n)
	lb := startBalancer(t, rs[0].MQTT)
	startFleet(t, &testServer{MQTT: lb.addr()}, keys, "", nil)
	waitOnline(t, rs[0], n)
	rdb, prefix := clusterRedis(t, rs[0])
	holder := func(dev string) string {
		return rdb.HGet(context.Background(), prefix+"{dev:"+dev+"}:dev", "replica").Val()
	}
	for dev := range keys {
		if h := holder(dev); h != "r0" {
			t.Fatalf("%s held by %q before the move, want r0", dev, h)
		}
	}

	moved := time.Now()
	cut := lb.switchTo(rs[1].MQTT)
	if len(cut) != n {
		t.Fatalf("cut %d connections, want %d", len(cut), n)
	}
	deadline := time.After(10 * time.Second)
	for i, p := range cut {
		select {
		case <-p.serverClosed:
		case <-deadline:
			t.Fatalf("r0 still holds %d of %d old sessions 10 s after the devices moved to r1", n-i, n)
		}
	}
	closed := time.Since(moved)
	eventually(t, 20*time.Second, "devices online on r1", func() (bool, string) {
		for dev := range keys {
			if h := holder(dev); h != "r1" {
				return false, dev + " held by " + h
			}
		}
		on, _ := countOnline(t, rs[1])
		return on == n, fmt.Sprintf("%d online", on)
	})
	t.Logf("takeover of %d devices: old sessions closed by r0 in %s, all online on r1 in %s",
		n, closed.Round(time.Millisecond), time.Since(moved).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // two presence sweeps; any stale offline would land by now
	if on, _ := countOnline(t, rs[0]); on != n {
		t.Fatalf("%d of %d online after the takeover", on, n)
	}
	for dev := range keys {
		var page struct {
			Events []struct {
				Kind string    `json:"kind"`
				At   time.Time `json:"at"`
				Data struct {
					Online *bool  `json:"online"`
					Via    string `json:"via"`
				} `json:"data"`
			} `json:"events"`
		}
		rs[0].api(t, "GET", "/api/v1/devices/"+dev+"/events?n=500", nil, &page)
		born := false                                // the birth through r1 is seen
		for i := len(page.Events) - 1; i >= 0; i-- { // oldest first
			ev := page.Events[i]
			if ev.Kind != "presence" || ev.Data.Online == nil {
				continue
			}
			switch {
			case *ev.Data.Online && !ev.At.Before(moved.Truncate(time.Millisecond)):
				born = true
			case !*ev.Data.Online && born:
				t.Fatalf("%s: offline (via %q) at %s after its birth on r1", dev, ev.Data.Via, ev.At)
			}
		}
		if !born {
			t.Fatalf("%s: no birth after the move: %+v", dev, page.Events)
		}
	}
	if got := rs[0].metric(t, "ecowatt_route_sessions_closed_total", ""); got < n {
		t.Fatalf("r0 closed %v sessions on request, want %d", got, n)
	}
}
