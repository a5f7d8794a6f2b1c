package clock

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

var epoch = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func TestFakeTimers(t *testing.T) {
	f := NewFake(epoch)
	var order []string
	var mu sync.Mutex
	note := func(s string) func() {
		return func() { mu.Lock(); order = append(order, s); mu.Unlock() }
	}
	f.AfterFunc(3*time.Second, note("c"))
	f.AfterFunc(time.Second, note("a"))
	f.AfterFunc(time.Second, note("b"))
	stopped := f.AfterFunc(2*time.Second, note("never"))
	tm := f.NewTimer(2 * time.Second)

	t.Run("stop", func(t *testing.T) {
		if !stopped.Stop() || stopped.Stop() {
			t.Fatal("Stop should report true once, then false")
		}
	})
	t.Run("nothing before due", func(t *testing.T) {
		f.Advance(999 * time.Millisecond)
		if len(order) != 0 {
			t.Fatalf("fired early: %v", order)
		}
	})
	t.Run("due in order", func(t *testing.T) {
		f.Advance(2 * time.Second)
		if got := len(order); got != 2 || order[0] != "a" || order[1] != "b" {
			t.Fatalf("order = %v", order)
		}
		select {
		case at := <-tm.C():
			if !at.Equal(epoch.Add(2 * time.Second)) {
				t.Fatalf("timer sent %v", at)
			}
		default:
			t.Fatal("channel timer did not fire")
		}
		if !f.Now().Equal(epoch.Add(2999 * time.Millisecond)) {
			t.Fatalf("Now = %v", f.Now())
		}
	})
	t.Run("next", func(t *testing.T) {
		next, ok := f.Next()
		if !ok || !next.Equal(epoch.Add(3*time.Second)) {
			t.Fatalf("Next = %v, %v", next, ok)
		}
		if !f.AdvanceToNext() || len(order) != 3 || f.AdvanceToNext() {
			t.Fatalf("AdvanceToNext: order %v", order)
		}
	})
}

func TestFakeSleep(t *testing.T) {
	f := NewFake(epoch)
	ctx := context.Background()
	t.Run("wakes at deadline", func(t *testing.T) {
		errc := make(chan error)
		go func() { errc <- f.Sleep(ctx, 5*time.Second) }()
		if !f.BlockUntil(ctx, 1) {
			t.Fatal("BlockUntil failed")
		}
		f.Advance(4 * time.Second)
		select {
		case <-errc:
			t.Fatal("woke early")
		default:
		}
		f.Advance(time.Second)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("context cancel", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error)
		go func() { errc <- f.Sleep(cctx, time.Hour) }()
		f.BlockUntil(ctx, 1)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if n := f.Sleepers(); n != 0 {
			t.Fatalf("%d sleepers left", n)
		}
	})
	t.Run("with timeout", func(t *testing.T) {
		tctx, cancel := WithTimeout(ctx, f, time.Second)
		defer cancel()
		errc := make(chan error)
		go func() { errc <- f.Sleep(tctx, time.Hour) }()
		f.BlockUntil(ctx, 1)
		f.AdvanceToNext()
		if err := <-errc; !errors.Is(err, context.Canceled) || !errors.Is(context.Cause(tctx), context.DeadlineExceeded) {
			t.Fatalf("err = %v, cause = %v", err, context.Cause(tctx))
		}
	})
	t.Run("drive", func(t *testing.T) {
		start := f.Now()
		f.Drive(func() {
			for range 100 {
				if err := f.Sleep(ctx, time.Minute); err != nil {
					t.Error(err)
				}
			}
		})
		if got := f.Now().Sub(start); got != 100*time.Minute {
			t.Fatalf("drove %v", got)
		}
	})
}

func TestReal(t *testing.T) {
	var c Clock = Real{}
	ctx, cancel := WithTimeout(context.Background(), c, 10*time.Millisecond)
	defer cancel()
	if err := c.Sleep(ctx, time.Minute); !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		t.Fatalf("Sleep = %v, cause %v", err, context.Cause(ctx))
	}
	if err := c.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	fired := make(chan struct{})
	c.AfterFunc(time.Millisecond, func() { close(fired) })
	<-fired
	<-c.NewTimer(time.Millisecond).C()
}

// TestFakeSet: Set moves the clock to a given time either way; forward it
// fires what is due, backward nothing, and the timers keep their deadlines.
func TestFakeSet(t *testing.T) {
	f := NewFake(epoch)
	tm := f.NewTimer(time.Minute)
	f.Set(epoch.Add(-time.Hour))
	if !f.Now().Equal(epoch.Add(-time.Hour)) {
		t.Fatalf("Now = %v after Set back", f.Now())
	}
	select {
	case <-tm.C():
		t.Fatal("timer fired on a Set back")
	default:
	}
	f.Set(epoch.Add(time.Minute))
	select {
	case got := <-tm.C():
		if !got.Equal(epoch.Add(time.Minute)) {
			t.Fatalf("fired with %v, want its deadline", got)
		}
	default:
		t.Fatal("timer due at the Set time did not fire")
	}
}
