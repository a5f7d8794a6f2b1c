package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// jobsResult is the jobs part (issue 12): one paced config job over every
// online device, its wall time against the pacing bound (devices ÷
// max_per_minute) and the server CPU it cost.
type jobsResult struct {
	Devices   int            `json:"devices"`
	Online    int            `json:"online"`
	PerMinute int            `json:"max_per_minute"`
	JobID     string         `json:"job"`
	State     string         `json:"state"`
	Succeeded int            `json:"succeeded"`
	Counts    map[string]int `json:"counts"`
	WallSecs  float64        `json:"wall_secs"`  // the job's started_at → finished_at (the server's clock)
	BoundSecs float64        `json:"bound_secs"` // devices / max_per_minute, in seconds
	Ratio     float64        `json:"ratio"`      // WallSecs / BoundSecs
	CPUSecs   float64        `json:"server_cpu_s"`
}

// jobsSize is the quick or full size: devices and the job's pace.
func jobsSize(full bool) (devices, perMinute int) {
	if full {
		return 10_000, 6_000 // ≈ 100 s
	}
	return 1_000, 3_000 // ≈ 20 s
}

func (s *suite) runJobs(ctx context.Context, rep *report) error {
	n, perMin := jobsSize(s.full)
	n = s.size("jobs", n)
	res := &jobsResult{Devices: n, PerMinute: perMin}
	rep.Jobs = res
	log := s.e.stderr
	ids, err := s.srv.devices(0, n)
	if err != nil {
		return err
	}
	fl, err := s.bringOnline(ctx, "jobs", ids, 90*time.Second)
	if err != nil {
		return err
	}
	defer s.stopFleet("jobs", fl)
	res.Online = fl.f.Status().Online
	sleepCtx(ctx, 2*time.Second) // let the births' config pushes settle

	p0, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	// A sampling interval of this run's own, so that every device changes;
	// the upload interval is a multiple of each (topics.Config's rule).
	sampling := []int{2, 3, 5, 6, 10, 15}[s.e.now().Unix()%6]
	// The selector, not the ID list: 10,000 IDs are over the API's 64 KiB
	// body limit, and only this part's devices are online.
	spec := map[string]any{"selector": "online=true", "max_per_minute": perMin,
		"config": map[string]any{"sampling_interval": sampling, "upload_interval": 30}}
	var job struct {
		ID         string         `json:"id"`
		State      string         `json:"state"`
		Total      int            `json:"total"`
		Counts     map[string]int `json:"counts"`
		StartedAt  *time.Time     `json:"started_at"`
		FinishedAt *time.Time     `json:"finished_at"`
	}
	if _, err := s.srv.apiJSON(ctx, http.MethodPost, "/api/v1/jobs", spec, &job); err != nil {
		return err
	}
	res.JobID = job.ID
	if job.Total != n {
		fmt.Fprintf(log, "[jobs] warning: the job targets %d devices, not the %d started\n", job.Total, n)
	}
	bound := time.Duration(float64(n) / float64(perMin) * float64(time.Minute))
	res.BoundSecs = round(bound.Seconds(), 2)
	fmt.Fprintf(log, "[jobs] config job %s over %d devices at %d/min (bound %.0f s)\n", job.ID, n, perMin, bound.Seconds())
	for start := time.Now(); time.Since(start) < 3*bound+time.Minute && job.FinishedAt == nil; {
		if !sleepCtx(ctx, time.Second) {
			return ctx.Err()
		}
		if _, err := s.srv.api(ctx, http.MethodGet, "/api/v1/jobs/"+job.ID, "", nil, &job); err != nil {
			return err
		}
		fmt.Fprintf(log, "[jobs] %5.1fs %s %s\n", time.Since(start).Seconds(), job.State, jobCounts(job.Counts))
	}
	p1, err := procStat(s.srv.pid)
	if err != nil {
		return err
	}
	res.State, res.Counts, res.Succeeded = job.State, job.Counts, job.Counts["succeeded"]
	res.CPUSecs = round(p1.CPUSecs-p0.CPUSecs, 2)
	if job.StartedAt != nil && job.FinishedAt != nil {
		res.WallSecs = round(job.FinishedAt.Sub(*job.StartedAt).Seconds(), 2)
		res.Ratio = round(res.WallSecs/res.BoundSecs, 3)
	}
	for _, st := range []string{"skipped", "failed"} {
		if job.Counts[st] == 0 {
			continue
		}
		var page struct {
			Devices []struct{ Device, Reason string } `json:"devices"`
		}
		if _, err := s.srv.api(ctx, http.MethodGet, "/api/v1/jobs/"+job.ID+"/devices?state="+st+"&limit=3", "", nil, &page); err == nil {
			for _, d := range page.Devices {
				fmt.Fprintf(log, "[jobs] %s %s: %s\n", st, d.Device, d.Reason)
			}
		}
	}
	fmt.Fprintf(log, "[jobs] %s: %d of %d succeeded in %.1f s = %.2f× the pacing bound (server CPU %.1f s)\n",
		res.State, res.Succeeded, n, res.WallSecs, res.Ratio, res.CPUSecs)
	return nil
}

// jobCounts prints the non-zero counts.
func jobCounts(c map[string]int) string {
	var parts []string
	for _, st := range []string{"queued", "in_progress", "succeeded", "failed", "skipped", "abandoned", "not_run"} {
		if c[st] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, c[st]))
		}
	}
	return strings.Join(parts, ", ")
}

func jobsPacing(rep *report) targetRow {
	row := targetRow{Area: "jobs", Target: "config job over 10,000 online devices within 10% of its pacing bound",
		Measured: "—", Ratio: "—", Status: statusNotMeasured, Command: "—"}
	j := rep.Jobs
	if j == nil || j.JobID == "" {
		return row
	}
	row.Measured = fmt.Sprintf("%d of %d succeeded in %.1f s (%s) at %d/min, bound %.1f s; server CPU %.1f s",
		j.Succeeded, j.Devices, j.WallSecs, j.State, j.PerMinute, j.BoundSecs, j.CPUSecs)
	row.Ratio = fmt.Sprintf("%.2f× the bound", j.Ratio)
	row.Status = metIf(j.Succeeded == j.Devices && j.Ratio > 0 && j.Ratio <= 1.1) + sizeNote(j.Devices, 10_000)
	row.Command = rep.Command
	return row
}

func (j *jobsResult) markdown(b *strings.Builder) {
	b.WriteString("\n##### Jobs: one paced config job over every online device\n\n")
	b.WriteString("| devices | max/min | state | succeeded | wall (started → finished) | pacing bound | wall / bound | server CPU |\n")
	b.WriteString("|---:|---:|---|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(b, "| %s | %s | %s | %s | %.1f s | %.1f s | **%.2f×** | %.1f s |\n",
		thousands(float64(j.Devices)), thousands(float64(j.PerMinute)), j.State, thousands(float64(j.Succeeded)),
		j.WallSecs, j.BoundSecs, j.Ratio, j.CPUSecs)
}
