package main

import (
	"fmt"
	"math"
	"strings"
)

// Target statuses.
const (
	statusMet         = "met"
	statusNotMet      = "not met"
	statusNotMeasured = "not yet measured"
)

// targetRow is one target of docs/BENCHMARKS.md with what the run measured.
type targetRow struct {
	Area     string `json:"area"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Ratio    string `json:"ratio"`
	Status   string `json:"status"`
	Command  string `json:"command"`
}

// targetRows lists every target of docs/BENCHMARKS.md, measured or not.
func targetRows(rep *report) []targetRow {
	rows := []targetRow{brokerRate(rep), brokerLoss(rep)}
	rows = append(rows,
		fleetOnline(rep), fleetRSS(rep), commandP99(rep), fotaRollout(rep),
		sealOpen(rep), redisTrips(rep), jobsPacing(rep),
	)
	return rows
}

// sizeNote says at what size a quick run measured a target set for a
// bigger one.
func sizeNote(got, want int) string {
	if got >= want {
		return ""
	}
	return fmt.Sprintf(" (at %s devices, the quick size; make bench-full runs %s)", thousands(float64(got)), thousands(float64(want)))
}

func fleetOnline(rep *report) targetRow {
	row := targetRow{Area: "fleet", Target: "10,000 devices online in ≤ 30 s", Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	f := rep.Fleet
	if f == nil || f.OnlineSecs == 0 {
		return row
	}
	// The target is a rate: 10,000 in 30 s is 333 connects/s.
	const need = 10_000.0 / 30
	row.Measured = fmt.Sprintf("%s of %s online in %.1f s (%.0f/s; server CPU %.2f ms per connect)",
		thousands(float64(f.Online)), thousands(float64(f.Devices)), f.OnlineSecs, f.ConnectRate, f.CPUPerConnectMs)
	row.Ratio = fmt.Sprintf("%.2f× the 333/s needed", f.ConnectRate/need)
	row.Status = metIf(f.Online == f.Devices && f.ConnectRate >= need && (f.Devices < 10_000 || f.OnlineSecs <= 30)) + sizeNote(f.Devices, 10_000)
	row.Command = rep.Command
	return row
}

func fleetRSS(rep *report) targetRow {
	row := targetRow{Area: "fleet", Target: "≤ 16 KiB server RSS per connected idle device", Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	f := rep.Fleet
	if f == nil || f.Online == 0 {
		return row
	}
	row.Measured = fmt.Sprintf("%.1f KiB/device (VmRSS %s KiB idle → %s KiB online → %s KiB after %.0f s of telemetry)",
		f.RSSPerDeviceKiB, thousands(float64(f.RSSIdleKiB)), thousands(float64(f.RSSOnlineKiB)), thousands(float64(f.RSSEndKiB)), f.WindowSecs)
	row.Ratio = fmt.Sprintf("%.2f× the limit", f.RSSPerDeviceKiB/16)
	row.Status = metIf(f.RSSPerDeviceKiB <= 16) + sizeNote(f.Devices, 10_000)
	row.Command = rep.Command
	return row
}

func commandP99(rep *report) targetRow {
	row := targetRow{Area: "commands", Target: "command p99 ≤ 50 ms at 500 commands/s", Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	c := rep.Commands
	if c == nil {
		return row
	}
	for _, st := range c.Steps {
		if st.Rate != 500 {
			continue
		}
		row.Measured = fmt.Sprintf("p50 %.1f ms, p99 %.1f ms at %.0f/s offered (%.0f/s accepted, %d of %d succeeded); "+
			"highest rate with p99 < 50 ms: %s", st.P50Ms, st.P99Ms, st.Rate, st.SubmitRate, st.Succeeded, st.Submitted, rateOrNone(c.MaxRateP99Under50))
		row.Ratio = fmt.Sprintf("p99 %.2f× the limit", st.P99Ms/50)
		row.Status = metIf(st.P99Ms <= 50 && st.Other == 0 && st.SubmitErr == 0) + sizeNote(c.Devices, 1000)
		row.Command = rep.Command
	}
	return row
}

func rateOrNone(r float64) string {
	if r == 0 {
		return "none"
	}
	return fmt.Sprintf("%.0f/s", r)
}

func fotaRollout(rep *report) targetRow {
	row := targetRow{Area: "fota", Target: "1 MiB to 1,000 devices in ≤ 60 s, at ≥ 50% of raw broker throughput", Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	f := rep.FOTA
	switch {
	case f == nil:
		return row
	case f.NotMeasured != "":
		row.Measured = f.NotMeasured
		return row
	}
	row.Measured = fmt.Sprintf("%d of %d devices updated in %.1f s (%s): goodput %.2f MB/s; raw 16 KiB QoS 1 %.1f MB/s",
		f.Succeeded, f.Devices, f.WallSecs, f.State, f.GoodputMBps, f.RawMBps)
	row.Ratio = "—"
	if f.RawMBps > 0 {
		row.Ratio = fmt.Sprintf("goodput %.1f%% of raw", 100*f.Fraction)
	}
	row.Status = metIf(f.Succeeded == f.Devices && f.WallSecs <= 60 && f.Fraction >= 0.5) + sizeNote(f.Devices, 1000)
	row.Command = rep.Command
	return row
}

func redisTrips(rep *report) targetRow {
	row := targetRow{Area: "security", Target: "Redis round trips per device message (recorded, no target)", Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	r := rep.Redis
	if r == nil || len(r.Kinds) == 0 {
		return row
	}
	var m []string
	for _, k := range r.Kinds {
		m = append(m, fmt.Sprintf("%s: %.1f commands (+%.1f inside scripts)", k.Kind, k.PerMsg, k.InLua))
	}
	row.Measured = strings.Join(m, "; ")
	row.Status = "recorded"
	row.Command = rep.Command
	return row
}

func brokerRate(rep *report) targetRow {
	row := targetRow{Area: "broker", Target: "embedded broker with auth/ACL ≥ 1.0× Mosquitto msgs/s",
		Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	var parts []string
	lo, logSum, n := math.Inf(1), 0.0, 0
	for _, b := range rep.Broker {
		if b.Scenario.Rate > 0 || b.Ratio <= 0 {
			continue // paced runs measure latency; their rate is set
		}
		parts = append(parts, fmt.Sprintf("%s %.2f×", b.Scenario.Name, b.Ratio))
		lo = math.Min(lo, b.Ratio)
		logSum += math.Log(b.Ratio)
		n++
	}
	if n == 0 {
		return row
	}
	row.Measured = strings.Join(parts, ", ")
	row.Ratio = fmt.Sprintf("min %.2f×, geo-mean %.2f×", lo, math.Exp(logSum/float64(n)))
	row.Status = metIf(lo >= 1.0)
	row.Command = rep.Command
	return row
}

func brokerLoss(rep *report) targetRow {
	row := targetRow{Area: "broker", Target: "no QoS 1 message lost to a connected subscriber",
		Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	lost, exp := map[string]int64{}, map[string]int64{}
	for _, b := range rep.Broker {
		if b.Scenario.QoS != 1 {
			continue
		}
		for name, st := range b.Stats {
			lost[name] += st.Lost
			exp[name] += st.Expected
		}
	}
	if exp[nameEcowatt] == 0 {
		return row
	}
	row.Measured = fmt.Sprintf("ecowatt lost %d of %d", lost[nameEcowatt], exp[nameEcowatt])
	if exp[nameMosquitto] > 0 {
		row.Measured += fmt.Sprintf("; mosquitto lost %d of %d", lost[nameMosquitto], exp[nameMosquitto])
	}
	row.Status = metIf(lost[nameEcowatt] == 0)
	row.Command = rep.Command
	return row
}

func sealOpen(rep *report) targetRow {
	row := targetRow{Area: "security", Target: "seal+open ≤ 3× (plain) / ≤ 4× (encrypted) a bare HMAC of the same payload",
		Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	if rep.Security == nil || len(rep.Security.Cases) == 0 {
		return row
	}
	var m, r []string
	ok := true
	for _, c := range rep.Security.Cases {
		m = append(m, fmt.Sprintf("%s: %.0f ns, %.0f allocs vs %.0f ns, %.0f allocs", c.Case, c.SealOpenNs, c.SealOpenAllocs, c.BareHMACNs, c.BareHMACAllocs))
		r = append(r, fmt.Sprintf("%s %.2f×", c.Case, c.Ratio))
		ok = ok && c.Ratio <= securityTarget(c.Case)
	}
	row.Measured, row.Ratio = strings.Join(m, "; "), strings.Join(r, ", ")
	row.Status = metIf(ok)
	row.Command = "go test -run XXX -bench 'SealOpen|BareHMAC' ./topics/envelope/ (from " + rep.Command + ")"
	return row
}

func metIf(ok bool) string {
	if ok {
		return statusMet
	}
	return statusNotMet
}
