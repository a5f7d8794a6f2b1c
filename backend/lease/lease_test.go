package lease_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/redistest"
)

func newLease(t *testing.T, rdb redis.UniversalClient, key, replica string, ttl time.Duration) *lease.Lease {
	t.Helper()
	l, err := lease.New(lease.Config{Redis: rdb, Key: key, Replica: replica, TTL: ttl, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustBool(t *testing.T, what string, got bool, err error, want bool) {
	t.Helper()
	if err != nil || got != want {
		t.Fatalf("%s = %t, %v; want %t", what, got, err, want)
	}
}

func TestAcquireRenewRelease(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	ctx := context.Background()
	key := prefix + "lease:sweep"
	a := newLease(t, rdb, key, "replica-a", time.Second)
	b := newLease(t, rdb, key, "replica-b", time.Second)

	steps := []struct {
		name string
		op   func() (bool, error)
		want bool
	}{
		{"a acquires a free lease", func() (bool, error) { return a.Acquire(ctx) }, true},
		{"b cannot acquire it", func() (bool, error) { return b.Acquire(ctx) }, false},
		{"a acquires again (renews)", func() (bool, error) { return a.Acquire(ctx) }, true},
		{"a renews", func() (bool, error) { return a.Renew(ctx) }, true},
		{"b cannot renew it", func() (bool, error) { return b.Renew(ctx) }, false},
		{"b cannot release it", func() (bool, error) { return b.Release(ctx) }, false},
		{"a still holds it", func() (bool, error) { h, err := a.Holder(ctx); return h == a.Token(), err }, true},
		{"a releases", func() (bool, error) { return a.Release(ctx) }, true},
		{"a releases again: nothing", func() (bool, error) { return a.Release(ctx) }, false},
		{"a cannot renew a released lease", func() (bool, error) { return a.Renew(ctx) }, false},
		{"b acquires the freed lease", func() (bool, error) { return b.Acquire(ctx) }, true},
	}
	for _, s := range steps {
		ok, err := s.op()
		mustBool(t, s.name, ok, err, s.want)
	}
	if h, _ := a.Holder(ctx); lease.ReplicaOf(h) != "replica-b" {
		t.Errorf("holder %q, want replica-b's", h)
	}
	if ttl := rdb.PTTL(ctx, key).Val(); ttl <= 0 || ttl > time.Second {
		t.Errorf("PTTL %s, want (0, 1s]", ttl)
	}
}

// TestContention: many owners race for one lease; exactly one wins.
func TestContention(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	ctx := context.Background()
	for round := range 5 {
		key := fmt.Sprintf("%slease:race:%d", prefix, round)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 16 {
			l := newLease(t, rdb, key, fmt.Sprintf("r%d", i), 5*time.Second)
			wg.Go(func() {
				if ok, err := l.Acquire(ctx); err != nil {
					t.Error(err)
				} else if ok {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d owners acquired the lease", round, n)
		}
	}
}

// TestExpiryWhenHolderDies: a holder that stops renewing loses the lease
// after its TTL, another owner takes it, and the old holder can neither
// renew nor release it any more.
func TestExpiryWhenHolderDies(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	ctx := context.Background()
	key := prefix + "lease:expiry"
	dead := newLease(t, rdb, key, "dead", 300*time.Millisecond)
	next := newLease(t, rdb, key, "next", 300*time.Millisecond)
	ok, err := dead.Acquire(ctx)
	mustBool(t, "dead acquires", ok, err, true)
	ok, err = next.Acquire(ctx)
	mustBool(t, "next acquires while held", ok, err, false)

	deadline := time.Now().Add(3 * time.Second)
	for {
		ok, err = next.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease never expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ok, err = dead.Renew(ctx)
	mustBool(t, "old holder renews", ok, err, false)
	ok, err = dead.Release(ctx)
	mustBool(t, "old holder releases", ok, err, false)
	if h, _ := next.Holder(ctx); h != next.Token() {
		t.Fatalf("holder %q, want %q", h, next.Token())
	}
}

// TestHold: Hold keeps the lease across several TTLs, others are kept
// out, a lost lease cancels the held context, and release frees it.
func TestHold(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	ctx := context.Background()
	const ttl = 300 * time.Millisecond

	t.Run("kept beyond its ttl and released", func(t *testing.T) {
		key := prefix + "lease:hold"
		a := newLease(t, rdb, key, "a", ttl)
		b := newLease(t, rdb, key, "b", ttl)
		held, release, err := a.Hold(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Hold(ctx); !errors.Is(err, lease.ErrHeld) {
			t.Fatalf("second Hold: %v, want ErrHeld", err)
		}
		time.Sleep(4 * ttl)
		if held.Err() != nil {
			t.Fatal("held context ended while renewing")
		}
		if ok, err := b.Acquire(ctx); ok || err != nil {
			t.Fatalf("b acquired a held lease: %t %v", ok, err)
		}
		release()
		release() // safe twice
		if held.Err() == nil {
			t.Fatal("held context alive after release")
		}
		if h, _ := a.Holder(ctx); h != "" {
			t.Fatalf("holder %q after release, want free", h)
		}
	})

	t.Run("lost to another owner", func(t *testing.T) {
		key := prefix + "lease:stolen"
		a := newLease(t, rdb, key, "a", ttl)
		held, release, err := a.Hold(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		// Simulate a long pause: the key expires and another owner takes it.
		rdb.Set(ctx, key, "intruder/1", time.Minute)
		select {
		case <-held.Done():
		case <-time.After(2 * ttl):
			t.Fatal("held context not cancelled after the lease was lost")
		}
		release()
		if h, _ := a.Holder(ctx); h != "intruder/1" {
			t.Fatalf("release deleted another owner's lease: holder %q", h)
		}
	})

	t.Run("parent context ends", func(t *testing.T) {
		key := prefix + "lease:parent"
		a := newLease(t, rdb, key, "a", ttl)
		pctx, cancel := context.WithCancel(ctx)
		held, release, err := a.Hold(pctx)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		<-held.Done()
		release()
		if h, _ := a.Holder(ctx); h != "" {
			t.Fatalf("holder %q after release with a cancelled parent", h)
		}
	})
}

// TestDo: of two replicas ticking together, only one runs the sweep at a
// time, and each tick's sweep runs exactly once.
func TestDo(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	ctx := context.Background()
	key := prefix + "lease:do"
	var running, ran, overlaps atomic.Int32
	sweep := func(context.Context) error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		ran.Add(1)
		return nil
	}
	ls := []*lease.Lease{newLease(t, rdb, key, "a", time.Second), newLease(t, rdb, key, "b", time.Second)}
	for range 10 {
		var wg sync.WaitGroup
		var tickRuns atomic.Int32
		for _, l := range ls {
			wg.Go(func() {
				ok, err := l.Do(ctx, sweep)
				if err != nil {
					t.Error(err)
				}
				if ok {
					tickRuns.Add(1)
				}
			})
		}
		wg.Wait()
		if n := tickRuns.Load(); n < 1 || n > 2 {
			t.Fatalf("%d runs in a tick", n)
		}
	}
	if overlaps.Load() != 0 {
		t.Fatalf("%d overlapping sweeps", overlaps.Load())
	}
	want := errors.New("boom")
	if ok, err := ls[0].Do(ctx, func(context.Context) error { return want }); !ok || !errors.Is(err, want) {
		t.Fatalf("Do error: %t %v", ok, err)
	}
}

func TestConfigAndReplicaID(t *testing.T) {
	rdb, _ := redistest.Client(t)
	cases := []struct {
		name string
		cfg  lease.Config
	}{
		{"no redis", lease.Config{Key: "k", Replica: "r"}},
		{"no key", lease.Config{Redis: rdb, Replica: "r"}},
		{"no replica", lease.Config{Redis: rdb, Key: "k"}},
		{"ttl too short", lease.Config{Redis: rdb, Key: "k", Replica: "r", TTL: time.Millisecond}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := lease.New(tc.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	id := lease.ReplicaID(strings.NewReader("\x01\x02\x03"))
	if !strings.HasSuffix(id, "-010203") {
		t.Errorf("ReplicaID = %q", id)
	}
	if got := lease.ReplicaOf("pod-a/0011"); got != "pod-a" {
		t.Errorf("ReplicaOf = %q", got)
	}
}
