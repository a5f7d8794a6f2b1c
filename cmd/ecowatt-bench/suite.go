package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
)

// Reference and subject of the broker scenario.
const (
	nameEcowatt   = "ecowatt"
	nameMosquitto = "mosquitto"
)

// brokerScenarios are the broker scenario of docs/BENCHMARKS.md: fan-in
// from 100 publishers into 1 subscriber and point-to-point pairs, 256 B,
// QoS 0 and 1, unpaced (throughput), plus one paced fan-in whose latencies
// are not dominated by queueing. full is the bench-full size.
func brokerScenarios(full bool) []scenario {
	fanIn, pairs, pairCount, paced := 400, 50, 800, 20 // quick: 40,000 messages a run
	if full {
		fanIn, pairs, pairCount, paced = 2000, 100, 2000, 100
	}
	var out []scenario
	for _, q := range []byte{0, 1} {
		out = append(out,
			scenario{Name: fmt.Sprintf("fanin-100x1-q%d", q), Mode: modeFanIn, Pubs: 100, Subs: 1, QoS: q, Size: 256, Count: fanIn, Duration: 60},
			scenario{Name: fmt.Sprintf("pairs-%dx%d-q%d", pairs, pairs, q), Mode: modePairs, Pubs: pairs, Subs: pairs, QoS: q, Size: 256, Count: pairCount, Duration: 60},
		)
	}
	// 100 x 20 msg/s = 2,000 msg/s for paced seconds.
	out = append(out, scenario{Name: "fanin-100x1-q1-paced", Mode: modeFanIn, Pubs: 100, Subs: 1, QoS: 1, Size: 256,
		Count: paced, Rate: 20, Duration: float64(paced)/20 + 10})
	return out
}

// suite is one `ecowatt-bench suite` run.
type suite struct {
	e       env
	targets []target // subject first, then the reference
	full    bool
	repeat  int
	secFile string // `go test -bench` output of the security scenario
	only    map[string]bool
	srv     *server        // ecowatt serve, for the fleet, commands, fota and redis parts
	sizes   map[string]int // --PART-devices overrides; 0: the quick or full size
	bench   *target        // the bench broker (fota's raw throughput reference)
}

// part is one scenario family of docs/BENCHMARKS.md. Families not built yet
// have a nil run; their targets are reported as "not yet measured". To add
// one, give it a run that fills its field of report and a targetRow in
// targets.go; parts that load `ecowatt serve` say so in serverParts.
type part struct {
	name string
	run  func(s *suite, ctx context.Context, rep *report) error
}

func parts() []part {
	return []part{
		{"broker", (*suite).runBroker},
		{"security", (*suite).runSecurity},
		{"fleet", (*suite).runFleet},       // 10,000 devices online, RSS per device, ingest, CPU
		{"commands", (*suite).runCommands}, // command latency at increasing rates
		{"fota", (*suite).runFOTA},         // 1 MiB to 1,000 devices, goodput vs raw 16 KiB QoS 1 throughput
		{"redis", (*suite).runRedis},       // Redis commands per device message, by kind
		{"jobs", (*suite).runJobs},         // a paced config job over every online device vs its pacing bound
	}
}

// serverParts load `ecowatt serve` (and its Redis) rather than the bench broker.
var serverParts = []string{"fleet", "commands", "fota", "redis", "jobs"}

