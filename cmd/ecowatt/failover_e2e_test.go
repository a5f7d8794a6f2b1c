package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
	"github.com/redis/go-redis/v9"
)

// faultProxy is a loopback TCP proxy whose cut drops every connection
// and refuses new ones at once: to the process behind it, its peers
// vanish as they would if that process crashed (no lease released, no
// MQTT DISCONNECT sent).
type faultProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards conns, cut
	conns []net.Conn
	cut   bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(func() { p.sever(); p.wg.Wait() })
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			return
		}
		p.wg.Go(func() { io.Copy(up, c); up.Close(); c.Close() })
		p.wg.Go(func() { io.Copy(c, up); up.Close(); c.Close() })
	}
}

// track remembers a connection pair, or closes it when already cut.
func (p *faultProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
	return true
}

// sever closes the listener and every connection; safe to call twice.
func (p *faultProxy) sever() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// startOn starts `ecowatt serve` as replica on the shared state of
// (prefix, dataDir, token), with its own Redis and broker addresses.
func startOn(t *testing.T, prefix, dataDir, token, redisURL, brokerURL, replica string, extra ...string) *testServer {
	t.Helper()
	s := &testServer{Token: token, DataDir: dataDir}
	s.args = append([]string{"serve",
		"--http-addr", "127.0.0.1:0", "--redis", redisURL, "--redis-prefix", prefix,
		"--data-dir", dataDir, "--admin-token", token, "--log-level", "warn",
		"--broker-url", brokerURL, "--broker-insecure", "--replica-id", replica,
	}, extra...)
	s.start(t)
	t.Cleanup(func() { s.stop(t) })
	return s
}

// crash cuts s off from Redis and the broker, then stops it: it can
// neither release its leases nor say goodbye to the broker, and whatever
// it had queued in memory is lost. It returns at once; wait waits for the
// process to end (its exit error, if any, is expected).
func (s *testServer) crash(t *testing.T, proxies ...*faultProxy) (wait func()) {
	t.Helper()
	for _, p := range proxies {
		p.sever()
	}
	s.cancel()
	s.cancel = nil
	return func() {
		t.Helper()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Errorf("crashed server did not stop within 10 s\n%s", s.logs)
		}
	}
}

// leaseHolders returns the replica holding each lease key (name -> replica).
func leaseHolders(t *testing.T, rdb redis.UniversalClient, prefix string, names []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range names {
		tok, err := rdb.Get(context.Background(), prefix+n).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		out[n] = lease.ReplicaOf(tok)
	}
	return out
}

func allHeldBy(h map[string]string, replica string) bool {
	for _, r := range h {
		if r != replica {
			return false
		}
	}
	return true
}

// sub is a submitted command.
type sub struct {
	id, dev string
	value   int
}

// commandStates counts the states of subs, read straight from Redis.
func commandStates(t *testing.T, rdb redis.UniversalClient, prefix string, subs []sub) map[string]int {
	t.Helper()
	keys, err := store.NewKeys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(subs))
	for i, s := range subs {
		cmds[i] = p.HGet(ctx, keys.Dev(s.dev, "cmd:"+s.id), "state")
	}
	p.Exec(ctx)
	out := map[string]int{}
	for _, c := range cmds {
		out[c.Val()]++
	}
	return out
}

// features returns the device features of id.
func (f *fotaFleet) features(t *testing.T, id string) *devicesim.Features {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	feat, ok := f.m[id]
	if !ok {
		t.Fatalf("no features for %s", id)
	}
	return feat
}

