package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
)

func TestParseSecurity(t *testing.T) {
	sec, err := parseSecurity(filepath.Join("testdata", "security.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := []securityCase{
		// Round 1: medians 5831 / 1184; round 2: 6000 / 1000.
		{Case: "plain", SealOpenNs: 5915.5, BareHMACNs: 1128.5, Rounds: 2, Ratio: round((5831.0/1184+6)/2, 2),
			RatioMin: round(5831.0/1184, 2), RatioMax: 6, SealOpenAllocs: 22, BareHMACAllocs: 6},
		{Case: "encrypted", SealOpenNs: 11436, BareHMACNs: 2000, Rounds: 1, Ratio: 5.72, // no -N suffix
			RatioMin: 5.72, RatioMax: 5.72, SealOpenAllocs: 30, BareHMACAllocs: 6},
	}
	if len(sec.Cases) != len(want) {
		t.Fatalf("cases %+v", sec.Cases)
	}
	for i, c := range sec.Cases {
		if c != want[i] {
			t.Errorf("case %d = %+v, want %+v", i, c, want[i])
		}
	}
	if sec.NsOp["SealOpen/binary"] != 2912 {
		t.Errorf("binary: %v", sec.NsOp)
	}
	empty := filepath.Join(t.TempDir(), "empty.txt")
	if err := os.WriteFile(empty, []byte("PASS\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := parseSecurity(empty); err == nil {
		t.Error("no benchmark lines: want an error")
	}
}

// testReport is a report with one broker scenario of two paired repeats.
func testReport(date time.Time, ecoRates, mosqRates []float64, ecoLost int64) *report {
	row := brokerRow{Scenario: scenario{Name: "fanin-100x1-q1", Mode: modeFanIn, Pubs: 100, Subs: 1, QoS: 1, Size: 256, Count: 200},
		Reference: nameMosquitto, Runs: map[string][]load.Result{}}
	for i := range ecoRates {
		row.Runs[nameEcowatt] = append(row.Runs[nameEcowatt], load.Result{RecvRate: ecoRates[i], Expected: 1000, Lost: ecoLost})
		row.Runs[nameMosquitto] = append(row.Runs[nameMosquitto], load.Result{RecvRate: mosqRates[i], Expected: 1000})
	}
	row.summarize(nameEcowatt)
	rep := &report{Date: date, Command: "make bench", Commit: "abc123", Repeat: len(ecoRates),
		Broker: []brokerRow{row}, Machine: machine{CPUs: 2, Go: "go1.26", OS: "linux/amd64"},
		Security: &security{Cases: []securityCase{{Case: "plain", SealOpenNs: 4000, BareHMACNs: 1000, Ratio: 4}}}}
	rep.Targets = targetRows(rep)
	return rep
}

func TestSummarize(t *testing.T) {
	rep := testReport(time.Now(), []float64{100, 300, 200}, []float64{100, 100, 400}, 0)
	row := rep.Broker[0]
	// Paired ratios 1, 3, 0.5: the median is 1, whatever the medians of the rates.
	if row.Ratio != 1 {
		t.Errorf("ratio %v, want 1", row.Ratio)
	}
	if e := row.Stats[nameEcowatt]; e.RecvRate != 200 || e.Expected != 3000 || e.Lost != 0 {
		t.Errorf("ecowatt stats %+v", e)
	}
	if rep.Targets[0].Status != statusMet || rep.Targets[1].Status != statusMet {
		t.Errorf("targets %+v", rep.Targets[:2])
	}
	for _, tr := range rep.Targets[2:6] {
		if tr.Status != statusNotMeasured {
			t.Errorf("%s: %s, want %s", tr.Target, tr.Status, statusNotMeasured)
		}
	}
}

func TestUpdateMarkdown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	hand := "# Benchmarks\n\nHand-written method.\n\n<!-- generated:targets -->\nold\n<!-- /generated:targets -->\n\nMore prose.\n"
	if err := os.WriteFile(path, []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	first := testReport(time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC), []float64{100}, []float64{100}, 0)
	second := testReport(time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC), []float64{80}, []float64{100}, 5)
	for _, r := range []*report{first, second} {
		if err := updateMarkdown(path, r); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, want := range []string{"Hand-written method.", "More prose.", "| fanin-100x1-q1 |", "**0.80×**",
		"| 2026-01-02 10:00 | abc123 |", "| 2026-01-01 10:00 | abc123 |", "ecowatt lost 5 of 1000", "**not met**"} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q:\n%s", want, doc)
		}
	}
	if strings.Contains(doc, "\nold\n") || strings.Count(doc, "<!-- generated:latest -->") != 1 {
		t.Errorf("generated sections not replaced exactly once:\n%s", doc)
	}
	if strings.Index(doc, "| 2026-01-02") > strings.Index(doc, "| 2026-01-01") {
		t.Error("history is not newest first")
	}
}

