package broker

import (
	"testing"
	"time"
)

// TestCloseDevice: CloseDevice closes a device's connections older than
// the given generation (a takeover on another replica) and reports their
// end; a connection of that generation or newer stays.
func TestCloseDevice(t *testing.T) {
	o := &observer{}
	tb := startBroker(t, func(c *Config) { c.Presence = o }, "d1", "d2")
	c1 := tb.device(t, "d1") // generation 1
	c2 := tb.device(t, "d2") // generation 2
	if n := tb.CloseDevice("d2", 2); n != 0 {
		t.Fatalf("closed %d connections of generation 2 below 2", n)
	}
	if n := tb.CloseDevice("d1", 5); n != 1 {
		t.Fatalf("closed %d connections of d1, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c1.IsConnectionOpen() || tb.HeldGeneration("d1") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("d1 still connected (held generation %d)", tb.HeldGeneration("d1"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !c2.IsConnectionOpen() || tb.HeldGeneration("d2") != 2 {
		t.Fatal("d2's connection was closed")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.disconns != 1 {
		t.Fatalf("%d disconnects reported, want 1", o.disconns)
	}
}
