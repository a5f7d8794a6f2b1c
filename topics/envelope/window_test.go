package envelope

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// step is one nonce offered to a Window and the verdict it must get.
type step struct {
	n    uint64
	want error // nil, ErrReplay or ErrStale
}

func ok(ns ...uint64) []step {
	s := make([]step, len(ns))
	for i, n := range ns {
		s[i] = step{n, nil}
	}
	return s
}

func cat(parts ...[]step) []step {
	var s []step
	for _, p := range parts {
		s = append(s, p...)
	}
	return s
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for n := from; n <= to; n++ {
		s = append(s, n)
	}
	return s
}

// windowCase runs steps from start and expects the final state.
type windowCase struct {
	name  string
	start Window
	steps []step
	end   *Window // nil: do not check
}

var windowCases = []windowCase{
	{name: "zero window accepts 1", steps: ok(1), end: &Window{1, 1}},
	{name: "zero window accepts a large first nonce", steps: ok(1000), end: &Window{1000, 1}},
	{name: "nonce 0 is stale", steps: []step{{0, ErrStale}}, end: &Window{0, 0}},
	{name: "nonce 0 after others", steps: cat(ok(1, 2), []step{{0, ErrStale}}), end: &Window{2, 3}},
	{name: "in order", steps: ok(1, 2, 3, 4, 5), end: &Window{5, 0b11111}},
	{name: "gaps", steps: ok(1, 3, 7), end: &Window{7, 1<<0 | 1<<4 | 1<<6}},
	{name: "out of order within window", steps: ok(10, 8, 9, 5), end: &Window{10, 1<<0 | 1<<2 | 1<<1 | 1<<5}},
	{name: "exact replay of high", steps: cat(ok(5), []step{{5, ErrReplay}}), end: &Window{5, 1}},
	{name: "replay below high", steps: cat(ok(5, 6, 7), []step{{6, ErrReplay}, {5, ErrReplay}, {7, ErrReplay}}), end: &Window{7, 0b111}},
	{name: "replay of late arrival", steps: cat(ok(10, 4), []step{{4, ErrReplay}}), end: &Window{10, 1 | 1<<6}},
	{name: "gap filled later", steps: ok(2, 4, 3, 1), end: &Window{4, 0b1111}},
	{name: "63 below high is inside", steps: ok(100, 37), end: &Window{100, 1 | 1<<63}},
	{name: "64 below high is stale", steps: cat(ok(100), []step{{36, ErrStale}}), end: &Window{100, 1}},
	{name: "far below high is stale", steps: cat(ok(1000), []step{{1, ErrStale}}), end: &Window{1000, 1}},
	{name: "jump of 63 keeps the old high", steps: cat(ok(1, 64), []step{{1, ErrReplay}, {2, nil}}), end: &Window{64, 1 | 1<<63 | 1<<62}},
	{name: "jump of 64 drops the old high", steps: cat(ok(1, 65), []step{{1, ErrStale}, {2, nil}}), end: &Window{65, 1 | 1<<63}},
	{name: "big jump clears bitmap", steps: cat(ok(1, 2, 3, 4), ok(1000), []step{{4, ErrStale}}, ok(999, 937), []step{{936, ErrStale}}), end: &Window{1000, 1 | 1<<1 | 1<<63}},
	{name: "jump of exactly 64 then back", steps: cat(ok(50, 114), []step{{50, ErrStale}}, ok(51), []step{{51, ErrReplay}}), end: &Window{114, 1 | 1<<63}},
	{name: "full window of 64", steps: cat(ok(seq(1, 64)...), []step{{1, ErrReplay}, {64, ErrReplay}}), end: &Window{64, ^uint64(0)}},
	{name: "sliding drops the oldest", steps: cat(ok(seq(1, 65)...), []step{{1, ErrStale}, {2, ErrReplay}}), end: &Window{65, ^uint64(0)}},
	{name: "max nonce", steps: cat(ok(MaxNonce-1, MaxNonce), []step{{MaxNonce, ErrReplay}, {MaxNonce - 64, ErrStale}}), end: &Window{MaxNonce, 0b11}},
	{name: "restored state", start: Window{200, 1 | 1<<3}, steps: cat([]step{{197, ErrReplay}, {200, ErrReplay}, {136, ErrStale}}, ok(198, 137, 201), []step{{137, ErrStale}}), end: &Window{201, 1 | 1<<1 | 1<<3 | 1<<4}},
}

