package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/devicesim"
)

// Server counters the fleet part reads from /metrics.
const (
	metricBatches = "ecowatt_telemetry_batches_total"
	metricSamples = "ecowatt_telemetry_samples_total"
)

// fleetResult is the fleet part: N devices connect, send a birth and
// upload telemetry every 15 s (5 s sampling) to `ecowatt serve` on Redis.
type fleetResult struct {
	Devices     int     `json:"devices"`
	Online      int     `json:"online"`        // online when the bring-up ended
	OnlineSecs  float64 `json:"online_secs"`   // first connect attempt to the last device online
	ConnectRate float64 `json:"connect_per_s"` // Online / OnlineSecs
	// Server RSS (VmRSS): before the fleet, once all are online, and at the
	// end of the ingest window.
	RSSIdleKiB   int64 `json:"rss_idle_kib"`
	RSSOnlineKiB int64 `json:"rss_online_kib"`
	RSSEndKiB    int64 `json:"rss_end_kib"`
	// RSSPerDeviceKiB is (max(RSSOnline, RSSEnd) - RSSIdle) / Online.
	RSSPerDeviceKiB float64 `json:"rss_per_device_kib"`
	WindowSecs      float64 `json:"window_secs"`
	Batches         float64 `json:"batches"` // telemetry messages stored in the window
	Samples         float64 `json:"samples"`
	MsgRate         float64 `json:"msgs_per_s"`
	SampleRate      float64 `json:"samples_per_s"`
	CPUSecs         float64 `json:"cpu_secs"`          // server utime+stime in the window
	CPUPer1000      float64 `json:"cpu_secs_per_1000"` // CPUSecs per 1,000 messages
	CPUBringUpSecs  float64 `json:"cpu_bringup_secs"`  // server CPU while the fleet came online
	CPUPerConnectMs float64 `json:"cpu_ms_per_connect"`
	ConnectFailures int64   `json:"connect_failures"`
	PublishErrors   int64   `json:"publish_errors"`
	FileLimit       uint64  `json:"file_limit"` // the bench process's open-files limit
}

// fleetSize is the fleet part's size: devices, bring-up bound, ingest window.
func fleetSize(full bool) (n int, bound, window time.Duration) {
	if full {
		return 10_000, 120 * time.Second, 45 * time.Second
	}
	return 1_000, 60 * time.Second, 30 * time.Second
}

func (s *suite) runFleet(ctx context.Context, rep *report) error {
	n, bound, window := fleetSize(s.full)
	n = s.size("fleet", n)
	ids, err := s.srv.devices(0, n)
	if err != nil {
		return err
	}
	res := &fleetResult{Devices: n, FileLimit: fileLimit()}
	rep.Fleet = res
	idle, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	res.RSSIdleKiB = idle.RSSKiB
	log := s.e.stderr
	start := time.Now()
	fl, err := s.srv.startFleet(ctx, deviceLog(log), ids, fleetOptions{progress: func(st devicesim.FleetStatus) {
		fmt.Fprintf(log, "[fleet] %5.1fs online %d/%d, connect failures %d\n",
			time.Since(start).Seconds(), st.Online, st.Total, st.ConnectFailures)
	}})
	if err != nil {
		return err
	}
	defer func() {
		if err := fl.stop(); err != nil {
			fmt.Fprintf(log, "[fleet] %v\n", err)
		}
	}()
	took, all := fl.waitOnline(ctx, n, bound)
	up, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	st := fl.f.Status()
	res.Online, res.OnlineSecs = st.Online, round(took.Seconds(), 2)
	res.ConnectRate = round(float64(st.Online)/took.Seconds(), 1)
	res.CPUBringUpSecs = round(up.CPUSecs-idle.CPUSecs, 2)
	if st.Online > 0 {
		res.CPUPerConnectMs = round(1000*res.CPUBringUpSecs/float64(st.Online), 3)
	}
	fmt.Fprintf(log, "[fleet] %d/%d online in %.1fs (%s)\n", st.Online, n, took.Seconds(), map[bool]string{true: "all", false: "bound reached"}[all])
	sleepCtx(ctx, 2*time.Second) // births processed, connections settled
	online, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	res.RSSOnlineKiB = online.RSSKiB

	// Sustained ingest: the counters over a bounded window.
	m0, err := s.srv.metrics(ctx, metricBatches, metricSamples)
	if err != nil {
		return err
	}
	p0, t0 := online, time.Now()
	for time.Since(t0) < window {
		if !sleepCtx(ctx, 5*time.Second) {
			return ctx.Err()
		}
		fmt.Fprintf(log, "[fleet] ingest window %.0f/%.0fs, online %d\n", time.Since(t0).Seconds(), window.Seconds(), fl.f.Status().Online)
	}
	m1, err := s.srv.metrics(ctx, metricBatches, metricSamples)
	if err != nil {
		return err
	}
	p1, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	res.WindowSecs = round(secs, 2)
	res.Batches = m1[metricBatches] - m0[metricBatches]
	res.Samples = m1[metricSamples] - m0[metricSamples]
	res.MsgRate, res.SampleRate = round(res.Batches/secs, 1), round(res.Samples/secs, 1)
	res.CPUSecs = round(p1.CPUSecs-p0.CPUSecs, 2)
	if res.Batches > 0 {
		res.CPUPer1000 = round(1000*res.CPUSecs/res.Batches, 3)
	}
	res.RSSEndKiB = p1.RSSKiB
	if res.Online > 0 {
		res.RSSPerDeviceKiB = round(float64(max(res.RSSOnlineKiB, res.RSSEndKiB)-res.RSSIdleKiB)/float64(res.Online), 2)
	}
	st = fl.f.Status()
	res.ConnectFailures, res.PublishErrors = st.ConnectFailures, st.PublishErrors
	fmt.Fprintf(log, "[fleet] RSS idle %d KiB, online %d KiB, end %d KiB: %.1f KiB/device; ingest %.1f msg/s, %.1f samples/s; "+
		"server CPU %.2fs = %.3fs per 1,000 msgs\n", res.RSSIdleKiB, res.RSSOnlineKiB, res.RSSEndKiB, res.RSSPerDeviceKiB,
		res.MsgRate, res.SampleRate, res.CPUSecs, res.CPUPer1000)
	return nil
}