func TestCompare(t *testing.T) {
	old := testReport(time.Now(), []float64{100}, []float64{100}, 0)
	for _, tc := range []struct {
		name  string
		cur   *report
		regr  int
		marks string
	}{
		{"same", testReport(time.Now(), []float64{95}, []float64{100}, 0), 0, "No regression"},
		{"slower", testReport(time.Now(), []float64{70}, []float64{100}, 0), 1, "REGRESSION (ratio)"},
		{"lossy", testReport(time.Now(), []float64{100}, []float64{100}, 3), 1, "REGRESSION (ecowatt loss)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if n := compareReports(&out, old, tc.cur); n != tc.regr {
				t.Errorf("regressions %d, want %d:\n%s", n, tc.regr, out.String())
			}
			if !strings.Contains(out.String(), tc.marks) {
				t.Errorf("output lacks %q:\n%s", tc.marks, out.String())
			}
		})
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

// The memory check (issue 14): RSS per device up by more than the band
// against a run of the same size is a regression; within it, or at another
// size, it is not.
func TestCompareMemory(t *testing.T) {
	withFleet := func(devices int, kib float64) *report {
		r := testReport(time.Now(), []float64{100}, []float64{100}, 0)
		r.Fleet = &fleetResult{Devices: devices, Online: devices, RSSPerDeviceKiB: kib}
		return r
	}
	old := withFleet(1000, 40)
	for _, tc := range []struct {
		name string
		cur  *report
		regr bool
	}{
		{"same", withFleet(1000, 41), false},
		{"at the band", withFleet(1000, 48), false},
		{"above the band", withFleet(1000, 48.5), true},
		{"other size", withFleet(10000, 80), false},
		{"lighter", withFleet(1000, 20), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			n := compareReports(&out, old, tc.cur)
			if got := memoryRegressed(old, tc.cur); got != tc.regr {
				t.Errorf("memoryRegressed = %v, want %v", got, tc.regr)
			}
			if marked := strings.Contains(out.String(), "REGRESSION (memory)"); marked != tc.regr || (n > 0) != tc.regr {
				t.Errorf("regressions %d, marked %v, want %v:\n%s", n, marked, tc.regr, out.String())
			}
		})
	}
}

// TestRecordComparesWithThePreviousRun: with --compare naming the recorded
// run that --latest replaces, the memory check compares against that
// earlier run, not against the run it has just written, and the new run
// is recorded afterwards.
func TestRecordComparesWithThePreviousRun(t *testing.T) {
	withFleet := func(kib float64) *report {
		r := testReport(time.Now(), []float64{100}, []float64{100}, 0)
		r.Fleet = &fleetResult{Devices: 1000, Online: 1000, RSSPerDeviceKiB: kib}
		return r
	}
	latest := filepath.Join(t.TempDir(), "latest.json")
	if err := writeJSON(latest, withFleet(40), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	e := env{stdout: &out, stderr: &errOut, now: time.Now}
	err := record(e, withFleet(60), "", latest, "", latest)
	if err == nil || !strings.Contains(err.Error(), "memory regression") || !strings.Contains(err.Error(), "40.0 -> 60.0") {
		t.Fatalf("record of a 50%% heavier run against the recorded one: %v\n%s", err, out.String())
	}
	got, err := readReport(latest)
	if err != nil || got.Fleet == nil || got.Fleet.RSSPerDeviceKiB != 60 {
		t.Fatalf("recorded run after the comparison: %+v, %v", got, err)
	}
	// The next run compares with the one just recorded.
	if err := record(e, withFleet(61), "", latest, "", latest); err != nil {
		t.Fatalf("record of a run within the band: %v", err)
	}
}
