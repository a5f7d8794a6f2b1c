package lease_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/redistest"
)

// runAsync starts lease.Run and returns a stop that cancels it and waits.
func runAsync(t *testing.T, l *lease.Lease, every time.Duration, work func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lease.Run(ctx, l, every, work) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRunFirstAttemptImmediate: with an interval of an hour, the first
// lease attempt and the first work still happen at once.
func TestRunFirstAttemptImmediate(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	l := newLease(t, rdb, prefix+"lease:run-now", "a", time.Second)
	var calls atomic.Int32
	runAsync(t, l, time.Hour, func(context.Context) error { calls.Add(1); return nil })
	waitUntil(t, "the first work", 2*time.Second, func() bool { return calls.Load() == 1 })
	if h, _ := l.Holder(context.Background()); h != l.Token() {
		t.Fatalf("holder %q, want this owner", h)
	}
}

// TestRunRepeatsAndSurvivesErrors: work runs every interval while the
// lease is held, a failing work does not end the tenure, and Run releases
// the lease when stopped.
func TestRunRepeatsAndSurvivesErrors(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	l := newLease(t, rdb, prefix+"lease:run-repeat", "a", time.Second)
	var calls atomic.Int32
	stop := runAsync(t, l, 20*time.Millisecond, func(context.Context) error {
		calls.Add(1)
		return errors.New("redis hiccup")
	})
	waitUntil(t, "five works", 3*time.Second, func() bool { return calls.Load() >= 5 })
	stop()
	if h, _ := l.Holder(context.Background()); h != "" {
		t.Fatalf("holder %q after Run returned, want free", h)
	}
}

// TestRunOneHolderAndTakeover: of two replicas only one works; when it
// stops, the other takes over within an interval.
func TestRunOneHolderAndTakeover(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	key := prefix + "lease:run-two"
	a := newLease(t, rdb, key, "a", time.Second)
	b := newLease(t, rdb, key, "b", time.Second)
	var aCalls, bCalls atomic.Int32
	stopA := runAsync(t, a, 20*time.Millisecond, func(context.Context) error { aCalls.Add(1); return nil })
	waitUntil(t, "a to work", 2*time.Second, func() bool { return aCalls.Load() > 0 })
	runAsync(t, b, 20*time.Millisecond, func(context.Context) error { bCalls.Add(1); return nil })
	time.Sleep(150 * time.Millisecond)
	if n := bCalls.Load(); n != 0 {
		t.Fatalf("b worked %d times while a held the lease", n)
	}
	stopA()
	waitUntil(t, "b to take over", 2*time.Second, func() bool { return bCalls.Load() > 0 })
}

// TestRunLongWorkLosesLease: a work that loops until its context ends is
// stopped when the lease is taken away, and Run tries again.
func TestRunLongWorkLosesLease(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	key := prefix + "lease:run-long"
	l := newLease(t, rdb, key, "a", 300*time.Millisecond)
	var starts, ends atomic.Int32
	runAsync(t, l, 50*time.Millisecond, func(held context.Context) error {
		starts.Add(1)
		<-held.Done()
		ends.Add(1)
		return nil
	})
	waitUntil(t, "the work to start", 2*time.Second, func() bool { return starts.Load() == 1 })
	ctx := context.Background()
	if err := rdb.Set(ctx, key, "intruder/1", 400*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the work to end", 2*time.Second, func() bool { return ends.Load() == 1 })
	if n := starts.Load(); n != 1 {
		t.Fatalf("work started %d times under one tenure or without the lease", n)
	}
	waitUntil(t, "the work to start again", 3*time.Second, func() bool { return starts.Load() == 2 })
}
