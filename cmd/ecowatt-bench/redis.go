package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/topics"
)

// redisResult is the redis part: Redis commands per device message, by
// kind, counted with MONITOR on the server's redis-server while a bounded
// batch of device messages goes through. Background commands (sweeps,
// leases) are measured in quiet windows of the same run and subtracted.
type redisResult struct {
	Devices int         `json:"devices"` // per fleet (two fleets: quiet and uploading)
	Kinds   []redisKind `json:"kinds"`
	// Background is the commands/s with no device messages: without
	// devices, and with the quiet fleet connected.
	BackgroundPerSec     float64 `json:"background_per_s"`
	BackgroundOnlinePerS float64 `json:"background_online_per_s"`
}

// redisKind is one kind of device message.
type redisKind struct {
	Kind     string             `json:"kind"`
	Messages float64            `json:"messages"`
	PerMsg   float64            `json:"commands_per_msg"`   // top-level commands: at most one round trip each (pipelines share one)
	InLua    float64            `json:"lua_calls_per_msg"`  // redis.call()s inside scripts, not round trips
	ByName   map[string]float64 `json:"by_command_per_msg"` // top-level, per message
	Note     string             `json:"note,omitempty"`
}

// monitor counts the commands a redis-server runs, from MONITOR.
type monitor struct {
	conn net.Conn
	done chan struct{}

	mu  sync.Mutex // guards top, lua
	top map[string]int64
	lua int64
}

// monCount is a snapshot of a monitor's counters.
type monCount struct {
	at  time.Time
	top map[string]int64
	lua int64
}

func (c monCount) total() int64 {
	var n int64
	for _, v := range c.top {
		n += v
	}
	return n
}

// startMonitor runs MONITOR on the Redis at rawURL (redis://host:port/db,
// loopback, no password).
func startMonitor(ctx context.Context, rawURL string) (*monitor, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "redis" {
		return nil, fmt.Errorf("monitor: want redis://host:port, got %q", rawURL)
	}
	if err := checkLoopbackAddr(u.Host); err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	if _, err := io.WriteString(conn, "MONITOR\r\n"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("monitor: %w", err)
	}
	m := &monitor{conn: conn, done: make(chan struct{}), top: map[string]int64{}}
	r := bufio.NewReaderSize(conn, 1<<16)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		conn.Close()
		return nil, fmt.Errorf("monitor: %q: %v", line, err)
	}
	go func() {
		defer close(m.done)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			m.count(line)
		}
	}()
	return m, nil
}

// count classifies one MONITOR line:
// +1700000000.123456 [0 127.0.0.1:5432] "HSET" "key" ...  (a client's command)
// +1700000000.123456 [0 lua] "HGET" "key"                  (inside a script)
func (m *monitor) count(line string) {
	i := strings.IndexByte(line, '[')
	j := strings.Index(line, "] \"")
	if i < 0 || j < i {
		return
	}
	lua := strings.HasSuffix(line[i:j], " lua")
	name := line[j+3:]
	if k := strings.IndexByte(name, '"'); k >= 0 {
		name = strings.ToLower(name[:k])
	}
	m.mu.Lock()
	if lua {
		m.lua++
	} else {
		m.top[name]++
	}
	m.mu.Unlock()
}

func (m *monitor) snapshot() monCount {
	time.Sleep(50 * time.Millisecond) // let the reader catch up with lines already sent
	m.mu.Lock()
	defer m.mu.Unlock()
	return monCount{at: time.Now(), top: maps.Clone(m.top), lua: m.lua}
}

// Close ends MONITOR and waits for the reader.
func (m *monitor) Close() {
	m.conn.Close()
	<-m.done
}

// perMsg turns the commands between a and b, less bg commands/s (bgLua
// lua calls/s), into a per-message kind.
func perMsg(kind string, a, b monCount, msgs, bg, bgLua float64) redisKind {
	secs := b.at.Sub(a.at).Seconds()
	k := redisKind{Kind: kind, Messages: msgs, ByName: map[string]float64{}}
	if msgs <= 0 {
		return k
	}
	k.PerMsg = round((float64(b.total()-a.total())-bg*secs)/msgs, 2)
	k.InLua = round((float64(b.lua-a.lua)-bgLua*secs)/msgs, 2)
	for name, v := range b.top {
		if d := float64(v - a.top[name]); d/msgs >= 0.05 {
			k.ByName[name] = round(d/msgs, 2)
		}
	}
	return k
}

func rate(a, b monCount) (cmds, lua float64) {
	secs := b.at.Sub(a.at).Seconds()
	return float64(b.total()-a.total()) / secs, float64(b.lua-a.lua) / secs
}

