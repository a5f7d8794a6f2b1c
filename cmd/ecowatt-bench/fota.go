package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// fotaResult is the fota part: one 1 MiB image rolled out to every device
// at once (no canary, one batch), next to the broker's raw throughput for
// 16 KiB QoS 1 messages measured in the same run.
type fotaResult struct {
	NotMeasured string  `json:"not_measured,omitempty"` // why, when it was not
	Devices     int     `json:"devices"`
	Online      int     `json:"online"`
	ImageBytes  int     `json:"image_bytes"`
	ChunkSize   int     `json:"chunk_size"`
	State       string  `json:"state"` // the rollout's at the end
	Succeeded   int     `json:"succeeded"`
	Failed      int     `json:"failed"`
	WallSecs    float64 `json:"wall_secs"`     // POST /api/v1/rollouts to every device done
	GoodputMBps float64 `json:"goodput_mb_s"`  // succeeded x image bytes / wall, 1 MB = 10^6 B
	Counts      any     `json:"counts"`        // the rollout's last counts
	CPUSecs     float64 `json:"server_cpu_s"`  // server utime+stime during the rollout
	RawMBps     float64 `json:"raw_mb_s"`      // mean of the raw runs' delivered MB/s
	Fraction    float64 `json:"goodput_share"` // GoodputMBps / RawMBps
	// Raw holds the 16 KiB QoS 1 runs, before and after the rollout.
	Raw []load.Result `json:"raw,omitempty"`
}

func fotaSize(full bool) (devices int, bound time.Duration, rawCount int) {
	if full {
		return 1000, 5 * time.Minute, 200
	}
	return 100, 2 * time.Minute, 60
}

// rawScenario is the raw 16 KiB QoS 1 throughput run on the bench broker.
func rawScenario(count int) scenario {
	return scenario{Name: "pairs-50x50-q1-16KiB", Mode: modePairs, Pubs: 50, Subs: 50, QoS: 1, Size: 16 << 10,
		Count: count, Duration: 60}
}

