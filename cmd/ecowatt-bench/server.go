package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/devicesim"
)

// server is a running `ecowatt serve` (its own process, started by
// scripts/bench.sh with a real redis-server) that the fleet, commands, fota
// and redis parts load with devicesim devices run in this process.
type server struct {
	http     string            // http://127.0.0.1:PORT
	mqtt     string            // tcp://127.0.0.1:PORT
	pid      int               // for /proc/PID/status and /proc/PID/stat
	token    string            // admin bearer token
	keys     map[string][]byte // provisioned devices, ID -> PSK
	ids      []string          // sorted
	redis    string            // redis://127.0.0.1:PORT/DB, for MONITOR
	state    string            // devicesim flash root, shared by every part
	client   *http.Client
	fotaKey  []byte // firmware-signing public key; nil while the FOTA API is not there
	fotaWait time.Duration
}

// serverFlags are the suite's flags that name the server under test.
type serverFlags struct {
	ready, token, keys, redis, state *string
	pid                              *int
	fotaWait                         *time.Duration
}

func addServerFlags(fs interface {
	String(name, value, usage string) *string
	Int(name string, value int, usage string) *int
	Duration(name string, value time.Duration, usage string) *time.Duration
}) serverFlags {
	return serverFlags{
		ready: fs.String("server-ready", "", `ecowatt serve's --ready-file ({"http":..., "mqtt":...})`),
		pid:   fs.Int("server-pid", 0, "ecowatt serve's process ID (RSS and CPU are read from /proc)"),
		token: fs.String("server-token", "", "ecowatt serve's admin token"),
		keys:  fs.String("server-keys", "", "keys file of the devices provisioned on the server (ecowatt device add --keys-out)"),
		redis: fs.String("server-redis", "", "the server's Redis URL (redis://127.0.0.1:PORT), for the redis part's MONITOR"),
		state: fs.String("state-dir", "", "devicesim flash root (default: a temporary directory)"),
		fotaWait: fs.Duration("fota-wait", 0, "how long to wait for the server's FOTA API (GET /api/v1/firmware/key) "+
			"before the fota part is marked not measured"),
	}
}

// server connects to the server the flags name.
func (f serverFlags) server(ctx context.Context) (*server, error) {
	if *f.ready == "" || *f.pid <= 0 || *f.token == "" || *f.keys == "" {
		return nil, usageError{"suite: the fleet, commands, fota and redis parts need --server-ready, --server-pid, --server-token and --server-keys"}
	}
	var addrs struct{ HTTP, MQTT string }
	b, err := os.ReadFile(*f.ready)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := json.Unmarshal(b, &addrs); err != nil || addrs.HTTP == "" || addrs.MQTT == "" {
		return nil, fmt.Errorf("server: ready file %s: want {\"http\":..., \"mqtt\":...}: %v", *f.ready, err)
	}
	for _, a := range []string{addrs.HTTP, addrs.MQTT} {
		if err := checkLoopbackAddr(a); err != nil {
			return nil, usageError{"server: " + err.Error()}
		}
	}
	kf, err := os.Open(*f.keys)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	defer kf.Close()
	keys, err := devicesim.LoadKeys(kf)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &server{http: "http://" + addrs.HTTP, mqtt: "tcp://" + addrs.MQTT, pid: *f.pid, token: *f.token,
		keys: keys, redis: *f.redis, state: *f.state, fotaWait: *f.fotaWait,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	for id := range keys {
		s.ids = append(s.ids, id)
	}
	slices.Sort(s.ids)
	if s.state == "" {
		if s.state, err = os.MkdirTemp("", "ecowatt-bench-state-"); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	if _, err := procStat(s.pid); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	raiseFileLimit()
	return s, nil
}

// raiseFileLimit lifts the soft open-files limit to the hard one: each
// simulated device holds a socket. (Go does this at start-up too; doing it
// here says so.)
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// fileLimit is the soft open-files limit.
func fileLimit() uint64 {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0
	}
	return l.Cur
}

// devices returns the first n provisioned device IDs after skipping skip.
func (s *server) devices(skip, n int) ([]string, error) {
	if skip+n > len(s.ids) {
		return nil, fmt.Errorf("%d devices needed (from #%d) but %d are provisioned: provision more with ecowatt device add --count",
			n, skip+1, len(s.ids))
	}
	return s.ids[skip : skip+n], nil
}

// api calls the server's HTTP API with the admin token; out may be nil.
func (s *server) api(ctx context.Context, method, path, ctype string, body []byte, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.http+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func (s *server) apiJSON(ctx context.Context, method, path string, in, out any) (int, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return 0, err
	}
	return s.api(ctx, method, path, "application/json", b, out)
}

// metrics reads the named counters from GET /metrics (unlabelled series).
func (s *server) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.http+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	return parseMetrics(resp.Body, names...)
}

// parseMetrics picks the named unlabelled samples out of the Prometheus
// text format.
func parseMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !slices.Contains(names, f[0]) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: %q: %w", sc.Text(), err)
		}
		out[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("metrics: no %s", n)
		}
	}
	return out, nil
}

