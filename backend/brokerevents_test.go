package backend

import (
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
)

// TestNamesDistinct checks (issue 18 item 7) both directions against real
// Redis: a device under an operator's name and an operator under a
// device's ID are CodeConflict and leave the existing account intact.
func TestNamesDistinct(t *testing.T) {
	h := newHarness(t)
	if err := h.s.EnsureOperator(h.ctx, "admin1", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Provision(h.ctx, "admin1"); ErrorCode(err) != CodeConflict {
		t.Fatalf("provision admin1: %v, want conflict", err)
	}
	if _, err := h.s.Device(h.ctx, "admin1"); ErrorCode(err) != CodeNotFound {
		t.Fatalf("device admin1 after the refusal: %v, want not found", err)
	}
	if _, err := h.s.AuthenticateOperator(h.ctx, "admin1", "pw"); err != nil {
		t.Fatalf("operator admin1 after the refusal: %v", err)
	}
	h.device("gw-7")
	if err := h.s.EnsureOperator(h.ctx, "gw-7", "pw", topics.RoleAdmin); ErrorCode(err) != CodeConflict {
		t.Fatalf("operator gw-7: %v, want conflict", err)
	}
	if _, err := h.s.OperatorRole(h.ctx, "gw-7"); ErrorCode(err) != CodeNotFound {
		t.Fatalf("operator gw-7 after the refusal: %v, want not found", err)
	}
}

// TestSamplerRateLimits checks the sampling of broker rejections: one
// event per name per interval carrying the counts since the last, and a
// fleet-wide cap.
func TestSamplerRateLimits(t *testing.T) {
	p := newSampler(time.Minute, 3, 100)
	t0 := time.Unix(1_000_000, 0)
	if c, ok := p.add("d1", "bad_password", t0); !ok || c["bad_password"] != 1 {
		t.Fatalf("first: %v %v", c, ok)
	}
	for i := range 10 {
		if _, ok := p.add("d1", "unknown_device", t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("sampled twice within a minute")
		}
	}
	c, ok := p.add("d1", "bad_password", t0.Add(time.Minute))
	if !ok || c["unknown_device"] != 10 || c["bad_password"] != 1 {
		t.Fatalf("after a minute: %v %v, want 10 unknown_device + 1 bad_password", c, ok)
	}
	p.add("a", "x", t0.Add(time.Minute))
	p.add("b", "x", t0.Add(time.Minute))
	if _, ok := p.add("c", "x", t0.Add(time.Minute)); ok {
		t.Fatal("fleet-wide cap of 3 per minute exceeded")
	}
}
