package clock

import (
	"context"
	"sync"
	"time"
)

// Fake is a manual clock for tests. Time moves only through Advance (or Set), which
// first sets the new time and then fires every due timer in deadline order
// (ties in creation order): channel timers by a non-blocking send,
// AfterFunc timers by calling f in Advance's goroutine, sleepers by waking
// them. Goroutines woken by Advance therefore all see the same Now.
//
// BlockUntil lets a test wait until the goroutines under test are parked in
// Sleep before it advances time, which makes timed loops deterministic.
// A Fake is safe for concurrent use.
type Fake struct {
	mu     sync.Mutex
	cond   *sync.Cond   // signalled when sleepers change; uses mu
	now    time.Time    // guarded by mu
	seq    uint64       // guarded by mu; creation order of timers
	timers []*fakeTimer // guarded by mu; pending timers, unordered
}

var _ Clock = (*Fake)(nil)

// NewFake returns a Fake clock set to start.
func NewFake(start time.Time) *Fake {
	f := &Fake{now: start}
	f.cond = sync.NewCond(&f.mu)
	return f
}

type fakeTimer struct {
	clock    *Fake
	deadline time.Time
	seq      uint64
	ch       chan time.Time  // channel timers and sleepers
	fn       func()          // AfterFunc timers
	sleeper  context.Context // non-nil for a goroutine blocked in Sleep
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	f := t.clock
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.remove(t)
}

// remove deletes t from the pending list; f.mu must be held.
func (f *Fake) remove(t *fakeTimer) bool {
	for i, p := range f.timers {
		if p == t {
			f.timers = append(f.timers[:i], f.timers[i+1:]...)
			if t.sleeper != nil {
				f.cond.Broadcast()
			}
			return true
		}
	}
	return false
}

// add registers a timer due after d; f.mu must be held.
func (f *Fake) add(d time.Duration, t *fakeTimer) *fakeTimer {
	t.clock = f
	t.deadline = f.now.Add(d)
	f.seq++
	t.seq = f.seq
	f.timers = append(f.timers, t)
	if t.sleeper != nil {
		f.cond.Broadcast()
	}
	return t
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer firing once Advance passes now+d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.clock = f
		t.ch <- f.now
		return t
	}
	return f.add(d, t)
}

// AfterFunc calls fn once Advance passes now+d, in Advance's goroutine. With
// d <= 0 it calls fn in a new goroutine at once, like time.AfterFunc.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{fn: fn}
	if d <= 0 {
		t.clock = f
		go fn()
		return t
	}
	return f.add(d, t)
}

// Sleep blocks until Advance passes now+d or ctx is done. It returns
// ctx.Err() if ctx is done when it wakes, whichever came first.
func (f *Fake) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	f.mu.Lock()
	t := f.add(d, &fakeTimer{ch: make(chan time.Time, 1), sleeper: ctx})
	f.mu.Unlock()
	select {
	case <-t.ch:
		// A context cancelled by a timer due at the same instant wins, so
		// the outcome does not depend on select's random choice.
		return ctx.Err()
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	}
}

// Advance moves the clock forward by d and fires the timers that are due.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.setLocked(f.now.Add(d))
}

// Set sets the clock to t and fires the timers that are due. Set to an
// earlier time fires nothing: the pending timers keep their deadlines.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	f.setLocked(t)
}

// setLocked sets now to t and fires the due timers; it is called with
// f.mu held and releases it.
func (f *Fake) setLocked(now time.Time) {
	f.now = now
	for {
		t := f.earliest()
		if t == nil || t.deadline.After(f.now) {
			break
		}
		f.remove(t)
		if t.ch != nil {
			select {
			case t.ch <- t.deadline:
			default:
			}
		}
		if t.fn != nil {
			f.mu.Unlock()
			t.fn()
			f.mu.Lock()
		}
	}
	f.mu.Unlock()
}

// earliest returns the next pending timer or nil; f.mu must be held.
func (f *Fake) earliest() *fakeTimer {
	var best *fakeTimer
	for _, t := range f.timers {
		if best == nil || t.deadline.Before(best.deadline) || t.deadline.Equal(best.deadline) && t.seq < best.seq {
			best = t
		}
	}
	return best
}

// Next returns the deadline of the earliest pending timer.
func (f *Fake) Next() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.earliest(); t != nil {
		return t.deadline, true
	}
	return time.Time{}, false
}

// AdvanceToNext advances to the earliest pending timer's deadline and fires
// it (and any others due then). It reports false when no timer is pending.
func (f *Fake) AdvanceToNext() bool {
	next, ok := f.Next()
	if !ok {
		return false
	}
	f.Advance(next.Sub(f.Now()))
	return true
}

// Sleepers returns how many goroutines are blocked in Sleep with a live
// context.
func (f *Fake) Sleepers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sleepers()
}

func (f *Fake) sleepers() int {
	n := 0
	for _, t := range f.timers {
		if t.sleeper != nil && t.sleeper.Err() == nil {
			n++
		}
	}
	return n
}

// BlockUntil waits until at least n goroutines are blocked in Sleep with a
// live context, or ctx is done; it reports whether the count was reached.
func (f *Fake) BlockUntil(ctx context.Context, n int) bool {
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.cond.Broadcast()
	})
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.sleepers() < n {
		if ctx.Err() != nil {
			return false
		}
		f.cond.Wait()
	}
	return true
}

// Drive calls fn in a new goroutine and, until fn returns, advances the
// clock to the next pending timer whenever a goroutine is blocked in Sleep.
// It suits code whose only waits are Sleep calls on f (or contexts that
// timers on f cancel): a simulated hour then passes in milliseconds.
func (f *Fake) Drive(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-done
		cancel()
	}()
	for f.BlockUntil(ctx, 1) {
		if !f.AdvanceToNext() {
			break
		}
	}
	<-done
}
