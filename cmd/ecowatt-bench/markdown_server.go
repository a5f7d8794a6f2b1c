package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// markdownServer is the latest run's fleet, commands, fota and redis
// sections: `ecowatt serve` on a real redis-server, loaded by devicesim
// devices in the bench process.
func (r *report) markdownServer() string {
	var b strings.Builder
	if r.Server != nil {
		fmt.Fprintf(&b, "\n#### Server: `ecowatt serve` (own process, real redis-server), %s devices provisioned; "+
			"the devices run in the bench process (open-files limit %d)\n", thousands(float64(r.Server.Devices)), r.Server.FileLimit)
	}
	if f := r.Fleet; f != nil {
		b.WriteString("\n##### Fleet: connect, birth, telemetry every 15 s (5 s sampling)\n\n")
		b.WriteString("| devices | online | time to all online | connects/s | server CPU per connect | RSS idle → online → end | RSS per device | ingest window | msgs/s | samples/s | server CPU per 1,000 msgs |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(&b, "| %s | %s | %.1f s | %.0f | %.2f ms | %s → %s → %s KiB | **%.1f KiB** | %.0f s | %.1f | %.1f | %.3f s |\n",
			thousands(float64(f.Devices)), thousands(float64(f.Online)), f.OnlineSecs, f.ConnectRate, f.CPUPerConnectMs,
			thousands(float64(f.RSSIdleKiB)), thousands(float64(f.RSSOnlineKiB)), thousands(float64(f.RSSEndKiB)),
			f.RSSPerDeviceKiB, f.WindowSecs, f.MsgRate, f.SampleRate, f.CPUPer1000)
	}
	if c := r.Commands; c != nil {
		fmt.Fprintf(&b, "\n##### Commands: `ping` through `POST /api/v1/devices/{id}/commands`, %d devices online, round robin\n\n", c.Online)
		b.WriteString("Latency is the command's own `created_at` → `finished_at` (queued → succeeded), in ms " +
			"(the server stamps milliseconds); queued → sent is `created_at` → `sent_at`.\n\n")
		b.WriteString("| offered/s | for | accepted/s | succeeded | other | p50 | p90 | p99 | max | queued→sent p99 | POST p99 | server CPU | bench CPU |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, st := range c.Steps {
			fmt.Fprintf(&b, "| %.0f | %.0f s | %.0f | %d | %d | %.0f | %.0f | **%.0f** | %.0f | %.0f | %.0f | %.2f cores | %.2f cores |\n",
				st.Rate, st.Secs, st.SubmitRate, st.Succeeded, st.Other+st.SubmitErr, st.P50Ms, st.P90Ms, st.P99Ms, st.MaxMs,
				st.SentP99Ms, st.SubmitP99, st.ServerCores, st.BenchCores)
		}
		fmt.Fprintf(&b, "\nHighest offered rate with p99 < 50 ms and every command succeeded: **%s**.\n", rateOrNone(c.MaxRateP99Under50))
	}
	if f := r.FOTA; f != nil {
		b.WriteString("\n##### FOTA: one 1 MiB image to every device at once (no canary, one batch)\n\n")
		if f.NotMeasured != "" {
			fmt.Fprintf(&b, "Not measured: %s.\n", f.NotMeasured)
		} else {
			b.WriteString("| devices | chunk | state | succeeded | failed | wall | goodput | server CPU | raw 16 KiB QoS 1 | goodput / raw |\n")
			b.WriteString("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
			fmt.Fprintf(&b, "| %d | %d B | %s | %d | %d | %.1f s | %.2f MB/s | %.1f s | %.1f MB/s | **%.1f%%** |\n",
				f.Devices, f.ChunkSize, f.State, f.Succeeded, f.Failed, f.WallSecs, f.GoodputMBps, f.CPUSecs, f.RawMBps, 100*f.Fraction)
			var raws []string
			for _, x := range f.Raw {
				raws = append(raws, fmt.Sprintf("%s msg/s (%.1f MB/s, loss %d)", thousands(x.RecvRate), x.RecvRate*float64(x.Size)/1e6, x.Lost))
			}
			fmt.Fprintf(&b, "\nRaw runs (%s on the bench broker, before and after the rollout): %s. 1 MB = 10^6 B.\n",
				rawScenario(0).Name, strings.Join(raws, "; "))
		}
	}
	if rd := r.Redis; rd != nil {
		fmt.Fprintf(&b, "\n##### Redis commands per device message (MONITOR; %d devices per fleet)\n\n", rd.Devices)
		fmt.Fprintf(&b, "Background (sweeps, leases) measured in quiet windows and subtracted: %.1f commands/s without devices, "+
			"%.1f with the quiet fleet online. Top-level commands are at most one round trip each (pipelined ones share one); "+
			"calls inside Lua scripts cost no round trip.\n\n", rd.BackgroundPerSec, rd.BackgroundOnlinePerS)
		b.WriteString("| kind | messages | top-level commands / msg | in scripts / msg | by command (top-level, / msg) |\n|---|---:|---:|---:|---|\n")
		for _, k := range rd.Kinds {
			note := k.topNames()
			if k.Note != "" {
				note += " — " + k.Note
			}
			fmt.Fprintf(&b, "| %s | %.0f | **%.1f** | %.1f | %s |\n", k.Kind, k.Messages, k.PerMsg, k.InLua, note)
		}
	}
	if j := r.Jobs; j != nil && j.JobID != "" {
		j.markdown(&b)
	}
	if len(r.Errors) > 0 {
		b.WriteString("\n##### Parts that failed\n\n")
		names := make([]string, 0, len(r.Errors))
		for n := range r.Errors {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintf(&b, "- %s: %s\n", n, r.Errors[n])
		}
	}
	return b.String()
}

// compareServer prints the change in the server parts' figures. Only the
// FOTA share is a same-run ratio and can flag a regression; the others are
// absolute and printed for information.
func compareServer(w io.Writer, old, cur *report) (regressions int) {
	if o, c := old.Fleet, cur.Fleet; o != nil && c != nil && o.Devices == c.Devices {
		mark := ""
		if memoryRegressed(old, cur) {
			mark = "  <- REGRESSION (memory)"
			regressions++
		}
		fmt.Fprintf(w, "  fleet %s devices: online %.1f -> %.1f s, RSS %.1f -> %.1f KiB/device (%s), %.3f -> %.3f CPU s per 1,000 msgs (%s)%s\n",
			thousands(float64(c.Devices)), o.OnlineSecs, c.OnlineSecs, o.RSSPerDeviceKiB, c.RSSPerDeviceKiB,
			pct(o.RSSPerDeviceKiB, c.RSSPerDeviceKiB), o.CPUPer1000, c.CPUPer1000, pct(o.CPUPer1000, c.CPUPer1000), mark)
	}
	if o, c := old.Commands, cur.Commands; o != nil && c != nil {
		prev := map[float64]commandStep{}
		for _, st := range o.Steps {
			prev[st.Rate] = st
		}
		for _, st := range c.Steps {
			if p, ok := prev[st.Rate]; ok {
				fmt.Fprintf(w, "  commands %4.0f/s: p99 %.0f -> %.0f ms (%s)\n", st.Rate, p.P99Ms, st.P99Ms, pct(p.P99Ms, st.P99Ms))
			}
		}
	}
	if o, c := old.FOTA, cur.FOTA; o != nil && c != nil && o.Fraction > 0 && c.Fraction > 0 {
		mark := ""
		if c.Fraction < o.Fraction*(1-regressionBand) {
			mark = "  <- REGRESSION"
			regressions++
		}
		fmt.Fprintf(w, "  fota goodput/raw %.1f%% -> %.1f%% (%s)%s\n", 100*o.Fraction, 100*c.Fraction, pct(o.Fraction, c.Fraction), mark)
	}
	return regressions
}

// memoryRegressed reports whether the server's RSS per idle device rose by
// more than the noise band against the recorded run of the same size
// (issue 14). Unlike the other figures it fails `make bench`: memory is
// not subject to the machine's CPU noise.
func memoryRegressed(old, cur *report) bool {
	o, c := old.Fleet, cur.Fleet
	return o != nil && c != nil && o.Devices == c.Devices && o.RSSPerDeviceKiB > 0 &&
		c.RSSPerDeviceKiB > o.RSSPerDeviceKiB*(1+regressionBand)
}