func (s *suite) runRedis(ctx context.Context, rep *report) error {
	m := 50
	if s.full {
		m = 100
	}
	if s.srv.redis == "" {
		return usageError{"suite: the redis part needs --server-redis"}
	}
	// Two fleets from the end of the provisioned devices.
	if len(s.srv.ids) < 2*m {
		return fmt.Errorf("redis: %d devices needed, %d provisioned", 2*m, len(s.srv.ids))
	}
	idsA := s.srv.ids[len(s.srv.ids)-2*m : len(s.srv.ids)-m]
	idsB := s.srv.ids[len(s.srv.ids)-m:]
	res := &redisResult{Devices: m}
	rep.Redis = res
	log := s.e.stderr
	mon, err := startMonitor(ctx, s.srv.redis)
	if err != nil {
		return err
	}
	defer mon.Close()
	const bgWindow = 6 * time.Second // covers the 5 s command sweep and 2 s FOTA sweep

	sleepCtx(ctx, 500*time.Millisecond)
	c0 := mon.snapshot()
	sleepCtx(ctx, bgWindow)
	c1 := mon.snapshot()
	bg0, bg0Lua := rate(c0, c1)
	res.BackgroundPerSec = round(bg0, 1)
	fmt.Fprintf(log, "[redis] background, no devices: %.1f commands/s\n", bg0)

	// Births (with the connect's key lookup): a fleet that uploads only
	// every 300 s, so nothing else is sent.
	quiet := devicesim.FeatureOptions{Config: devicesim.ConfigOptions{Default: topics.Config{
		SamplingInterval: 10, UploadInterval: 300, Registers: topics.DefaultConfig().Registers}}}
	a0 := mon.snapshot()
	flA, err := s.srv.startFleet(ctx, deviceLog(log), idsA, fleetOptions{features: quiet})
	if err != nil {
		return err
	}
	defer func() { _ = flA.stop() }()
	if _, ok := flA.waitOnline(ctx, m, 60*time.Second); !ok {
		return fmt.Errorf("redis: %d of %d quiet devices online", flA.f.Status().Online, m)
	}
	sleepCtx(ctx, 1500*time.Millisecond)
	a1 := mon.snapshot()
	birth := perMsg("birth (connect + birth)", a0, a1, float64(m), bg0, bg0Lua)
	birth.Note = "includes the CONNECT's device key lookup and presence"
	fmt.Fprintf(log, "[redis] birth: %.2f commands/device (%.2f in Lua) %v\n", birth.PerMsg, birth.InLua, birth.ByName)

	sleepCtx(ctx, 500*time.Millisecond)
	b0 := mon.snapshot()
	sleepCtx(ctx, bgWindow)
	b1 := mon.snapshot()
	bg1, bg1Lua := rate(b0, b1)
	res.BackgroundOnlinePerS = round(bg1, 1)
	fmt.Fprintf(log, "[redis] background, %d quiet devices online: %.1f commands/s\n", m, bg1)

	// Commands: one ping per quiet device; the result ends each.
	k0 := mon.snapshot()
	cids := make([]string, 0, m)
	for _, id := range idsA {
		var c commandDoc
		if _, err := s.srv.apiJSON(ctx, http.MethodPost, "/api/v1/devices/"+id+"/commands",
			map[string]string{"action": "ping", "ttl": "60s"}, &c); err != nil {
			return err
		}
		cids = append(cids, c.ID)
	}
	sleepCtx(ctx, 3*time.Second)
	k1 := mon.snapshot()
	done := 0
	for _, d := range s.readCommands(ctx, cids) {
		if d.State == "succeeded" {
			done++
		}
	}
	cmd := perMsg("command (API submit -> result)", k0, k1, float64(done), bg1, bg1Lua)
	cmd.Note = fmt.Sprintf("whole lifecycle: POST, delivery, receipt, result; %d of %d succeeded", done, m)
	fmt.Fprintf(log, "[redis] command: %.2f commands/command (%.2f in Lua) %v\n", cmd.PerMsg, cmd.InLua, cmd.ByName)

	// Telemetry: a second fleet uploading every 15 s; a 16 s window holds
	// about one upload per device.
	flB, err := s.srv.startFleet(ctx, deviceLog(log), idsB, fleetOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = flB.stop() }()
	if _, ok := flB.waitOnline(ctx, m, 60*time.Second); !ok {
		return fmt.Errorf("redis: %d of %d devices online", flB.f.Status().Online, m)
	}
	sleepCtx(ctx, 1500*time.Millisecond)
	t0, m0 := mon.snapshot(), mustMetrics(ctx, s.srv)
	sleepCtx(ctx, 16*time.Second)
	t1, m1 := mon.snapshot(), mustMetrics(ctx, s.srv)
	bgBoth, bgBothLua := bg0+2*(bg1-bg0), bg0Lua+2*(bg1Lua-bg0Lua) // two connected fleets
	tel := perMsg("telemetry", t0, t1, m1-m0, bgBoth, bgBothLua)
	fmt.Fprintf(log, "[redis] telemetry: %.0f batches, %.2f commands/batch (%.2f in Lua) %v\n", m1-m0, tel.PerMsg, tel.InLua, tel.ByName)
	res.Kinds = []redisKind{birth, tel, cmd}
	return nil
}

// mustMetrics reads the stored-batches counter; -1 on failure, so that the
// per-message figure comes out visibly wrong rather than silently.
func mustMetrics(ctx context.Context, srv *server) float64 {
	m, err := srv.metrics(ctx, metricBatches)
	if err != nil {
		return -1
	}
	return m[metricBatches]
}

// topNames lists a kind's commands, most frequent first.
func (k redisKind) topNames() string {
	names := slices.Collect(maps.Keys(k.ByName))
	slices.SortFunc(names, func(a, b string) int { return cmpFloat(k.ByName[b], k.ByName[a]) })
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %.2f", n, k.ByName[n]))
	}
	return strings.Join(parts, ", ")
}
