package load

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// inbox tallies what one subscriber received: which (publisher, sequence)
// pairs arrived, duplicates, strays, and the latency of each first arrival.
type inbox struct {
	run  uint64
	slot map[uint32]int // publisher index -> row of seen; fixed before any message
	got  atomic.Int64   // distinct messages, read by progress

	mu      sync.Mutex // guards the fields below
	seen    [][]bool   // [slot][seq]
	lat     []int64    // ns, one per distinct message
	dups    int64      // a (publisher, seq) seen before (QoS 1 redelivery)
	strays  int64      // another run, an unexpected publisher, a bad payload
	lastRcv int64      // Unix ns of the last distinct message
}

// newInbox expects count messages from each of pubs.
func newInbox(run uint64, pubs []int, count int) *inbox {
	b := &inbox{run: run, slot: make(map[uint32]int, len(pubs)), seen: make([][]bool, len(pubs))}
	for i, p := range pubs {
		b.slot[uint32(p)] = i
		b.seen[i] = make([]bool, count)
	}
	b.lat = make([]int64, 0, len(pubs)*count)
	return b
}

// record tallies payload p, received at now (Unix ns).
func (b *inbox) record(p []byte, now int64) {
	h, err := decode(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	row, ok := b.slot[h.pub]
	if err != nil || h.run != b.run || !ok || int(h.seq) >= len(b.seen[row]) {
		b.strays++
		return
	}
	if b.seen[row][h.seq] {
		b.dups++
		return
	}
	b.seen[row][h.seq] = true
	b.lat = append(b.lat, now-h.sent)
	b.lastRcv = max(b.lastRcv, now)
	b.got.Add(1)
}

// missing counts the messages this inbox should have received (the first
// sent[pub] sequence numbers of each expected publisher) and how many of
// them never arrived.
func (b *inbox) missing(sent []int64) (expected, lost int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for pub, row := range b.slot {
		n := min(int(sent[pub]), len(b.seen[row]))
		expected += int64(n)
		for _, ok := range b.seen[row][:n] {
			if !ok {
				lost++
			}
		}
	}
	return expected, lost
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// percentiles summarises latencies given in ns (sorting them in place).
func percentiles(ns []int64) Latency {
	if len(ns) == 0 {
		return Latency{}
	}
	slices.Sort(ns)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(ns)))) - 1 // nearest rank
		return ms(ns[max(i, 0)])
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(ns[len(ns)-1])}
}

func ms(ns int64) float64 { return math.Round(float64(ns)/float64(time.Microsecond)) / 1000 }
