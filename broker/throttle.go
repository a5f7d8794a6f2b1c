package broker

import (
	"sync"
	"time"
)

// Throttle bounds failed logins for one key (a source address, or an
// operator name): after Free failures, every attempt is refused unchecked
// until Base·2^(failures−Free−1), at most Max, has passed since the last
// failure. Refused attempts do not count as failures, so a client that
// keeps trying gets one real check per delay. A key with no failure for
// Forget is forgotten.
type Throttle struct {
	Free   int
	Base   time.Duration
	Max    time.Duration
	Forget time.Duration
}

// Default throttles (docs/OPERATIONS.md, "Login throttling"). An address is
// allowed more failures than a name because devices behind one NAT share
// it.
var (
	DefaultAddressThrottle  = Throttle{Free: 20, Base: time.Second, Max: time.Minute, Forget: 10 * time.Minute}
	DefaultOperatorThrottle = Throttle{Free: 5, Base: time.Second, Max: time.Minute, Forget: 15 * time.Minute}
)

// maxThrottleKeys bounds each throttle's memory; past it, stale keys are
// dropped and, if none is stale, new keys are not tracked (fail open: a
// flood from that many addresses is the network's to stop).
const maxThrottleKeys = 1 << 16

type strikes struct {
	n    int       // failures
	last time.Time // of the last failure
}

// throttle tracks failures per key.
type throttle struct {
	lim Throttle

	mu   sync.Mutex // guards keys
	keys map[string]*strikes
}

func newThrottle(lim Throttle) *throttle {
	return &throttle{lim: lim, keys: map[string]*strikes{}}
}

// wait returns how much longer key is locked out; 0 if it may try now.
func (t *throttle) wait(key string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.keys[key]
	if !ok {
		return 0
	}
	if now.Sub(s.last) >= t.lim.Forget {
		delete(t.keys, key)
		return 0
	}
	if s.n <= t.lim.Free {
		return 0
	}
	return max(0, s.last.Add(t.delay(s.n)).Sub(now))
}

// delay is the lockout after n failures (n > Free).
func (t *throttle) delay(n int) time.Duration {
	d := t.lim.Base
	for i := t.lim.Free + 1; i < n && d < t.lim.Max; i++ {
		d *= 2
	}
	return min(d, t.lim.Max)
}

// fail records a failure of key at now.
func (t *throttle) fail(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.keys[key]
	if !ok {
		if len(t.keys) >= maxThrottleKeys {
			for k, v := range t.keys {
				if now.Sub(v.last) >= t.lim.Forget {
					delete(t.keys, k)
				}
			}
			if len(t.keys) >= maxThrottleKeys {
				return
			}
		}
		s = &strikes{}
		t.keys[key] = s
	}
	if now.Sub(s.last) >= t.lim.Forget {
		s.n = 0
	}
	s.n++
	s.last = now
}

// reset forgets key's failures (an operator logged in).
func (t *throttle) reset(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.keys, key)
}
