package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// commandsResult is the commands part: ping commands through the API at
// increasing rates to online devices, latency queued -> succeeded from
// each command's own timestamps (created_at -> finished_at).
type commandsResult struct {
	Devices int           `json:"devices"`
	Online  int           `json:"online"`
	Steps   []commandStep `json:"steps"`
	// MaxRateP99Under50 is the highest offered rate whose p99 was under
	// 50 ms with every command succeeded; 0 if none.
	MaxRateP99Under50 float64 `json:"max_rate_p99_under_50ms"`
}

// commandStep is one rate.
type commandStep struct {
	Rate       float64 `json:"rate"`        // offered commands/s
	Secs       float64 `json:"secs"`        // offered for this long
	Submitted  int     `json:"submitted"`   // accepted by the API (201)
	SubmitRate float64 `json:"submit_rate"` // achieved
	SubmitErr  int     `json:"submit_errors"`
	Succeeded  int     `json:"succeeded"`
	Other      int     `json:"other"` // failed, timed out, still open at the bound
	P50Ms      float64 `json:"p50_ms"`
	P90Ms      float64 `json:"p90_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	SentP50Ms  float64 `json:"queued_to_sent_p50_ms"` // created_at -> sent_at
	SentP99Ms  float64 `json:"queued_to_sent_p99_ms"`
	SubmitP99  float64 `json:"submit_http_p99_ms"` // the POST's own round trip
	// CPU used while the commands were offered, in cores (CPU s / wall s):
	// the server, and this process (devices + HTTP client).
	ServerCores float64 `json:"server_cores"`
	BenchCores  float64 `json:"bench_cores"`
}

// commandDoc is the part of GET /api/v1/commands/{cid} the bench reads.
type commandDoc struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	CreatedAt  time.Time  `json:"created_at"`
	SentAt     *time.Time `json:"sent_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

func commandSizes(full bool) (devices int, rates []float64, secs float64) {
	if full {
		return 1000, []float64{50, 100, 200, 500, 1000}, 5
	}
	return 200, []float64{50, 100, 200, 500}, 3
}

func (s *suite) runCommands(ctx context.Context, rep *report) error {
	n, rates, secs := commandSizes(s.full)
	n = s.size("commands", n)
	ids, err := s.srv.devices(0, n)
	if err != nil {
		return err
	}
	res := &commandsResult{Devices: n}
	rep.Commands = res
	log := s.e.stderr
	fl, err := s.bringOnline(ctx, "commands", ids, 60*time.Second)
	if err != nil {
		return err
	}
	defer s.stopFleet("commands", fl)
	res.Online = fl.f.Status().Online
	sleepCtx(ctx, time.Second)
	for _, rate := range rates {
		st, err := s.commandStep(ctx, ids, rate, secs)
		if err != nil {
			return err
		}
		fmt.Fprintf(log, "[commands] %4.0f/s: %d submitted (%.0f/s), %d succeeded, %d other; queued->succeeded p50 %.1f p99 %.1f max %.1f ms; queued->sent p99 %.1f ms; CPU server %.2f, bench %.2f cores\n",
			rate, st.Submitted, st.SubmitRate, st.Succeeded, st.Other, st.P50Ms, st.P99Ms, st.MaxMs, st.SentP99Ms, st.ServerCores, st.BenchCores)
		res.Steps = append(res.Steps, st)
		if st.Other == 0 && st.SubmitErr == 0 && st.Succeeded > 0 && st.P99Ms < 50 {
			res.MaxRateP99Under50 = max(res.MaxRateP99Under50, rate)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// commandStep offers rate commands/s for secs seconds, round robin over
// ids, then reads every command back (after the step, so that the reads
// do not load the server while it is measured).
func (s *suite) commandStep(ctx context.Context, ids []string, rate, secs float64) (commandStep, error) {
	st := commandStep{Rate: rate, Secs: secs}
	total := int(rate * secs)
	type sub struct {
		cid string
		rtt time.Duration
	}
	jobs := make(chan int, total)
	var (
		mu      sync.Mutex // guards subs, errs
		subs    []sub
		errs    int
		lastErr error
		wg      sync.WaitGroup
	)
	for range 64 {
		wg.Go(func() {
			for i := range jobs {
				var c commandDoc
				t0 := time.Now()
				_, err := s.srv.apiJSON(ctx, http.MethodPost, "/api/v1/devices/"+ids[i%len(ids)]+"/commands",
					map[string]string{"action": "ping", "ttl": "60s"}, &c)
				mu.Lock()
				if err != nil {
					errs++
					lastErr = err
				} else {
					subs = append(subs, sub{c.ID, time.Since(t0)})
				}
				mu.Unlock()
			}
		})
	}
	sp0, _ := procStat(s.srv.pid)
	bp0, _ := procStat(os.Getpid())
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 && !sleepCtx(ctx, d) {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	sp1, _ := procStat(s.srv.pid)
	bp1, _ := procStat(os.Getpid())
	st.ServerCores = round((sp1.CPUSecs-sp0.CPUSecs)/elapsed, 2)
	st.BenchCores = round((bp1.CPUSecs-bp0.CPUSecs)/elapsed, 2)
	st.Submitted, st.SubmitErr = len(subs), errs
	st.SubmitRate = round(float64(len(subs))/elapsed, 1)
	if errs > 0 {
		fmt.Fprintf(s.e.stderr, "[commands] %d submit errors, last: %v\n", errs, lastErr)
	}
	var rtts []float64
	for _, x := range subs {
		rtts = append(rtts, ms(x.rtt))
	}
	st.SubmitP99 = round(percentile(rtts, 0.99), 2)

	// Read back until every command has ended, at most 30 s.
	docs := make(map[string]commandDoc, len(subs))
	deadline := time.Now().Add(30 * time.Second)
	pending := make([]string, 0, len(subs))
	for _, x := range subs {
		pending = append(pending, x.cid)
	}
	for len(pending) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleepCtx(ctx, 500*time.Millisecond)
		got := s.readCommands(ctx, pending)
		var still []string
		for _, cid := range pending {
			d, ok := got[cid]
			if ok {
				docs[cid] = d
			}
			if !ok || d.FinishedAt == nil {
				still = append(still, cid)
			}
		}
		pending = still
	}
	var lat, sent []float64
	for _, d := range docs {
		if d.State != "succeeded" || d.FinishedAt == nil {
			st.Other++
			continue
		}
		st.Succeeded++
		lat = append(lat, ms(d.FinishedAt.Sub(d.CreatedAt)))
		if d.SentAt != nil {
			sent = append(sent, ms(d.SentAt.Sub(d.CreatedAt)))
		}
	}
	st.Other += len(subs) - len(docs)
	st.P50Ms, st.P90Ms = round(percentile(lat, 0.5), 2), round(percentile(lat, 0.9), 2)
	st.P99Ms, st.MaxMs = round(percentile(lat, 0.99), 2), round(percentile(lat, 1), 2)
	st.SentP50Ms, st.SentP99Ms = round(percentile(sent, 0.5), 2), round(percentile(sent, 0.99), 2)
	return st, nil
}

// readCommands GETs the commands with 8 workers; failures are left out.
func (s *suite) readCommands(ctx context.Context, cids []string) map[string]commandDoc {
	out := make(map[string]commandDoc, len(cids))
	var mu sync.Mutex // guards out
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for cid := range jobs {
				var d commandDoc
				if _, err := s.srv.api(ctx, http.MethodGet, "/api/v1/commands/"+cid, "", nil, &d); err == nil {
					mu.Lock()
					out[cid] = d
					mu.Unlock()
				}
			}
		})
	}
	for _, cid := range cids {
		jobs <- cid
	}
	close(jobs)
	wg.Wait()
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank q-quantile of xs (q in [0,1]); 0 when empty.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