// TestScaleFailover: two replicas behind Mosquitto share Redis and a
// 20-device fleet. rep-a, started first, holds every lease (command
// delivery and sweep, config sweep, rollout advancement). In the middle
// of a firmware rollout (devices 1-10) and a burst of 60 write_register
// commands (devices 11-20, six each, queued through both replicas),
// rep-a crashes: its connections to Redis and the broker are cut, so it
// releases nothing and what it held in memory is lost. rep-b takes every
// lease over once it expires, and then every command has succeeded,
// executed exactly once on its device and in queue order, and the
// rollout completes on all ten devices.
func TestScaleFailover(t *testing.T) {
	mqttURL := mosquittoURL(t)
	_, prefix := redistest.Client(t)
	redisURL := os.Getenv(redistest.EnvURL)
	ru, err := url.Parse(redisURL)
	if err != nil || ru.Scheme != "redis" {
		t.Skipf("failover test needs a standalone redis:// URL, have %q", redisURL)
	}
	mu, err := url.Parse(mqttURL)
	if err != nil {
		t.Fatal(err)
	}
	redisProxy, mqttProxy := newFaultProxy(t, ru.Host), newFaultProxy(t, mu.Host)
	viaProxy := *ru
	viaProxy.Host = redisProxy.Addr()

	const ttl = 2 * time.Second
	extra := append([]string{
		"--command-lease", ttl.String(), "--command-tick", "100ms", "--command-result-resend", "3s",
		"--config-sweep", "500ms", "--config-lease", ttl.String(), "--fota-lease", ttl.String(), "--fota-manifest-resend", "3s",
	}, append(commandArgs, fotaArgs...)...)
	dir := t.TempDir()
	dataDir, token := filepath.Join(dir, "data"), "test-token-"+filepath.Base(dir)
	a := startOn(t, prefix, dataDir, token, viaProxy.String(), "tcp://"+mqttProxy.Addr(), "rep-a", extra...)
	leases := []string{"lease:command-delivery", "lease:command-sweep", "lease:config-sweep", "lease:fota"}
	rdb, _ := a.redis(t)
	eventually(t, 10*time.Second, "rep-a holds every lease", func() (bool, string) {
		h := leaseHolders(t, rdb, prefix, leases)
		return allHeldBy(h, "rep-a"), fmt.Sprint(h)
	})
	b := startOn(t, prefix, dataDir, token, redisURL, mqttURL, "rep-b", extra...)

	const n = 20
	keys := a.provision(t, "fo", n)
	ff := newFOTAFleet(t, a)
	fleetTarget := *a
	fleetTarget.MQTT = mu.Host
	// Devices 11-20 take the commands; their inverter answers every
	// Modbus request 40 ms late, so that a write with its read-back takes
	// long enough for the crash to find commands in flight.
	slow := func(id string) bool { return id > fmt.Sprintf("fo-%04d", n/2) }
	startFleet(t, &fleetTarget, keys, "", func(d *devicesim.Device) error {
		opt := devicesim.FeatureOptions{FOTA: devicesim.FOTAOptions{PublicKey: ff.pub, FailBootDelay: 500 * time.Millisecond}}
		if slow(d.ID()) {
			opt.Telemetry.Faults = inverter.Faults{Delay: 1, DelayFor: 40 * time.Millisecond}
		}
		feat, err := devicesim.AttachFeatures(d, opt)
		if err != nil {
			return err
		}
		ff.mu.Lock()
		ff.m[d.ID()] = feat
		ff.mu.Unlock()
		return nil
	})
	buildAndUpload(t, b, "1.0.7", "512KiB", false)
	waitOnline(t, b, n)
	start := time.Now()

	var fwDevs, cmdDevs []string
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("fo-%04d", i)
		if i <= n/2 {
			fwDevs = append(fwDevs, id)
		} else {
			cmdDevs = append(cmdDevs, id)
		}
	}
	rid := startRollout(t, b, "--version", "1.0.7", "--devices", strings.Join(fwDevs, ","), "--canary", "2", "--batch-size", "4", "--max-failure-percent", "10")
	eventually(t, 20*time.Second, "the canary batch updating", func() (bool, string) {
		r := getRollout(t, a, rid)
		return r.State == "running" && r.Counts["updating"] > 0, fmt.Sprintf("%s %v", r.State, r.Counts)
	})

	// The burst: six writes per device, submitted round-robin through both
	// replicas; rep-a crashes half-way through.
	var subs []sub
	submit := func(s *testServer, dev string, value int) {
		c := s.submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": value})
		subs = append(subs, sub{c.ID, dev, value})
	}
	for round := range 3 {
		for i, dev := range cmdDevs {
			submit([]*testServer{a, b}[i%2], dev, 10*round+i%10+1)
		}
	}
	eventually(t, 10*time.Second, "commands in flight", func() (bool, string) {
		st := commandStates(t, rdb, prefix, subs)
		return st["sent"]+st["delivered"] >= 5 && st["queued"] > 0, fmt.Sprint(st)
	})
	ro := getRollout(t, b, rid)
	t.Logf("rollout at the crash: %s batch %d %v", ro.State, ro.CurrentBatch, ro.Counts)
	before := leaseHolders(t, rdb, prefix, leases)
	if !allHeldBy(before, "rep-a") {
		t.Fatalf("leases before the crash: %v, want all rep-a", before)
	}
	crashed := time.Now()
	waitExit := a.crash(t, redisProxy, mqttProxy)
	t.Logf("rep-a crashed %s into the burst and rollout; commands then: %v",
		crashed.Sub(start).Round(time.Millisecond), commandStates(t, rdb, prefix, subs))
	for round := 3; round < 6; round++ {
		for i, dev := range cmdDevs {
			submit(b, dev, 10*round+i%10+1)
		}
	}

	eventually(t, 15*time.Second, "rep-b holds every lease", func() (bool, string) {
		h := leaseHolders(t, rdb, prefix, leases)
		return allHeldBy(h, "rep-b"), fmt.Sprint(h)
	})
	took := time.Since(crashed)
	t.Logf("rep-b held every lease %s after the crash (ttl %s)", took.Round(time.Millisecond), ttl)
	if took < ttl/3 {
		t.Errorf("leases moved %s after the crash: rep-a cannot have released them and they cannot have expired yet (ttl %s)", took, ttl)
	}
	waitExit()

	eventually(t, 40*time.Second, "every command succeeded", func() (bool, string) {
		left := 0
		var last commandDoc
		for _, s := range subs {
			if c := b.command(t, s.id); c.State != "succeeded" {
				left++
				last = c
			}
		}
		return left == 0, fmt.Sprintf("%d of %d unfinished, e.g. %s %s %q", left, len(subs), last.ID, last.State, last.Error)
	})
	t.Logf("all %d commands succeeded %s after the crash", len(subs), time.Since(crashed).Round(time.Millisecond))

	// Exactly once, in order, per device.
	perDev := map[string][]sub{}
	for _, s := range subs {
		perDev[s.dev] = append(perDev[s.dev], s)
	}
	dups := int64(0)
	for _, dev := range cmdDevs {
		st := ff.features(t, dev).Commands.Stats()
		dups += st.Duplicates
		if st.Writes != 6 || st.Executed != 6 || st.Failed != 0 {
			t.Errorf("%s: device stats %+v, want 6 writes and 6 executions", dev, st)
		}
		var docs []commandDoc
		for _, s := range perDev[dev] {
			c := b.command(t, s.id)
			if c.Result == nil || c.Result.Value == nil || *c.Result.Value != s.value {
				t.Errorf("%s %s: result %+v, want value %d", dev, s.id, c.Result, s.value)
				continue
			}
			docs = append(docs, c)
		}
		if !sort.SliceIsSorted(docs, func(i, j int) bool { return docs[i].Seq < docs[j].Seq }) {
			t.Errorf("%s: commands not in queue order", dev)
		}
		for i := 1; i < len(docs); i++ {
			if docs[i].Result.ExecutedAt.Before(docs[i-1].Result.ExecutedAt) {
				t.Errorf("%s: command %d (seq %d) executed at %s, before command %d at %s: out of order",
					dev, i, docs[i].Seq, docs[i].Result.ExecutedAt, i-1, docs[i-1].Result.ExecutedAt)
			}
		}
	}

	t.Logf("devices answered %d repeated deliveries from flash", dups)

	eventually(t, 45*time.Second-time.Since(crashed), "rollout completed", func() (bool, string) {
		r := getRollout(t, b, rid)
		return r.State == "completed", fmt.Sprintf("%s batch %d %v %v", r.State, r.CurrentBatch, r.Counts, r.DeviceStates)
	})
	r := getRollout(t, b, rid)
	if r.Counts["succeeded"] != len(fwDevs) || len(r.Batches) != 3 {
		t.Fatalf("rollout counts %v, %d batches; want %d succeeded in 3 batches", r.Counts, len(r.Batches), len(fwDevs))
	}
	for _, bt := range r.Batches { // no batch started twice, none skipped
		if bt.State != "done" || bt.Counts["succeeded"] != bt.Size {
			t.Errorf("batch %d: %s %v of %d", bt.Index, bt.State, bt.Counts, bt.Size)
		}
	}
	for _, dev := range fwDevs {
		if st := ff.stats(dev); st.Running != "1.0.7" {
			t.Errorf("%s: device runs %s after the rollout", dev, st.Running)
		}
	}
	t.Logf("rollout completed %s after the crash; test body %s", time.Since(crashed).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
