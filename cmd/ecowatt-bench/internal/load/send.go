package load

import (
	"context"
	"math"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// send runs every publisher until it has issued Count messages or
// Duration has passed, and waits for their publishes to complete. It
// returns when the last one completed and whether Duration cut it short.
func (r *run) send(ctx context.Context, start time.Time) (end time.Time, timedOut bool) {
	cfg := &r.cfg
	deadline := start.Add(cfg.Duration)
	// Publishes still unfinished at the deadline get this long to complete.
	grace := min(max(cfg.Duration/4, 5*time.Second), 30*time.Second)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex // guards cut
		cut bool
	)
	for i, p := range cfg.Publishers {
		wg.Go(func() {
			if !r.publish(ctx, i, p.Topic, start, deadline, grace) {
				mu.Lock()
				cut = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return cfg.Now(), cut
}

// publish is publisher i's loop; it reports whether it issued all Count
// messages.
func (r *run) publish(ctx context.Context, i int, topic string, start, deadline time.Time, grace time.Duration) bool {
	cfg := &r.cfg
	c := r.pubs[i]
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	// Spread paced publishers evenly over one interval.
	offset := interval * time.Duration(i) / time.Duration(len(cfg.Publishers))
	window := make([]paho.Token, 0, cfg.Inflight)
	settle := func(tok paho.Token, until time.Time) {
		if err := wait(ctx, tok, max(time.Until(until), time.Millisecond)); err != nil {
			r.pubErrs.Add(1)
		}
	}
	complete := true
	for seq := 0; seq < cfg.Count; seq++ {
		if ctx.Err() == nil && !c.IsConnected() {
			// The connection is gone for good (no auto-reconnect): the rest
			// of the schedule fails at once, as paho's Publish would with
			// ErrNotConnected. Counting it by the schedule, not the clock,
			// keeps the result independent of how long paho held the
			// publish in flight when the connection died (its hand-off to
			// the dead connection waits up to 30 s): lost messages stay
			// owed to the subscribers, so the loss is reported.
			n, all := remaining(seq, cfg.Count, offset, interval, cfg.Duration)
			r.sent[i].Add(n)
			r.pubErrs.Add(n)
			complete = all
			break
		}
		if interval > 0 {
			next := start.Add(offset + time.Duration(seq)*interval)
			if d := time.Until(next); d > 0 && !sleep(ctx, min(d, time.Until(deadline))) {
				complete = false
				break
			}
		}
		now := cfg.Now()
		if !now.Before(deadline) || ctx.Err() != nil {
			complete = false
			break
		}
		if len(window) == cfg.Inflight {
			settle(window[0], deadline.Add(grace))
			window = window[1:]
		}
		p := encode(header{run: cfg.RunID, pub: uint32(i), seq: uint32(seq), sent: now.UnixNano()}, cfg.Size)
		window = append(window, c.Publish(topic, cfg.QoS, false, p))
		r.sent[i].Add(1)
	}
	for _, tok := range window {
		settle(tok, deadline.Add(grace))
	}
	return complete
}

// remaining is how many of the messages seq..count-1 a publisher's
// schedule issues within the send phase (slot offset+k*interval before
// duration; every one when unpaced), and whether that is all of them.
func remaining(seq, count int, offset, interval, duration time.Duration) (int64, bool) {
	limit := count
	if interval > 0 {
		slots := 0 // k with offset+k*interval < duration
		if duration > offset {
			slots = int((duration - offset + interval - 1) / interval)
		}
		limit = min(count, slots)
	}
	return int64(max(limit-seq, 0)), limit == count
}

// sleep sleeps for d unless ctx ends first; it reports whether it slept.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// drain waits until every subscriber has what it is owed, nothing new has
// arrived for Drain, maxDrain has passed, or ctx ends.
func (r *run) drain(ctx context.Context) {
	expected := r.expected()
	hard := time.Now().Add(maxDrain)
	last, idleSince := int64(-1), time.Now()
	for {
		got := r.received()
		if got >= expected || time.Now().After(hard) || ctx.Err() != nil {
			return
		}
		if got != last {
			last, idleSince = got, time.Now()
		} else if time.Since(idleSince) >= r.cfg.Drain {
			return
		}
		sleep(ctx, 5*time.Millisecond)
	}
}

// expected is how many deliveries the subscribers are owed so far.
func (r *run) expected() int64 {
	var n int64
	for _, s := range r.cfg.Subscribers {
		for _, p := range s.From {
			n += r.sent[p].Load()
		}
	}
	return n
}

func (r *run) received() int64 {
	var n int64
	for _, in := range r.inboxes {
		n += in.got.Load()
	}
	return n
}

func (r *run) sentTotal() int64 {
	var n int64
	for i := range r.sent {
		n += r.sent[i].Load()
	}
	return n
}

// startProgress reports phase progress every ProgressEvery until the
// returned stop is called; stop waits for the reporter, then reports the
// phase's end.
func (r *run) startProgress(start time.Time, phase string) (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	report := func(ph string) {
		r.cfg.Progress(Progress{Phase: ph, Elapsed: r.cfg.Now().Sub(start), Sent: r.sentTotal(), Received: r.received()})
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				report(phase)
			case <-done:
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		report(phase + " done")
	}
}

// result computes the Result once sending and draining are over.
func (r *run) result(start, sendEnd time.Time) Result {
	cfg := &r.cfg
	res := Result{
		Publishers: len(cfg.Publishers), Subscribers: len(cfg.Subscribers),
		QoS: cfg.QoS, Size: cfg.Size, Rate: cfg.Rate, Count: cfg.Count,
		Sent: r.sentTotal(), PubErrors: r.pubErrs.Load(), ConnLost: r.connLost.Load(),
	}
	sent := make([]int64, len(r.sent))
	for i := range r.sent {
		sent[i] = r.sent[i].Load()
	}
	var lat []int64
	var lastRcv int64
	for _, in := range r.inboxes {
		exp, lost := in.missing(sent)
		res.Expected += exp
		res.Lost += lost
		in.mu.Lock()
		res.Duplicates += in.dups
		res.Strays += in.strays
		lat = append(lat, in.lat...)
		lastRcv = max(lastRcv, in.lastRcv)
		in.mu.Unlock()
	}
	res.Received = res.Expected - res.Lost
	if res.Expected > 0 {
		res.LossPct = round(100*float64(res.Lost)/float64(res.Expected), 3)
	}
	if d := sendEnd.Sub(start).Seconds(); d > 0 {
		res.SendSecs, res.SentRate = round(d, 3), round(float64(res.Sent)/d, 0)
	}
	if d := time.Unix(0, lastRcv).Sub(start).Seconds(); lastRcv > 0 && d > 0 {
		res.RecvSecs, res.RecvRate = round(d, 3), round(float64(res.Received)/d, 0)
	}
	res.Latency = percentiles(lat)
	return res
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}