// runSuite is `ecowatt-bench suite`.
func runSuite(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "suite", "suite --ecowatt-url URL --ecowatt-keys FILE --mosquitto-url URL --mosquitto-creds FILE [flags]")
	ef := addTargetFlags(fs, "ecowatt-", "EcoWatt")
	mf := addTargetFlags(fs, "mosquitto-", "Mosquitto")
	full := fs.Bool("full", false, "full-size scenarios (make bench-full)")
	repeat := fs.Int("repeat", 5, "runs of each broker scenario on each broker; the median counts")
	only := fs.String("only", "", "comma-separated parts to run (default all): "+partNames())
	secFile := fs.String("security", "", "output of go test -bench 'SealOpen|BareHMAC' ./topics/envelope/")
	out := fs.String("out", "", "write the results JSON here")
	latest := fs.String("latest", "", "also write the results JSON here (the last recorded run, e.g. docs/bench/latest.json)")
	md := fs.String("md", "", "update the generated sections of this Markdown file (docs/BENCHMARKS.md)")
	compare := fs.String("compare", "", "print the change against this earlier results JSON")
	command := fs.String("command", "ecowatt-bench suite", "the command line to record")
	commit := fs.String("commit", "", "the source revision to record")
	mosqVersion := fs.String("mosquitto-version", "", "Mosquitto's version, to record")
	budget := fs.Duration("budget", 9*time.Minute, "bound on the whole suite")
	sf := addServerFlags(fs)
	sizes := map[string]*int{}
	for _, p := range []string{"fleet", "commands", "fota", "jobs"} {
		sizes[p] = fs.Int(p+"-devices", 0, "devices in the "+p+" part (default: its quick or full size)")
	}
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (the load side: devices, clients) here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := &suite{e: e, full: *full, repeat: max(*repeat, 1), secFile: *secFile, only: map[string]bool{}, sizes: map[string]int{}}
	for p, n := range sizes {
		s.sizes[p] = *n
	}
	for _, p := range strings.Split(*only, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if !slices.ContainsFunc(parts(), func(q part) bool { return q.name == p }) {
				return usageError{fmt.Sprintf("suite: unknown part %q (want %s)", p, partNames())}
			}
			s.only[p] = true
		}
	}
	if s.wants("broker") || s.wants("fota") && *ef.url != "" {
		et, err := ef.target(e, nameEcowatt)
		if err != nil {
			return err
		}
		s.bench = &et
	}
	if s.wants("broker") {
		mt, err := mf.target(e, nameMosquitto)
		if err != nil {
			return err
		}
		s.targets = []target{*s.bench, mt}
	}
	if s.wants("security") && s.secFile == "" {
		return usageError{"suite: the security part needs --security FILE (or --only broker)"}
	}

	rep := &report{Date: e.now().UTC().Truncate(time.Second), Command: *command, Commit: *commit, Full: *full,
		Repeat: s.repeat, Machine: probeMachine(*mosqVersion)}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("suite: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("suite: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithTimeout(ctx, *budget)
	defer cancel()
	if slices.ContainsFunc(serverParts, s.wants) {
		srv, err := sf.server(ctx)
		if err != nil {
			return err
		}
		s.srv = srv
		rep.Server = &serverInfo{Devices: len(srv.ids), FileLimit: fileLimit()}
		if s.wants("fota") {
			s.srv.fotaKey = waitFOTAKey(ctx, e, srv)
		}
	}
	for _, p := range parts() {
		switch {
		case !s.wants(p.name):
			continue
		case p.run == nil:
			fmt.Fprintf(e.stderr, "== %s: not yet measured\n", p.name)
			continue
		}
		fmt.Fprintf(e.stderr, "== %s\n", p.name)
		err := p.run(s, ctx, rep)
		if err != nil && slices.Contains(serverParts, p.name) {
			// One server part failing leaves the others' figures worth recording.
			fmt.Fprintf(e.stderr, "== %s failed: %v\n", p.name, err)
			if rep.Errors == nil {
				rep.Errors = map[string]string{}
			}
			rep.Errors[p.name] = err.Error()
			continue
		}
		if err != nil {
			return fmt.Errorf("suite: %s: %w", p.name, err)
		}
	}
	rep.Targets = targetRows(rep)

	fmt.Fprintln(e.stdout)
	fmt.Fprintln(e.stdout, rep.markdownLatest())
	fmt.Fprint(e.stdout, rep.markdownTargets())
	return record(e, rep, *out, *latest, *md, *compare)
}

