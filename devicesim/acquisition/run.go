package acquisition

import (
	"context"
	"slices"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// Run samples and uploads until ctx is done, then returns ctx.Err().
//
// Slots fall on multiples of the sampling interval and batches close on
// multiples of the upload interval (Unix time); a batch holds the slots in
// [previous boundary, boundary). At a boundary Run first builds the batch
// and uploads the backlog in order, stopping at the first failure; then it
// applies a config given to Apply; then it samples the boundary's slot.
// Samples carry their slot time, not the (later) time of the read.
func (s *Scheduler) Run(ctx context.Context) error {
	now := s.clk.Now()
	nextSample := align(now, s.cfg.SamplingInterval)
	nextUpload := align(now, s.cfg.UploadInterval)
	for {
		due := nextSample
		if nextUpload.Before(due) {
			due = nextUpload
		}
		if kicked, err := s.wait(ctx, due); err != nil {
			return err
		} else if kicked {
			s.flush(ctx)
			continue
		}
		if !nextUpload.After(due) {
			s.closeBatch()
			s.flush(ctx)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if s.applyPending() {
				nextSample = due
			}
			nextUpload = due.Add(s.cfg.UploadInterval)
		}
		if !nextSample.After(due) {
			s.sample(ctx, nextSample)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			nextSample = nextSample.Add(s.cfg.SamplingInterval)
			// Slots whose time passed while sampling are lost, not read late.
			if late := s.clk.Now().Sub(nextSample); late > 0 {
				n := uint64(late/s.cfg.SamplingInterval) + 1
				nextSample = nextSample.Add(time.Duration(n) * s.cfg.SamplingInterval)
				s.dropped += n
				s.count(func(st *Stats) { st.Slots += n; st.Overruns += n; st.Dropped += n })
			}
		}
	}
}

// wait sleeps until due and reports whether Reconnected cut it short.
// Reconnected cancels the sleep's context itself, synchronously, so a fake
// clock driving the scheduler sees the sleeper leave at once.
func (s *Scheduler) wait(ctx context.Context, due time.Time) (kicked bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.kickMu.Lock()
	if s.kicked {
		s.kicked = false
		s.kickMu.Unlock()
		return true, nil
	}
	s.wake = cancel
	s.kickMu.Unlock()

	err = s.clk.Sleep(wctx, due.Sub(s.clk.Now()))

	s.kickMu.Lock()
	s.wake = nil
	kicked, s.kicked = s.kicked, false
	s.kickMu.Unlock()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if kicked {
		return true, nil
	}
	return false, err
}

// align returns the first multiple of d at or after t.
func align(t time.Time, d time.Duration) time.Time {
	a := t.Truncate(d)
	if a.Before(t) {
		a = a.Add(d)
	}
	return a
}

// applyPending switches to a config given to Apply and reports whether
// there was one.
func (s *Scheduler) applyPending() bool {
	s.mu.Lock()
	next := s.next
	s.next = nil
	s.mu.Unlock()
	if next == nil {
		return false
	}
	s.setConfig(*next)
	if s.onApplied != nil {
		s.onApplied(next.clone())
	}
	return true
}

// sample reads the configured registers for the slot at t, one request
// per run of consecutive addresses, and buffers the sample.
func (s *Scheduler) sample(ctx context.Context, t time.Time) {
	smp := telemetry.Sample{Time: t.UnixMilli(), Values: make([]uint16, len(s.codes))}
	sorted := slices.Clone(s.codes)
	slices.Sort(sorted)
	var reads uint64
	var failed [telemetry.NumRegisters]uint64
	for start := 0; start < len(sorted); {
		end := start + 1
		for end < len(sorted) && sorted[end] == sorted[end-1]+1 {
			end++
		}
		first, n := sorted[start], end-start
		values, err := s.reader.ReadRegisters(ctx, uint16(first), uint16(n))
		if ctx.Err() != nil {
			return // shutting down: the slot is not recorded
		}
		for i, code := range s.codes {
			if code < first || int(code) >= int(first)+n {
				continue
			}
			if err != nil {
				smp.Missing |= 1 << i
				failed[code]++
			} else {
				smp.Values[i] = values[code-first]
				reads++
			}
		}
		start = end
	}
	s.push(smp)
	s.count(func(st *Stats) {
		st.Slots++
		st.Samples++
		st.Reads += reads
		for c, n := range failed {
			st.Failures[c] += n
		}
	})
}

// held returns the number of sample slots in the buffer.
func (s *Scheduler) held() int {
	n := len(s.pending)
	for _, b := range s.backlog {
		n += len(b.Samples)
	}
	return n
}

// push appends smp, dropping the oldest buffered slot if the buffer is full.
func (s *Scheduler) push(smp telemetry.Sample) {
	if s.held() >= s.size {
		s.dropOldest()
	}
	s.pending = append(s.pending, smp)
	s.updateBuffered()
}

// dropOldest removes the oldest slot and counts it in the batch that will
// now report it: the oldest backlog batch, or the pending one. A backlog
// batch left empty passes its count on to the next batch and is removed.
func (s *Scheduler) dropOldest() {
	s.count(func(st *Stats) { st.Dropped++ })
	if len(s.backlog) == 0 {
		s.pending = s.pending[1:]
		s.dropped++
		return
	}
	b := &s.backlog[0]
	b.Samples = b.Samples[1:]
	b.Dropped++
	if len(b.Samples) > 0 {
		return
	}
	if len(s.backlog) > 1 {
		s.backlog[1].Dropped += b.Dropped
	} else {
		s.dropped += b.Dropped
	}
	s.backlog = s.backlog[1:]
}

// closeBatch turns the pending samples into a batch on the backlog.
func (s *Scheduler) closeBatch() {
	if len(s.pending) == 0 && s.dropped == 0 {
		return
	}
	b := telemetry.Batch{
		Seq:       s.seq,
		Interval:  s.cfg.SamplingInterval,
		Registers: slices.Clone(s.codes),
		Samples:   s.pending,
		Dropped:   s.dropped,
		Adapter:   counters(s.reader.Stats()),
	}
	s.seq++
	s.pending, s.dropped = nil, 0
	s.backlog = append(s.backlog, b)
	s.count(func(st *Stats) { st.Batches++ })
	s.updateBuffered()
}

// flush uploads the backlog in order until one upload fails.
func (s *Scheduler) flush(ctx context.Context) {
	for len(s.backlog) > 0 {
		if err := s.upload(ctx, s.backlog[0]); err != nil {
			s.count(func(st *Stats) { st.UploadErrors++ })
			break
		}
		s.backlog[0] = telemetry.Batch{}
		s.backlog = s.backlog[1:]
		s.count(func(st *Stats) { st.Uploaded++ })
	}
	s.updateBuffered()
}

func (s *Scheduler) updateBuffered() {
	held, backlog := s.held(), len(s.backlog)
	s.count(func(st *Stats) { st.Buffered, st.Backlog = held, backlog })
}

// counters converts the adapter's counters to their wire form.
func counters(m modbus.Stats) telemetry.Counters {
	return telemetry.Counters{
		Requests: m.Requests, Retries: m.Retries, CRCErrors: m.CRCErrors, FrameErrors: m.FrameErrors,
		Exceptions: m.Exceptions, Timeouts: m.Timeouts, Failures: m.Failures,
	}
}
