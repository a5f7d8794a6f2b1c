package broker

import (
	"fmt"
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

// LoginThrottle is the pair of throttles a broker keeps: failed logins by
// source address and by operator name. The embedded broker holds one; the
// external broker's HTTP callbacks (authhttp) hold another, so the same
// rules apply whichever broker terminates the connection.
type LoginThrottle struct {
	byAddr, byName *throttle
}

// NewLoginThrottle makes a LoginThrottle; zero values take
// DefaultAddressThrottle and DefaultOperatorThrottle.
func NewLoginThrottle(byAddr, byName Throttle) *LoginThrottle {
	if byAddr == (Throttle{}) {
		byAddr = DefaultAddressThrottle
	}
	if byName == (Throttle{}) {
		byName = DefaultOperatorThrottle
	}
	return &LoginThrottle{byAddr: newThrottle(byAddr), byName: newThrottle(byName)}
}

// Check returns the rejection of a login whose address or operator name is
// locked out, or nil. An empty address (a callback that does not send it)
// is not throttled by address. Device names are never locked: a device
// token cannot be guessed, and a lock would let anyone keep a device out.
func (l *LoginThrottle) Check(now time.Time, addr, name string) *Rejection {
	if addr != "" {
		if d := l.byAddr.wait(addr, now); d > 0 {
			return &Rejection{Username: name, Reason: ReasonThrottled,
				Detail: fmt.Sprintf("too many failed logins from %s; retry in %s", addr, d.Round(time.Millisecond))}
		}
	}
	if d := l.byName.wait(name, now); d > 0 {
		return &Rejection{Username: name, Reason: ReasonThrottled,
			Detail: fmt.Sprintf("too many failed logins for operator %q; retry in %s", name, d.Round(time.Millisecond))}
	}
	return nil
}

// Outcome feeds a checked login to the throttles: a failure (not a store
// error) counts against the address, an operator's wrong password against
// its name too; an operator's success (operator true) clears its name.
func (l *LoginThrottle) Outcome(now time.Time, addr, name string, operator bool, rej *Rejection) {
	switch {
	case rej == nil:
		if operator {
			l.byName.reset(name)
		}
	case rej.Reason != ReasonAuthError:
		if addr != "" {
			l.byAddr.fail(addr, now)
		}
		if rej.throttleName {
			l.byName.fail(name, now)
		}
	}
}
