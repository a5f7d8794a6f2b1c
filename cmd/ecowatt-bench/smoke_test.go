package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
)

func testEnv(t *testing.T) (env, *bytes.Buffer) {
	var out bytes.Buffer
	return env{stdout: &out, stderr: testWriter{t}, now: time.Now, rand: rand.Reader}, &out
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startEmbedded starts the bench broker with n devices on 127.0.0.1:0.
func startEmbedded(t *testing.T, n int) target {
	t.Helper()
	a, err := newMemAuth(n, "bench", "bench-sub", "sub-pw", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := startBenchBroker(t.Context(), ln, a, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return ecowattTarget(b.URL(), a.devices, a.deviceIDs, a.subUser, a.subPassword, time.Now)
}

func runScenario(t *testing.T, tg target, s scenario, mod func(*load.Config)) load.Result {
	t.Helper()
	cfg, err := s.config(tg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Drain = 500 * time.Millisecond
	cfg.Progress = progressTo(testWriter{t}, s.Name)
	if mod != nil {
		mod(&cfg)
	}
	base := runtime.NumGoroutine()
	res, err := load.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	settle(t, base+2) // no client outlives its run
	t.Logf("%s on %s: %s", s.Name, tg.name, summary(res))
	return res
}

// checkComplete checks that sent messages were published and every one of
// the delivered deliveries owed arrived.
func checkComplete(t *testing.T, r load.Result, sent, delivered int64) {
	t.Helper()
	if r.Sent != sent || r.Expected != delivered || r.Received != delivered || r.Lost != 0 || r.LossPct != 0 ||
		r.Strays != 0 || r.PubErrors != 0 || r.ConnLost != 0 || r.TimedOut {
		t.Errorf("got %+v, want %d sent, %d received, nothing lost", r, sent, delivered)
	}
	if r.RecvRate <= 0 || r.Latency.Max <= 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max {
		t.Errorf("rates/latency not measured: %+v", r)
	}
}

// TestSmokeEmbedded runs tiny bounded scenarios through the embedded broker
// with device auth, ACL and the relay: 5 publishers x 40 = 200 messages.
func TestSmokeEmbedded(t *testing.T) {
	tg := startEmbedded(t, 5)
	for _, s := range []scenario{
		{Name: "fanin-q1", Mode: modeFanIn, Pubs: 5, Subs: 1, QoS: 1, Size: 256, Count: 40, Duration: 10},
		{Name: "fanin-2subs-q0", Mode: modeFanIn, Pubs: 5, Subs: 2, QoS: 0, Size: 256, Count: 40, Duration: 10},
		{Name: "pairs-q1", Mode: modePairs, Pubs: 5, Subs: 5, QoS: 1, Size: 256, Count: 40, Duration: 10},
		{Name: "paced-q1", Mode: modeFanIn, Pubs: 5, Subs: 1, QoS: 1, Size: 64, Count: 10, Rate: 50, Duration: 10},
	} {
		t.Run(s.Name, func(t *testing.T) {
			r := runScenario(t, tg, s, nil)
			sent, delivered := int64(s.Pubs*s.Count), int64(s.Pubs*s.Count)
			if s.Mode == modeFanIn {
				delivered *= int64(s.Subs)
			}
			checkComplete(t, r, sent, delivered)
		})
	}
	t.Run("loss is counted", func(t *testing.T) {
		// Subscriber 0 listens to publisher 0's topic but is told to expect
		// publisher 1: publisher 0's 40 messages are strays, publisher
		// 1's 40 are lost; the other pairs are complete.
		s := scenario{Name: "pairs-crossed", Mode: modePairs, Pubs: 5, Subs: 5, QoS: 1, Size: 256, Count: 40, Duration: 10}
		r := runScenario(t, tg, s, func(c *load.Config) { c.Subscribers[0].From = []int{1} })
		if r.Expected != 200 || r.Lost != 40 || r.Received != 160 || r.Strays != 40 || r.LossPct != 20 {
			t.Errorf("got expected %d lost %d received %d strays %d loss %.2f%%; want 200, 40, 160, 40, 20%%",
				r.Expected, r.Lost, r.Received, r.Strays, r.LossPct)
		}
	})
	t.Run("count and time bound", func(t *testing.T) {
		s := scenario{Name: "bounded", Mode: modeFanIn, Pubs: 2, Subs: 1, QoS: 1, Size: 256, Count: 1000, Rate: 20, Duration: 0.5}
		start := time.Now()
		r := runScenario(t, tg, s, nil)
		if !r.TimedOut || r.Sent >= 2000 || r.Sent == 0 || time.Since(start) > 5*time.Second {
			t.Errorf("duration bound not applied: %+v after %s", r, time.Since(start))
		}
		if r.Lost != 0 || r.Received != r.Sent {
			t.Errorf("a time-bounded run lost what it sent: %+v", r)
		}
	})
	t.Run("refuses non-loopback", func(t *testing.T) {
		s := scenario{Name: "remote", Mode: modeFanIn, Pubs: 1, Subs: 1, QoS: 0, Size: 64, Count: 1, Duration: 1}
		tg := tg
		tg.url = "tcp://192.0.2.1:1883"
		cfg, err := s.config(tg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := load.Run(t.Context(), cfg); !errors.Is(err, load.ErrNotLoopback) {
			t.Errorf("got %v, want ErrNotLoopback", err)
		}
	})
	t.Run("bad password refused", func(t *testing.T) {
		s := scenario{Name: "badpw", Mode: modeFanIn, Pubs: 1, Subs: 1, QoS: 0, Size: 64, Count: 1, Duration: 1}
		tg := tg
		tg.subPassword = "wrong"
		cfg, err := s.config(tg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := load.Run(t.Context(), cfg); err == nil {
			t.Error("a subscriber with a wrong password connected")
		}
	})
}

// settle waits until at most n goroutines run: no run leaks its clients.
func settle(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSmokeMosquitto runs the same tiny fan-in through a real Mosquitto
// configured by mosquitto-conf, so the reference side's ACL shape is
// checked too: the devices may publish, the subscriber may read, and a
// device may not publish on another device's topic.
func TestSmokeMosquitto(t *testing.T) {
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		mosq = "/usr/sbin/mosquitto"
	}
	if _, err := os.Stat(mosq); err != nil {
		t.Skip("mosquitto not installed (scripts/bench.sh installs it)")
	}
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	dir := t.TempDir()
	e, _ := testEnv(t)
	a, err := newMemAuth(5, "bench", "bench-sub", "sub-pw", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "keys.json")
	if err := writeJSON(keys, a.deviceSecrets, 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if err := run(t.Context(), []string{"mosquitto-conf", "--keys", keys, "--sub-password", "sub-pw",
		"--port", strconv.Itoa(port), "--dir", dir}, e); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(passwd, "-U", filepath.Join(dir, "passwd")).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -U: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, mosq, "-c", filepath.Join(dir, "mosquitto.conf"))
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	waitPort(t, port)

	pw, ids, err := readCreds(filepath.Join(dir, "devices.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tg := staticTarget(nameMosquitto, "tcp://127.0.0.1:"+strconv.Itoa(port), pw, ids, "bench-sub", "sub-pw")
	s := scenario{Name: "fanin-q1", Mode: modeFanIn, Pubs: 5, Subs: 1, QoS: 1, Size: 256, Count: 40, Duration: 10}
	checkComplete(t, runScenario(t, tg, s, nil), 200, 200)

	// Device 0 publishing on device 1's topic is dropped by the ACL.
	// Mosquitto 2 also drops the spoofer's connection (its remaining
	// publishes fail); no other client may lose its connection.
	p := scenario{Name: "spoof", Mode: modePairs, Pubs: 2, Subs: 2, QoS: 1, Size: 64, Count: 5, Duration: 5}
	var (
		mu      sync.Mutex
		dropped []string
		spoofer string
	)
	r := runScenario(t, tg, p, func(c *load.Config) {
		c.Publishers[0].Topic = c.Publishers[1].Topic
		spoofer = c.Publishers[0].ClientID
		c.OnConnLost = func(id string, _ error) {
			mu.Lock()
			dropped = append(dropped, id)
			mu.Unlock()
		}
	})
	if r.Sent != 10 || r.Expected != 10 || r.Lost != 5 || r.Received != 5 || r.Strays != 0 || r.TimedOut {
		t.Errorf("spoofed publishes: %+v; want 10 sent, 5 lost (ACL drop), device 1's 5 received, 0 strays", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if slices.ContainsFunc(dropped, func(id string) bool { return id != spoofer }) || r.ConnLost > 1 || r.PubErrors > 5 {
		t.Errorf("connections lost %v (want at most the spoofer %s), %d publish errors (at most its 5)", dropped, spoofer, r.PubErrors)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitPort(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
