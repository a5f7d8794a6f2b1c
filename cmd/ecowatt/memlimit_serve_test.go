package main

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestMemBudgetLimit(t *testing.T) {
	b := memBudget{base: 64 << 20, perDevice: 16 << 10}
	for _, tc := range []struct {
		name string
		s    memSample
		want int64
	}{
		{"no clients: the base", memSample{liveHeap: 10 << 20, nonHeap: 5 << 20}, 64 << 20},
		{"budget above the floor", memSample{clients: 10000, liveHeap: 40 << 20, nonHeap: 20 << 20}, 64<<20 + 10000*16<<10},
		// 2,000 clients: budget 96 MiB; floor 60 MiB of stacks + 1.25 × 80 MiB live = 160 MiB.
		{"floor above the budget", memSample{clients: 2000, liveHeap: 80 << 20, nonHeap: 60 << 20}, 160 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.limit(tc.s); got != tc.want {
				t.Fatalf("limit %d, want %d", got, tc.want)
			}
		})
	}
}

// TestMemControllerStep: the limit follows the clients, idle heap is freed
// only once a burst is over, only when large, at most every 30 s.
func TestMemControllerStep(t *testing.T) {
	now := time.Unix(1000, 0)
	var clients int64
	sample := memSample{liveHeap: 8 << 20, nonHeap: 4 << 20}
	var set []int64
	frees := 0
	m := &memController{
		budget:  memBudget{base: 64 << 20, perDevice: 16 << 10},
		clients: func() int64 { return clients },
		read:    func() memSample { return sample },
		set:     func(n int64) { set = append(set, n) },
		free:    func() { frees++ },
		now:     func() time.Time { return now },
		log:     zerolog.Nop(),
	}
	tick := func(c int64, free uint64) int64 {
		clients, sample.heapFree = c, free
		now = now.Add(memoryTick)
		return m.step()
	}
	if got := tick(0, 0); got != 64<<20 {
		t.Fatalf("start: limit %d", got)
	}
	// A connect burst: the limit grows with it; nothing is freed while it runs.
	if got := tick(1000, 200<<20); got != 64<<20+1000*16<<10 {
		t.Fatalf("1,000 clients: limit %d", got)
	}
	tick(4000, 200<<20)
	if frees != 0 {
		t.Fatalf("freed %d times during the burst", frees)
	}
	// Settled with 200 MiB idle: freed once, then not again within 30 s.
	tick(4000, 200<<20)
	if frees != 1 {
		t.Fatalf("settled: %d frees, want 1", frees)
	}
	for i := 0; i < int(memoryFreeEvery/memoryTick)-1; i++ {
		tick(4000, 200<<20)
	}
	if frees != 1 {
		t.Fatalf("%d frees within %s", frees, memoryFreeEvery)
	}
	tick(4000, 200<<20)
	if frees != 2 {
		t.Fatalf("%d frees after %s, want 2", frees, memoryFreeEvery)
	}
	// Little idle heap (below memoryFreeMin, or below a quarter of the limit): not freed.
	now = now.Add(time.Hour)
	tick(4000, 20<<20)
	tick(4000, 30<<20)
	if frees != 2 {
		t.Fatalf("small idle heap freed: %d", frees)
	}
	// The same limit is not set again.
	n := len(set)
	tick(4000, 0)
	if len(set) != n {
		t.Fatalf("unchanged limit set again: %v", set[n:])
	}
	// The floor: a live heap above the budget raises the limit to 1.25 × live + non-heap.
	sample.liveHeap = 400 << 20
	if got, want := tick(4000, 0), int64(4<<20)+500<<20; got != want {
		t.Fatalf("floor: limit %d, want %d", got, want)
	}
}

// TestMemoryLimitFlag: an explicit --memory-limit (or GOMEMLIMIT) wins over
// the fleet controller; off sets nothing; bad sizes are usage errors.
func TestMemoryLimitFlag(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	noEnv := func(string) string { return "" }
	log := zerolog.Nop()
	def := runtimeConfig{memoryLimit: "auto", memoryBase: "64MiB", memoryPerDevice: "16KiB"}

	b, err := def.applyMemoryLimit(noEnv, log)
	if err != nil || b == nil || *b != (memBudget{base: 64 << 20, perDevice: 16 << 10}) {
		t.Fatalf("auto: %+v, %v", b, err)
	}
	explicit := def
	explicit.memoryLimit = "512MiB"
	b, err = explicit.applyMemoryLimit(noEnv, log)
	if err != nil || b != nil {
		t.Fatalf("explicit: controller %+v, %v", b, err)
	}
	if got := debug.SetMemoryLimit(-1); got != 512<<20 {
		t.Fatalf("explicit: runtime limit %d", got)
	}
	debug.SetMemoryLimit(math.MaxInt64)
	b, err = def.applyMemoryLimit(func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}, log)
	if err != nil || b != nil {
		t.Fatalf("GOMEMLIMIT: controller %+v, %v", b, err)
	}
	off := def
	off.memoryLimit = "off"
	if b, err = off.applyMemoryLimit(noEnv, log); err != nil || b != nil {
		t.Fatalf("off: %+v, %v", b, err)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Fatalf("GOMEMLIMIT/off changed the limit to %d", got)
	}
	for _, bad := range []runtimeConfig{
		{memoryLimit: "lots"},
		{memoryLimit: "auto", memoryBase: "0", memoryPerDevice: "16KiB"},
		{memoryLimit: "auto", memoryBase: "64MiB", memoryPerDevice: "16kb"},
	} {
		var u usageError
		if _, err := bad.applyMemoryLimit(noEnv, log); !errors.As(err, &u) {
			t.Fatalf("%+v: %v, want a usage error", bad, err)
		}
	}
}