func TestWindow(t *testing.T) {
	for _, tc := range windowCases {
		t.Run(tc.name, func(t *testing.T) {
			w := tc.start
			for i, s := range tc.steps {
				before := w
				checkErr := w.Check(s.n)
				err := w.Accept(s.n)
				if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
					t.Fatalf("step %d: Accept(%d) = %v, want %v", i, s.n, err, s.want)
				}
				if (checkErr == nil) != (err == nil) || err != nil && checkErr.Error() != err.Error() {
					t.Fatalf("step %d: Check(%d) = %v but Accept = %v", i, s.n, checkErr, err)
				}
				if err != nil && w != before {
					t.Fatalf("step %d: rejected nonce %d changed the window %+v -> %+v", i, s.n, before, w)
				}
			}
			if tc.end != nil && w != *tc.end {
				t.Fatalf("end state {High:%d Seen:%#x}, want {High:%d Seen:%#x}", w.High, w.Seen, tc.end.High, tc.end.Seen)
			}
		})
	}
}

// refWindow is the reference model: the set of accepted nonces and their
// maximum. A nonce is fresh when it is >= 1, not accepted before, and not
// WindowSize or more below the maximum.
type refWindow struct {
	seen map[uint64]bool
	max  uint64
}

func (r *refWindow) accept(n uint64) error {
	switch {
	case n == 0 || n+WindowSize <= r.max:
		return ErrStale
	case r.seen[n]:
		return ErrReplay
	}
	r.seen[n] = true
	r.max = max(r.max, n)
	return nil
}

// nonceOps turns bytes into a nonce sequence that stresses the window:
// each byte pair is an operation relative to the highest nonce so far.
func nonceOps(ops []byte) []uint64 {
	var out []uint64
	var high uint64
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i]%5, uint64(ops[i+1])
		var n uint64
		switch op {
		case 0: // forward a little
			n = high + 1 + arg%4
		case 1: // back, around the window edge
			d := arg % 80
			if d <= high {
				n = high - d
			}
		case 2: // big jump
			n = high + 60 + arg
		case 3: // repeat an earlier nonce
			if len(out) > 0 {
				n = out[len(out)-1-int(arg)%len(out)]
			}
		case 4: // exactly the window edge
			if high >= 63+arg%2 {
				n = high - 63 - arg%2
			}
		}
		if n > MaxNonce {
			n = MaxNonce
		}
		high = max(high, n)
		out = append(out, n)
	}
	return out
}

// checkAgainstModel feeds seq to a Window and to the reference model and
// reports the first disagreement.
func checkAgainstModel(t testing.TB, seq []uint64) {
	t.Helper()
	var w Window
	ref := refWindow{seen: map[uint64]bool{}}
	for i, n := range seq {
		want := ref.accept(n)
		got := w.Accept(n)
		if !errors.Is(got, want) || (want == nil) != (got == nil) {
			t.Fatalf("step %d: Accept(%d) = %v, model says %v (high %d)", i, n, got, want, ref.max)
		}
		if w.High != ref.max {
			t.Fatalf("step %d: High %d, model max %d", i, w.High, ref.max)
		}
	}
}

func TestWindowModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		ops := make([]byte, 2*(1+r.IntN(300)))
		for j := range ops {
			ops[j] = byte(r.UintN(256))
		}
		seq := nonceOps(ops)
		if t.Failed() {
			break
		}
		t.Run("", func(t *testing.T) {
			if i%500 == 0 {
				t.Logf("sequence %d: %d nonces", i, len(seq))
			}
			checkAgainstModel(t, seq)
		})
	}
}
