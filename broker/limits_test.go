package broker

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestSubscriptionLimits checks (issue 18 item 6) that a device cannot
// pile up subscriptions or long filters: beyond 8 distinct filters, or
// with a filter above 256 bytes, SUBACK refuses (0x97 quota exceeded and
// 0x8F filter invalid in MQTT 5, 0x80 in 3.1.1), the refusal is reported,
// and nothing is subscribed; an operator has larger limits.
func TestSubscriptionLimits(t *testing.T) {
	tb := startBroker(t, nil, "d1", "d2")
	down := topics.DeviceDownPrefix("d1")
	long := down + strings.Repeat("x", 300)

	t.Run("mqtt5", func(t *testing.T) {
		rc, code := rawConnect(t, tb.Addr().String(), 5, "d1", "d1", tb.auth.token("d1"))
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		var filters []string
		for i := range 10 {
			filters = append(filters, fmt.Sprintf("%sk%d", down, i))
		}
		got := rc.subscribe(1, append(filters, long, filters[0])...)
		want := []byte{1, 1, 1, 1, 1, 1, 1, 1, 0x97, 0x97, 0x8F, 1}
		if string(got) != string(want) {
			t.Fatalf("SUBACK codes %x, want %x", got, want)
		}
		// A filter already held takes no new slot; a new one is refused.
		if got := rc.subscribe(2, filters[3], down+"#"); string(got) != string([]byte{1, 0x97}) {
			t.Fatalf("second SUBACK %x, want 01 97", got)
		}
		cl, ok := tb.mochi.Clients.Get("d1")
		if !ok {
			t.Fatal("d1 not connected")
		}
		if n := cl.State.Subscriptions.Len(); n != 8 {
			t.Errorf("d1 holds %d subscriptions, want 8", n)
		}
		tb.expectReject(t, "too_many_subscriptions", filters[8])
		tb.expectReject(t, "filter_too_long", "limit 256")
	})
	t.Run("mqtt3", func(t *testing.T) {
		c := tb.device(t, "d2")
		for i := range 8 {
			if code := subscribeCode(t, c, fmt.Sprintf("%sk%d", topics.DeviceDownPrefix("d2"), i), nil); code != 1 {
				t.Fatalf("subscription %d: code %#x", i, code)
			}
		}
		if code := subscribeCode(t, c, topics.DeviceDownFilter("d2"), nil); code != 0x80 {
			t.Fatalf("9th subscription: code %#x, want 0x80", code)
		}
	})
	t.Run("operator", func(t *testing.T) {
		rc, code := rawConnect(t, tb.Addr().String(), 5, "viewer-x", "viewer", "viewer-pw")
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		var filters []string
		for i := range 65 {
			filters = append(filters, fmt.Sprintf("ecowatt/v1/events/d%d/#", i))
		}
		got := rc.subscribe(1, filters...)
		for i, c := range got {
			if want := byte(1); i == 64 {
				want = 0x97
				if c != want {
					t.Errorf("filter %d: %#x, want %#x", i, c, want)
				}
			} else if c != want {
				t.Errorf("filter %d: %#x, want %#x", i, c, want)
			}
		}
	})
}

// TestSessionTakeoverReported checks (issue 18 item 9) that a second
// connection with a device's valid token, which takes over the live
// session, is reported and counted; a reconnect after a clean disconnect
// is not.
func TestSessionTakeoverReported(t *testing.T) {
	tb := startBroker(t, nil, "d1")
	first := tb.device(t, "d1")
	first.Disconnect(100)
	deadline := time.Now().Add(5 * time.Second)
	for cl, ok := tb.mochi.Clients.Get("d1"); ok && !cl.Closed(); cl, ok = tb.mochi.Clients.Get("d1") {
		if time.Now().After(deadline) {
			t.Fatal("the broker did not see d1's DISCONNECT")
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.device(t, "d1") // a plain reconnect
	time.Sleep(100 * time.Millisecond)
	if hasReject(tb, "session_takeover") {
		t.Fatal("a reconnect after DISCONNECT was reported as a takeover")
	}
	tb.device(t, "d1") // the previous connection is still live
	tb.expectReject(t, "session_takeover", "replaced the live one")
	if n := testutil.ToFloat64(tb.m.rejections.WithLabelValues("session_takeover")); n != 1 {
		t.Errorf("ecowatt_broker_rejections_total{reason=session_takeover} = %v, want 1", n)
	}
}

// fakeClock is a settable clock near the real time (device tokens are
// checked against it).
type fakeClock struct {
	mu  sync.Mutex // guards off
	off time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// TestLoginThrottle checks (issue 18 item 2) that failed logins are
// throttled: after 20 failures from one address every login from it, even
// a valid one, is refused unchecked for a delay that doubles with each
// further failure; after 5 wrong passwords for one operator that operator
// is locked out the same way, and a success clears it. Failures for device
// names lock no name.
func TestLoginThrottle(t *testing.T) {
	clk := &fakeClock{}
	tb := startBroker(t, func(c *Config) { c.Now = clk.now }, "d1")
	addr := tb.Addr().String()
	fail := func(t *testing.T, user, pass string, want byte) {
		t.Helper()
		if _, code := rawConnect(t, addr, 5, user+"-c", user, pass); code != want {
			t.Fatalf("login %s: CONNACK %#x, want %#x", user, code, want)
		}
	}
	const bad, rate = 0x86, 0x9F

	t.Run("operator name", func(t *testing.T) {
		for range 5 {
			fail(t, "admin", "wrong", bad)
		}
		fail(t, "admin", "wrong", bad) // the 6th is checked: it sets the lock
		if _, code := rawConnect(t, addr, 5, "admin-ok", "admin", "admin-pw"); code != rate {
			t.Fatalf("locked operator with the right password: CONNACK %#x, want %#x", code, rate)
		}
		tb.expectReject(t, "throttled", `operator "admin"`)
		clk.advance(1100 * time.Millisecond)
		if _, code := rawConnect(t, addr, 5, "admin-ok", "admin", "admin-pw"); code != 0 {
			t.Fatalf("after the delay: CONNACK %#x, want success", code)
		}
		fail(t, "admin", "wrong", bad) // a success cleared the count
	})
	t.Run("source address", func(t *testing.T) {
		clk.advance(time.Hour) // forget the failures above
		for i := range 20 {
			fail(t, fmt.Sprintf("ghost%d", i), "x", bad)
		}
		fail(t, "d1", "v1.bad.token", bad) // the 21st sets a 1 s lock
		if _, code := rawConnect(t, addr, 5, "d1", "d1", envelopeToken(tb, "d1", clk.now())); code != rate {
			t.Fatalf("valid device from a locked address: CONNACK %#x, want %#x", code, rate)
		}
		clk.advance(1100 * time.Millisecond)
		fail(t, "ghost", "x", bad) // checked; the lock doubles to 2 s
		clk.advance(1100 * time.Millisecond)
		if _, code := rawConnect(t, addr, 5, "d1", "d1", envelopeToken(tb, "d1", clk.now())); code != rate {
			t.Fatalf("1.1 s into a 2 s lock: CONNACK %#x, want %#x", code, rate)
		}
		clk.advance(time.Second)
		if _, code := rawConnect(t, addr, 5, "d1", "d1", envelopeToken(tb, "d1", clk.now())); code != 0 {
			t.Fatalf("after the lock: CONNACK %#x, want success", code)
		}
	})
}

// envelopeToken is a password token for device id at now.
func envelopeToken(tb *testBroker, id string, now time.Time) string {
	return envelope.Password(tb.auth.devices[id], id, now)
}
