package envelope

import (
	"errors"
	"fmt"
)

// WindowSize is how far below the highest accepted nonce a nonce may still
// arrive (QoS 1 redelivery and reordering).
const WindowSize = 64

// Replay errors.
var (
	ErrReplay = errors.New("replayed nonce")
	ErrStale  = errors.New("nonce below replay window")
)

// Window is a sliding anti-replay window over nonces. High is the highest
// nonce accepted; bit i of Seen is set when nonce High-i was accepted. The
// zero Window accepts any nonce >= 1. It is a plain value so that receivers
// can persist it (the backend keeps the same state in Redis).
type Window struct {
	High uint64
	Seen uint64
}

// Check reports whether n would be accepted, without recording it.
func (w Window) Check(n uint64) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: nonce 0", ErrStale)
	case n > w.High:
		return nil
	case w.High-n >= WindowSize:
		return fmt.Errorf("%w: %d <= %d-%d", ErrStale, n, w.High, WindowSize)
	case w.Seen&(1<<(w.High-n)) != 0:
		return fmt.Errorf("%w: %d", ErrReplay, n)
	}
	return nil
}

// Accept records n if Check allows it.
func (w *Window) Accept(n uint64) error {
	if err := w.Check(n); err != nil {
		return err
	}
	if n > w.High {
		shift := n - w.High
		if shift >= WindowSize {
			w.Seen = 0
		} else {
			w.Seen <<= shift
		}
		w.High = n
	}
	w.Seen |= 1 << (w.High - n)
	return nil
}