// record writes rep to out and latest and into the Markdown file md, and
// compares it with the earlier run in compare: that run is read before
// anything is written, so that compare may be latest itself (the
// recorded run this one replaces). A memory regression fails, after the
// report is written.
func record(e env, rep *report, out, latest, md, compare string) error {
	var old *report
	var readErr error
	if compare != "" {
		old, readErr = readReport(compare)
		if errors.Is(readErr, errNoReport) {
			readErr = nil
		}
	}
	for _, path := range []string{out, latest} {
		if path != "" {
			if err := writeJSON(path, rep, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "results: %s\n", path)
		}
	}
	if md != "" {
		if err := updateMarkdown(md, rep); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "updated %s\n", md)
	}
	if compare == "" || readErr != nil {
		return readErr
	}
	if old == nil {
		fmt.Fprintf(e.stdout, "\nno earlier run at %s to compare with\n", compare)
		return nil
	}
	fmt.Fprintln(e.stdout)
	compareReports(e.stdout, old, rep)
	if memoryRegressed(old, rep) {
		return fmt.Errorf("memory regression: server RSS %.1f -> %.1f KiB per device at %d devices (more than +%.0f%% against the run of %s)",
			old.Fleet.RSSPerDeviceKiB, rep.Fleet.RSSPerDeviceKiB, rep.Fleet.Devices, 100*regressionBand, old.Date.Format("2006-01-02 15:04 MST"))
	}
	return nil
}

// size is n unless --PART-devices overrides it.
func (s *suite) size(part string, n int) int {
	if v := s.sizes[part]; v > 0 {
		return v
	}
	return n
}

func (s *suite) wants(name string) bool { return len(s.only) == 0 || s.only[name] }

func partNames() string {
	var n []string
	for _, p := range parts() {
		n = append(n, p.name)
	}
	return strings.Join(n, ",")
}

// runBroker runs every broker scenario repeat times on every target,
// alternating which target goes first so that neither always runs on a
// machine the other has just warmed (or loaded).
func (s *suite) runBroker(ctx context.Context, rep *report) error {
	scens := brokerScenarios(s.full)
	for i, sc := range scens {
		row := brokerRow{Scenario: sc, Reference: nameMosquitto, Runs: map[string][]load.Result{}}
		for r := range s.repeat {
			order := slices.Clone(s.targets)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, t := range order {
				label := fmt.Sprintf("[broker %d/%d %s %s #%d]", i+1, len(scens), sc.Name, t.name, r+1)
				cfg, err := sc.config(t)
				if err != nil {
					return err
				}
				cfg.Now = s.e.now
				cfg.Progress = progressTo(s.e.stderr, label)
				res, err := load.Run(ctx, cfg)
				if err != nil && ctx.Err() != nil {
					fmt.Fprintf(s.e.stderr, "%s the suite's --budget is spent: recording the %d complete scenario(s) of %d\n",
						label, len(rep.Broker), len(scens))
					return nil
				}
				if err != nil {
					return fmt.Errorf("%s on %s: %w", sc.Name, t.name, err)
				}
				fmt.Fprintf(s.e.stderr, "%s %s\n", label, summary(res))
				row.Runs[t.name] = append(row.Runs[t.name], res)
				sleepCtx(ctx, 300*time.Millisecond) // let the broker settle
			}
		}
		row.summarize(nameEcowatt)
		fmt.Fprintf(s.e.stderr, "[broker %d/%d %s] ecowatt/mosquitto = %.2f\n", i+1, len(scens), sc.Name, row.Ratio)
		rep.Broker = append(rep.Broker, row)
	}
	return nil
}

// runSecurity records the envelope benchmarks scripts/bench.sh ran.
func (s *suite) runSecurity(_ context.Context, rep *report) error {
	sec, err := parseSecurity(s.secFile)
	if err != nil {
		return err
	}
	for _, c := range sec.Cases {
		fmt.Fprintf(s.e.stderr, "[security] %s: seal+open %.0f ns/op, bare HMAC %.0f ns/op, ratio %.2f\n",
			c.Case, c.SealOpenNs, c.BareHMACNs, c.Ratio)
	}
	rep.Security = sec
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitFOTAKey fetches the server's firmware-signing key, polling for up to
// --fota-wait while the FOTA API is not there; nil if it never comes.
func waitFOTAKey(ctx context.Context, e env, srv *server) []byte {
	deadline := time.Now().Add(srv.fotaWait)
	for {
		k, err := srv.fotaPublicKey(ctx)
		if err == nil && k != nil {
			return k
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(e.stderr, "== fota: no firmware key from the server (%v)\n", err)
			return nil
		}
		fmt.Fprintf(e.stderr, "== fota: waiting for the server's FOTA API (%v)\n", err)
		if !sleepCtx(ctx, 10*time.Second) {
			return nil
		}
	}
}