// proc is one reading of a process's memory and CPU.
type proc struct {
	RSSKiB  int64   // VmRSS
	CPUSecs float64 // utime + stime
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times; 100 on every
// Linux this runs on.
const clockTicks = 100

// procStat reads /proc/PID/status (VmRSS) and /proc/PID/stat (utime, stime).
func procStat(pid int) (proc, error) {
	var p proc
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, fmt.Errorf("proc: %w", err)
	}
	for line := range strings.Lines(string(st)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			p.RSSKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, fmt.Errorf("proc: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return p, errors.New("proc: malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return p, errors.New("proc: short stat")
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return p, fmt.Errorf("proc: %w", err)
	}
	p.CPUSecs = float64(ut+stt) / clockTicks
	return p, nil
}

// fotaPublicKey asks the server for its firmware-signing key; nil (no
// error) when the FOTA API is not there.
func (s *server) fotaPublicKey(ctx context.Context) ([]byte, error) {
	var k struct {
		PublicKey string `json:"public_key"`
	}
	code, err := s.api(ctx, http.MethodGet, "/api/v1/firmware/key", "", nil, &k)
	switch {
	case code == http.StatusNotFound || code == http.StatusServiceUnavailable:
		return nil, nil
	case err != nil:
		return nil, err
	}
	return hex.DecodeString(k.PublicKey)
}

// simFleet is a devicesim fleet of some of the server's devices, run in
// this process until stop.
type simFleet struct {
	f      *devicesim.Fleet
	feats  map[string]*devicesim.Features // read-only once started
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
	stopErr  error
}

// fleetOptions shape the devices of one part.
type fleetOptions struct {
	features devicesim.FeatureOptions // FOTA.PublicKey is set from the server
	progress func(devicesim.FleetStatus)
}

// startFleet runs devices ids against the server. Every device has every
// feature (telemetry, config, commands, FOTA); its flash lives under the
// suite's state root, so a device keeps its nonces and firmware across
// parts.
func (s *server) startFleet(ctx context.Context, log zerolog.Logger, ids []string, opt fleetOptions) (*simFleet, error) {
	keys := make(map[string][]byte, len(ids))
	for _, id := range ids {
		keys[id] = s.keys[id]
	}
	sf := &simFleet{feats: make(map[string]*devicesim.Features, len(ids)), done: make(chan error, 1)}
	fo := opt.features
	fo.FOTA.PublicKey = s.fotaKey
	f, err := devicesim.NewFleet(devicesim.FleetConfig{
		Keys:      keys,
		StateRoot: s.state,
		Device: devicesim.Config{
			Broker: s.mqtt, FirmwareVersion: "1.0.0", Log: log,
			// Like real gateways, keep trying: a device lost under load comes back.
			MaxBackoff: 5 * time.Second,
		},
		MaxConnecting: 64,
		Setup: func(d *devicesim.Device) error {
			feat, err := devicesim.AttachFeatures(d, fo)
			sf.feats[d.ID()] = feat // NewFleet calls Setup from one goroutine
			return err
		},
		Progress:         opt.progress,
		ProgressInterval: time.Second,
	})
	if err != nil {
		return nil, err
	}
	sf.f = f
	ctx, sf.cancel = context.WithCancel(ctx)
	go func() { sf.done <- f.Run(ctx) }()
	return sf, nil
}

// waitOnline waits until n devices are online or until bound; it returns
// the time it took and whether all came.
func (sf *simFleet) waitOnline(ctx context.Context, n int, bound time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < bound {
		if sf.f.Status().Online >= n {
			return time.Since(start), true
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			break
		}
	}
	return time.Since(start), sf.f.Status().Online >= n
}

// stop stops every device and waits (at most 15 s) for them; it is safe
// twice. Devices still running then are left to the process's exit, and
// the goroutines are dumped to a file for the devicesim owners.
func (sf *simFleet) stop() error {
	sf.stopOnce.Do(func() {
		sf.cancel()
		select {
		case err := <-sf.done:
			if !errors.Is(err, context.Canceled) {
				sf.stopErr = err
			}
		case <-time.After(15 * time.Second):
			sf.stopErr = fmt.Errorf("fleet: %d devices still online 15 s after cancel%s",
				sf.f.Status().Online, dumpGoroutines())
		}
	})
	return sf.stopErr
}

// dumpGoroutines writes every goroutine's stack to a temporary file and
// names it.
func dumpGoroutines() string {
	f, err := os.CreateTemp("", "ecowatt-bench-goroutines-*.txt")
	if err != nil {
		return ""
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 1); err != nil {
		return ""
	}
	return "; goroutines in " + f.Name()
}

// deviceLog is the devices' logger: errors only, sampled, so that 10,000
// devices cannot flood the bench's output.
func deviceLog(w io.Writer) zerolog.Logger {
	return zerolog.New(w).Level(zerolog.ErrorLevel).Sample(&zerolog.BasicSampler{N: 200}).With().Timestamp().Logger()
}

// serverInfo records the server side of a run.
type serverInfo struct {
	Devices   int    `json:"devices_provisioned"`
	FileLimit uint64 `json:"bench_file_limit"`
	Redis     string `json:"redis,omitempty"` // redis-server version
}

// bringOnline starts the devices ids against the server (every feature)
// and waits up to bound for them to be online, logging how long it took
// under [part]. The caller stops the fleet (stopFleet).
func (s *suite) bringOnline(ctx context.Context, part string, ids []string, bound time.Duration) (*simFleet, error) {
	log := s.e.stderr
	fl, err := s.srv.startFleet(ctx, deviceLog(log), ids, fleetOptions{})
	if err != nil {
		return nil, err
	}
	took, _ := fl.waitOnline(ctx, len(ids), bound)
	fmt.Fprintf(log, "[%s] %d/%d devices online in %.1fs\n", part, fl.f.Status().Online, len(ids), took.Seconds())
	return fl, nil
}

// stopFleet stops fl (once; later calls do nothing) and logs a failure
// under [part].
func (s *suite) stopFleet(part string, fl *simFleet) {
	if err := fl.stop(); err != nil {
		fmt.Fprintf(s.e.stderr, "[%s] %v\n", part, err)
	}
}
