package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The default soft memory limit follows the fleet (docs/DECISIONS.md): with
// GOGC=100 alone the heap doubles the live heap between collections and the
// scavenger hands idle pages back slowly, so an idle device cost ~3× its
// live memory in RSS (docs/BENCHMARKS.md, issue 14). The limit is
//
//	max(base + perDevice × connected clients, nonHeap + 1.25 × live heap)
//
// The second term keeps a quarter of the live heap as headroom, so the GC
// cannot thrash when the fleet needs more than the budget (its stacks, the
// broker's per-client state); the limit then tracks what the process needs
// instead of a fixed guess. An explicit --memory-limit or GOMEMLIMIT wins.
const (
	defaultMemoryBase      = 64 << 20
	defaultMemoryPerDevice = 32 << 10
	memoryHeadroom         = 1.25
	memoryTick             = 2 * time.Second
	// After a connect burst, idle heap above this (and above a quarter
	// of the limit) is returned at once, at most every memoryFreeEvery.
	memoryFreeMin   = 32 << 20
	memoryFreeEvery = 30 * time.Second
)

// memSample is what one controller tick reads.
type memSample struct {
	clients  int64  // MQTT clients connected now
	liveHeap uint64 // heap marked live by the last GC
	nonHeap  uint64 // stacks and runtime metadata: counted in the limit, not freed by the GC
	heapFree uint64 // heap pages idle and not yet returned to the OS
}

// memBudget is the controller's arithmetic.
type memBudget struct {
	base, perDevice int64
}

// limit is the soft memory limit for s.
func (b memBudget) limit(s memSample) int64 {
	want := b.base + b.perDevice*s.clients
	floor := int64(s.nonHeap) + int64(float64(s.liveHeap)*memoryHeadroom)
	return max(want, floor)
}

// memController sets debug.SetMemoryLimit from the fleet every tick and
// returns idle heap to the OS once a connect burst is over.
type memController struct {
	budget  memBudget
	clients func() int64
	read    func() memSample // nil: readMemSample
	set     func(int64)      // nil: debug.SetMemoryLimit
	free    func()           // nil: debug.FreeOSMemory
	now     func() time.Time // nil: time.Now
	log     zerolog.Logger

	lastClients int64
	lastFree    time.Time
	limitNow    int64
}

// step runs one tick and returns the limit it set.
func (m *memController) step() int64 {
	s := m.read()
	s.clients = m.clients()
	lim := m.budget.limit(s)
	if lim != m.limitNow {
		m.set(lim)
		m.limitNow = lim
	}
	// The burst is over when no clients came in since the last tick.
	settled := s.clients <= m.lastClients
	m.lastClients = s.clients
	now := m.now()
	if settled && s.heapFree > memoryFreeMin && int64(s.heapFree) > lim/4 && now.Sub(m.lastFree) >= memoryFreeEvery {
		m.lastFree = now
		start := time.Now()
		m.free()
		m.log.Debug().Uint64("idle_bytes", s.heapFree).Dur("took", time.Since(start)).Msg("idle heap returned to the OS")
	}
	return lim
}

// run ticks until ctx ends.
func (m *memController) run(ctx context.Context) error {
	m.defaults()
	t := time.NewTicker(memoryTick)
	defer t.Stop()
	m.log.Info().Int64("base", m.budget.base).Int64("per_device", m.budget.perDevice).
		Int64("limit", m.step()).Msg("Go memory limit follows the fleet")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.step()
		}
	}
}

func (m *memController) defaults() {
	if m.read == nil {
		m.read = readMemSample
	}
	if m.set == nil {
		m.set = func(n int64) { debug.SetMemoryLimit(n) }
	}
	if m.free == nil {
		m.free = debug.FreeOSMemory
	}
	if m.now == nil {
		m.now = time.Now
	}
}

var memMetricNames = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
}

// readMemSample reads the runtime's memory classes (no stop-the-world).
func readMemSample() memSample {
	ms := make([]metrics.Sample, len(memMetricNames))
	for i, n := range memMetricNames {
		ms[i].Name = n
	}
	metrics.Read(ms)
	v := func(i int) uint64 {
		if ms[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return ms[i].Value.Uint64()
	}
	live, total, objects, unused, free, released := v(0), v(1), v(2), v(3), v(4), v(5)
	heap := objects + unused + free + released
	var nonHeap uint64
	if total > heap {
		nonHeap = total - heap
	}
	return memSample{liveHeap: live, nonHeap: nonHeap, heapFree: free}
}

// gaugeReader reads one unlabelled gauge from g (0 when absent), such as
// the broker's ecowatt_broker_clients_connected.
func gaugeReader(g prometheus.Gatherer, name string) func() int64 {
	return func() int64 {
		mfs, err := g.Gather()
		if err != nil && len(mfs) == 0 {
			return 0
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) > 0 {
				return int64(mf.GetMetric()[0].GetGauge().GetValue())
			}
		}
		return 0
	}
}
