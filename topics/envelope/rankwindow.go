package envelope

import (
	"fmt"
	"slices"
)

// RankWindow is the device's downlink anti-replay window. The backend
// numbers downlinks from a clock (max(last+1, now in µs), so that a Redis
// restored from an old snapshot never makes it reuse a nonce), and two
// downlinks sent a few hundred µs apart differ by more than WindowSize:
// Window, which counts nonce values, refused the older of two such
// messages delivered out of order. RankWindow counts messages instead: it
// keeps the WindowSize highest nonces accepted, so any of the last 64
// messages may arrive late, whatever the gaps between their nonces.
//
// A nonce n is refused as stale when n <= Floor, as a replay when it is in
// Seen, and accepted otherwise; once Seen holds more than WindowSize nonces
// the smallest is removed and becomes Floor. Every nonce at or below Floor
// was either accepted or is older than the 64 highest accepted, so each
// nonce is still accepted at most once.
//
// The zero RankWindow accepts any nonce >= 1. It is a plain value so that a
// device can persist it; a device that persists only the highest nonce
// restores RankWindow{Floor: high}.
type RankWindow struct {
	Floor uint64   // every nonce <= Floor is refused
	Seen  []uint64 // accepted nonces above Floor, ascending, at most WindowSize
}

// RankWindowFrom converts a persisted Window: the nonces it would still
// accept are exactly those RankWindowFrom(w) accepts.
func RankWindowFrom(w Window) RankWindow {
	var r RankWindow
	if w.High >= WindowSize {
		r.Floor = w.High - WindowSize
	}
	for i := uint64(WindowSize - 1); ; i-- {
		if w.Seen&(1<<i) != 0 && w.High >= i && w.High-i > r.Floor {
			r.Seen = append(r.Seen, w.High-i)
		}
		if i == 0 {
			break
		}
	}
	return r
}

// High returns the highest nonce accepted (Floor when none is held).
func (r RankWindow) High() uint64 {
	if len(r.Seen) == 0 {
		return r.Floor
	}
	return r.Seen[len(r.Seen)-1]
}

// Check reports whether n would be accepted, without recording it.
func (r RankWindow) Check(n uint64) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: nonce 0", ErrStale)
	case n <= r.Floor:
		return fmt.Errorf("%w: %d <= %d, the oldest of the last %d", ErrStale, n, r.Floor, WindowSize)
	}
	if _, found := slices.BinarySearch(r.Seen, n); found {
		return fmt.Errorf("%w: %d", ErrReplay, n)
	}
	return nil
}

// Accept records n if Check allows it. It does not modify a Seen slice
// it was given: it always builds a new one, so a copy of r taken before
// (to persist it first) stays valid.
func (r *RankWindow) Accept(n uint64) error {
	if err := r.Check(n); err != nil {
		return err
	}
	i, _ := slices.BinarySearch(r.Seen, n)
	seen := make([]uint64, 0, len(r.Seen)+1)
	seen = append(append(append(seen, r.Seen[:i]...), n), r.Seen[i:]...)
	if len(seen) > WindowSize {
		r.Floor = seen[0]
		seen = seen[1:]
	}
	r.Seen = seen
	return nil
}
