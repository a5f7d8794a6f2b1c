package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
)

// report is one suite run, as recorded in results/bench-*.json and
// docs/bench/latest.json.
type report struct {
	Date     time.Time         `json:"date"`
	Command  string            `json:"command"`
	Commit   string            `json:"commit,omitempty"`
	Full     bool              `json:"full"`
	Repeat   int               `json:"repeat"`
	Machine  machine           `json:"machine"`
	Broker   []brokerRow       `json:"broker,omitempty"`
	Security *security         `json:"security,omitempty"`
	Server   *serverInfo       `json:"server,omitempty"` // what the fleet, commands, fota and redis parts loaded
	Fleet    *fleetResult      `json:"fleet,omitempty"`
	Commands *commandsResult   `json:"commands,omitempty"`
	FOTA     *fotaResult       `json:"fota,omitempty"`
	Redis    *redisResult      `json:"redis,omitempty"`
	Jobs     *jobsResult       `json:"jobs,omitempty"`
	Errors   map[string]string `json:"errors,omitempty"` // parts that failed, by name
	Targets  []targetRow       `json:"targets"`
}

// machine is where a run happened.
type machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	Go        string `json:"go"`
	OS        string `json:"os"`
	Mosquitto string `json:"mosquitto,omitempty"`
}

func probeMachine(mosquitto string) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, Mosquitto: mosquitto}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.Atoi(f[1]); err == nil {
					m.MemoryMiB = kb / 1024
				}
			}
		}
	}
	return m
}

func (m machine) String() string {
	s := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		s += " (" + m.CPUModel + ")"
	}
	if m.MemoryMiB > 0 {
		s += fmt.Sprintf(", %.1f GiB RAM", float64(m.MemoryMiB)/1024)
	}
	s += ", " + m.Go + " " + m.OS
	if m.Mosquitto != "" {
		s += ", " + m.Mosquitto
	}
	return s
}

// brokerRow is one broker scenario on every target.
type brokerRow struct {
	Scenario  scenario                 `json:"scenario"`
	Reference string                   `json:"reference"`
	Runs      map[string][]load.Result `json:"runs"`  // every repeat, by target
	Stats     map[string]brokerStat    `json:"stats"` // by target
	// Ratio is the median over repeats of subject/reference delivered msgs/s,
	// each repeat pairing the two runs made back to back.
	Ratio float64 `json:"ratio"`
}

// brokerStat summarises one target's repeats of a scenario.
type brokerStat struct {
	RecvRate float64      `json:"recv_per_s"` // median delivered msgs/s
	SentRate float64      `json:"sent_per_s"` // median
	Expected int64        `json:"expected"`   // over all repeats
	Lost     int64        `json:"lost"`       // over all repeats
	LossPct  float64      `json:"loss_pct"`
	Latency  load.Latency `json:"latency"` // of the run with the median rate
}

// summarize fills Stats and Ratio from Runs.
func (row *brokerRow) summarize(subject string) {
	row.Stats = map[string]brokerStat{}
	for name, runs := range row.Runs {
		var st brokerStat
		for _, r := range runs {
			st.Expected += r.Expected
			st.Lost += r.Lost
		}
		if st.Expected > 0 {
			st.LossPct = round(100*float64(st.Lost)/float64(st.Expected), 3)
		}
		mid := medianRun(runs)
		st.RecvRate, st.Latency = mid.RecvRate, mid.Latency
		st.SentRate = median(mapSlice(runs, func(r load.Result) float64 { return r.SentRate }))
		row.Stats[name] = st
	}
	subj, ref := row.Runs[subject], row.Runs[row.Reference]
	var ratios []float64
	for i := range min(len(subj), len(ref)) {
		if ref[i].RecvRate > 0 {
			ratios = append(ratios, subj[i].RecvRate/ref[i].RecvRate)
		}
	}
	row.Ratio = round(median(ratios), 3)
}