func (s *suite) runFOTA(ctx context.Context, rep *report) error {
	n, bound, rawCount := fotaSize(s.full)
	n = s.size("fota", n)
	res := &fotaResult{Devices: n, ImageBytes: 1 << 20}
	rep.FOTA = res
	log := s.e.stderr
	if s.srv.fotaKey == nil {
		res.NotMeasured = "the server has no FOTA API (GET /api/v1/firmware/key)"
		fmt.Fprintf(log, "[fota] not measured: %s\n", res.NotMeasured)
		return nil
	}
	ids, err := s.srv.devices(0, n)
	if err != nil {
		return err
	}
	raw := func(label string) {
		if s.bench == nil {
			return
		}
		cfg, err := rawScenario(rawCount).config(*s.bench)
		if err != nil {
			fmt.Fprintf(log, "[fota] raw: %v\n", err)
			return
		}
		cfg.Now, cfg.Inflight = s.e.now, 16
		cfg.Progress = progressTo(log, "[fota raw "+label+"]")
		r, err := load.Run(ctx, cfg)
		if err != nil {
			fmt.Fprintf(log, "[fota] raw %s: %v\n", label, err)
			return
		}
		fmt.Fprintf(log, "[fota raw %s] %s = %.1f MB/s\n", label, summary(r), r.RecvRate*float64(r.Size)/1e6)
		res.Raw = append(res.Raw, r)
	}
	raw("before")
	// A version of its own, newer than any earlier run's, so that a rerun
	// on the same store and state updates the devices again.
	fotaVersion := fmt.Sprintf("2.0.%d", s.e.now().Unix())

	img, err := fota.BuildTestImage(fotaVersion, res.ImageBytes, false, 1)
	if err != nil {
		return err
	}
	if err := s.uploadFirmware(ctx, fotaVersion, img, res); err != nil {
		return err
	}
	fl, err := s.bringOnline(ctx, "fota", ids, 60*time.Second)
	if err != nil {
		return err
	}
	defer s.stopFleet("fota", fl)
	res.Online = fl.f.Status().Online
	sleepCtx(ctx, time.Second)

	p0, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	zero, all := 0, 100.0
	spec := map[string]any{"version": fotaVersion, "devices": ids, "canary": &zero, "batch_size": n, "max_failure_percent": &all}
	var ro struct {
		ID         string         `json:"id"`
		State      string         `json:"state"`
		Counts     map[string]int `json:"counts"`
		CreatedAt  time.Time      `json:"created_at"`
		FinishedAt *time.Time     `json:"finished_at"`
	}
	start := time.Now()
	if _, err := s.srv.apiJSON(ctx, http.MethodPost, "/api/v1/rollouts", spec, &ro); err != nil {
		return err
	}
	fmt.Fprintf(log, "[fota] rollout %s of %s (%d B) to %d devices\n", ro.ID, fotaVersion, res.ImageBytes, n)
	for time.Since(start) < bound && ro.State == "running" {
		if !sleepCtx(ctx, time.Second) {
			return ctx.Err()
		}
		if _, err := s.srv.api(ctx, http.MethodGet, "/api/v1/rollouts/"+ro.ID, "", nil, &ro); err != nil {
			return err
		}
		fmt.Fprintf(log, "[fota] %5.1fs %s %v\n", time.Since(start).Seconds(), ro.State, ro.Counts)
	}
	wall := time.Since(start)
	if ro.FinishedAt != nil {
		wall = ro.FinishedAt.Sub(ro.CreatedAt) // the server's own account, without our polling step
	}
	p1, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	res.State, res.Counts = ro.State, ro.Counts
	res.Succeeded, res.Failed = ro.Counts["succeeded"], ro.Counts["failed"]
	res.WallSecs = round(wall.Seconds(), 2)
	res.CPUSecs = round(p1.CPUSecs-p0.CPUSecs, 2)
	if wall > 0 {
		res.GoodputMBps = round(float64(res.Succeeded)*float64(res.ImageBytes)/wall.Seconds()/1e6, 3)
	}
	s.stopFleet("fota", fl) // before the raw run after it; the deferred stop is then a no-op
	raw("after")
	var sum float64
	for _, r := range res.Raw {
		sum += r.RecvRate * float64(r.Size) / 1e6
	}
	if len(res.Raw) > 0 {
		res.RawMBps = round(sum/float64(len(res.Raw)), 2)
		res.Fraction = round(res.GoodputMBps/res.RawMBps, 3)
	}
	fmt.Fprintf(log, "[fota] %s: %d succeeded, %d failed in %.1fs = %.2f MB/s goodput (server CPU %.1f s); raw 16 KiB QoS 1 %.1f MB/s; share %.1f%%\n",
		res.State, res.Succeeded, res.Failed, res.WallSecs, res.GoodputMBps, res.CPUSecs, res.RawMBps, 100*res.Fraction)
	return nil
}

// uploadFirmware uploads img as version (multipart); an existing version
// (409, an earlier run on the same store) is used as it is.
func (s *suite) uploadFirmware(ctx context.Context, version string, img []byte, res *fotaResult) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if err := mw.WriteField("version", version); err != nil {
		return err
	}
	fw, err := mw.CreateFormFile("file", "fw-"+version+".bin")
	if err != nil {
		return err
	}
	if _, err := fw.Write(img); err != nil {
		return err
	}
	if err := mw.Close(); err != nil {
		return err
	}
	var doc struct {
		ChunkSize int `json:"chunk_size"`
	}
	code, err := s.srv.api(ctx, http.MethodPost, "/api/v1/firmware", mw.FormDataContentType(), body.Bytes(), &doc)
	if code == http.StatusConflict {
		_, err = s.srv.api(ctx, http.MethodGet, "/api/v1/firmware/"+version, "", nil, &doc)
	}
	if err != nil {
		return fmt.Errorf("fota: upload: %w", err)
	}
	res.ChunkSize = doc.ChunkSize
	if doc.ChunkSize == 0 {
		return errors.New("fota: upload: no chunk size in the firmware document")
	}
	return nil
}
