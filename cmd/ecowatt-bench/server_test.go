package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP ecowatt_telemetry_batches_total Telemetry batches stored.
# TYPE ecowatt_telemetry_batches_total counter
ecowatt_telemetry_batches_total 1234
ecowatt_telemetry_rejected_total{reason="mac"} 7
ecowatt_telemetry_samples_total 3.702e+03
`
	got, err := parseMetrics(strings.NewReader(text), metricBatches, metricSamples)
	if err != nil {
		t.Fatal(err)
	}
	if got[metricBatches] != 1234 || got[metricSamples] != 3702 {
		t.Errorf("got %v", got)
	}
	if _, err := parseMetrics(strings.NewReader(text), "ecowatt_missing_total"); err == nil {
		t.Error("a missing counter was not reported")
	}
}

func TestProcStatSelf(t *testing.T) {
	p, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.RSSKiB <= 0 || p.CPUSecs < 0 {
		t.Errorf("implausible %+v", p)
	}
}

func TestMonitorCount(t *testing.T) {
	m := &monitor{top: map[string]int64{}}
	for _, line := range []string{
		`+1700000000.123456 [0 127.0.0.1:5432] "EVALSHA" "abc" "1" "k"` + "\r\n",
		`+1700000000.123457 [0 lua] "HGET" "k" "f"` + "\r\n",
		`+1700000000.123458 [3 127.0.0.1:5432] "get" "x [y]"` + "\r\n",
		"garbage\r\n",
	} {
		m.count(line)
	}
	if m.top["evalsha"] != 1 || m.top["get"] != 1 || m.lua != 1 || len(m.top) != 2 {
		t.Errorf("top %v lua %d", m.top, m.lua)
	}
	a := monCount{at: time.Unix(0, 0), top: map[string]int64{"get": 10}}
	b := monCount{at: time.Unix(2, 0), top: map[string]int64{"get": 40, "set": 20}, lua: 30}
	k := perMsg("x", a, b, 10, 5, 0) // 50 commands less 2 s x 5/s over 10 messages
	if k.PerMsg != 4 || k.InLua != 3 || k.ByName["set"] != 2 {
		t.Errorf("perMsg = %+v", k)
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		q    float64
		want float64
	}{{0.5, 5}, {0.9, 9}, {0.99, 10}, {1, 10}, {0, 1}} {
		if got := percentile(xs, tc.q); got != tc.want {
			t.Errorf("p%.0f = %v, want %v", 100*tc.q, got, tc.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

// TestServerTargets renders filled server parts into targets and Markdown.
func TestServerTargets(t *testing.T) {
	rep := &report{Command: "make bench",
		Fleet: &fleetResult{Devices: 1000, Online: 1000, OnlineSecs: 2, ConnectRate: 500, RSSIdleKiB: 20000,
			RSSOnlineKiB: 60000, RSSEndKiB: 70000, RSSPerDeviceKiB: 50, WindowSecs: 30, MsgRate: 66, SampleRate: 200},
		Commands: &commandsResult{Devices: 200, Online: 200, MaxRateP99Under50: 100,
			Steps: []commandStep{{Rate: 100, Submitted: 300, Succeeded: 300, P99Ms: 20}, {Rate: 500, Submitted: 1500, Succeeded: 1500, P99Ms: 900}}},
		FOTA:  &fotaResult{Devices: 100, Succeeded: 100, WallSecs: 14, GoodputMBps: 7.5, RawMBps: 60, Fraction: 0.125, State: "completed"},
		Redis: &redisResult{Devices: 50, Kinds: []redisKind{{Kind: "telemetry", Messages: 50, PerMsg: 2, ByName: map[string]float64{"evalsha": 2}}}},
	}
	rep.Targets = targetRows(rep)
	status := map[string]string{}
	for _, r := range rep.Targets {
		status[r.Target] = r.Status
	}
	for target, want := range map[string]string{
		"10,000 devices online in ≤ 30 s":                                     statusMet,
		"≤ 16 KiB server RSS per connected idle device":                       statusNotMet,
		"command p99 ≤ 50 ms at 500 commands/s":                               statusNotMet,
		"1 MiB to 1,000 devices in ≤ 60 s, at ≥ 50% of raw broker throughput": statusNotMet,
	} {
		if !strings.HasPrefix(status[target], want) {
			t.Errorf("%s: status %q, want %q", target, status[target], want)
		}
	}
	md := rep.markdownLatest()
	for _, want := range []string{"##### Fleet", "**50.0 KiB**", "Highest offered rate with p99 < 50 ms and every command succeeded: **100/s**", "**12.5%**", "evalsha 2.00"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if row := rep.historyRow(); !strings.Contains(row, "| 50.0 | 900 | 12.5% |") {
		t.Errorf("history row %s", row)
	}
}