// medianRun is the run with the median delivered rate (the lower middle).
func medianRun(runs []load.Result) load.Result {
	if len(runs) == 0 {
		return load.Result{}
	}
	s := slices.Clone(runs)
	slices.SortFunc(s, func(a, b load.Result) int { return cmpFloat(a.RecvRate, b.RecvRate) })
	return s[(len(s)-1)/2]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mapSlice[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// security is the seal/open cost next to a bare HMAC of the same bytes.
type security struct {
	NsOp  map[string]float64 `json:"ns_per_op"` // by benchmark name, e.g. "SealOpen/plain"
	Cases []securityCase     `json:"cases"`
}

// securityCase is one payload kind.
type securityCase struct {
	Case       string  `json:"case"` // plain, encrypted
	SealOpenNs float64 `json:"seal_open_ns"`
	BareHMACNs float64 `json:"bare_hmac_ns"`
	Rounds     int     `json:"rounds"` // go test runs that measured both
	Ratio      float64 `json:"ratio"`  // median over rounds of seal+open / bare HMAC
	RatioMin   float64 `json:"ratio_min,omitempty"`
	RatioMax   float64 `json:"ratio_max,omitempty"`
	// Allocations per op (go test -benchmem / b.ReportAllocs), medians.
	SealOpenAllocs float64 `json:"seal_open_allocs"`
	BareHMACAllocs float64 `json:"bare_hmac_allocs"`
}

// securityTarget is issue 14's bound on seal+open / bare HMAC per case.
func securityTarget(c string) float64 {
	if c == "encrypted" {
		return 4
	}
	return 3
}

// allocsField matches the allocations column of a benchmark line.
var allocsField = regexp.MustCompile(`\s([\d.]+) allocs/op`)

// benchLine matches a `go test -bench` result line.
var benchLine = regexp.MustCompile(`^Benchmark(\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

// parseSecurity reads go test -bench output for BenchmarkSealOpen and
// BenchmarkBareHMAC. The output may hold several rounds (go test
// invocations, each starting with its "goos:" header): ns/op is the median
// over all samples, and each case's ratio the median of the per-round
// ratios, so that the two sides of a ratio are measured minutes apart at
// most once per round rather than across the whole run.
func parseSecurity(path string) (*security, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("security results: %w", err)
	}
	defer f.Close()
	samples, allocs := map[string][]float64{}, map[string][]float64{}
	var rounds []map[string][]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "goos:") || rounds == nil {
			rounds = append(rounds, map[string][]float64{})
		}
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ns, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("security results %s: %q: %w", path, sc.Text(), err)
		}
		samples[m[1]] = append(samples[m[1]], ns)
		if am := allocsField.FindStringSubmatch(sc.Text()); am != nil {
			if n, err := strconv.ParseFloat(am[1], 64); err == nil {
				allocs[m[1]] = append(allocs[m[1]], n)
			}
		}
		rounds[len(rounds)-1][m[1]] = append(rounds[len(rounds)-1][m[1]], ns)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("security results %s: %w", path, err)
	}
	sec := &security{NsOp: map[string]float64{}}
	for name, ns := range samples {
		sec.NsOp[name] = round(median(ns), 1)
	}
	for _, c := range []string{"plain", "encrypted"} {
		so, bare := sec.NsOp["SealOpen/"+c], sec.NsOp["BareHMAC/"+c]
		if so == 0 || bare == 0 {
			continue
		}
		var ratios []float64
		for _, r := range rounds {
			if a, b := median(r["SealOpen/"+c]), median(r["BareHMAC/"+c]); a > 0 && b > 0 {
				ratios = append(ratios, a/b)
			}
		}
		sc := securityCase{Case: c, SealOpenNs: so, BareHMACNs: bare, Rounds: len(ratios), Ratio: round(median(ratios), 2),
			SealOpenAllocs: median(allocs["SealOpen/"+c]), BareHMACAllocs: median(allocs["BareHMAC/"+c])}
		if len(ratios) > 0 {
			sc.RatioMin, sc.RatioMax = round(slices.Min(ratios), 2), round(slices.Max(ratios), 2)
		}
		sec.Cases = append(sec.Cases, sc)
	}
	if len(sec.Cases) == 0 {
		return nil, fmt.Errorf("security results %s: no SealOpen/BareHMAC pairs found", path)
	}
	return sec, nil
}

var errNoReport = errors.New("no recorded run")

// readReport reads a results JSON; a missing file wraps errNoReport.
func readReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, errNoReport)
	}
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read results %s: %w", path, err)
	}
	return &r, nil
}
