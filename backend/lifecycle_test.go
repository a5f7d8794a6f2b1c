package backend

import (
	"errors"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend/selector"
)

// TestLifecycleRefusalsChangeNothing: every refused lifecycle change is a
// clear error with its code and leaves every state key as it was.
func TestLifecycleRefusalsChangeNothing(t *testing.T) {
	h := newHarness(t)
	h.device("act")
	h.device("gone")
	if _, err := h.s.Decommission(h.ctx, "gone", Who{By: "alice", Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	before := h.snapshot()
	for _, tc := range []struct {
		name string
		do   func() error
		code string
	}{
		{"disable unknown", func() error { _, err := h.s.Disable(h.ctx, "nobody", Who{}, false); return err }, CodeNotFound},
		{"enable unknown", func() error { _, err := h.s.Enable(h.ctx, "nobody", Who{}); return err }, CodeNotFound},
		{"decommission unknown", func() error { _, err := h.s.Decommission(h.ctx, "nobody", Who{}); return err }, CodeNotFound},
		{"purge unknown", func() error { return h.s.Purge(h.ctx, "nobody", Who{}) }, CodeNotFound},
		{"decommission invalid id", func() error { _, err := h.s.Decommission(h.ctx, "a/b", Who{}); return err }, CodeNotFound},
		{"disable decommissioned", func() error { _, err := h.s.Disable(h.ctx, "gone", Who{}, true); return err }, CodeConflict},
		{"enable decommissioned", func() error { _, err := h.s.Enable(h.ctx, "gone", Who{}); return err }, CodeConflict},
		{"provision decommissioned", func() error { _, err := h.s.Provision(h.ctx, "gone"); return err }, CodeConflict},
		{"reason too long", func() error {
			_, err := h.s.Disable(h.ctx, "act", Who{Reason: strings.Repeat("r", MaxReasonLen+1)}, false)
			return err
		}, CodeInvalid},
		{"enable active (no-op)", func() error { _, err := h.s.Enable(h.ctx, "act", Who{By: "bob"}); return err }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if tc.code == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
			} else if ErrorCode(err) != tc.code {
				t.Fatalf("got %v, want code %s", err, tc.code)
			}
			h.with(t).assertUnchanged(before)
		})
	}
}

// TestDisableRefusesConnectUncached: DeviceAccess reads the state from
// Redis every time, so a change made by another replica (here: written
// straight to Redis) counts at the next connect; the derived keys stay
// cached and valid while disabled, and are gone at once on decommission.
func TestDisableRefusesConnectUncached(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	if _, err := h.s.DeviceKeys(h.ctx, "d1"); err != nil { // warm the cache
		t.Fatal(err)
	}
	if err := h.s.DeviceAccess(h.ctx, "d1"); err != nil {
		t.Fatalf("active: %v", err)
	}
	if err := h.rdb.HSet(h.ctx, h.s.keys.Device("d1"), fState, StateDisabled).Err(); err != nil {
		t.Fatal(err)
	}
	if err := h.s.DeviceAccess(h.ctx, "d1"); !errors.Is(err, ErrDisabled) {
		t.Fatalf("disabled elsewhere: %v, want ErrDisabled", err)
	}
	if _, err := h.s.Enable(h.ctx, "d1", Who{}); err != nil {
		t.Fatal(err)
	}
	if err := h.s.DeviceAccess(h.ctx, "d1"); err != nil {
		t.Fatalf("enabled: %v", err)
	}
	if _, err := h.s.Decommission(h.ctx, "d1", Who{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.DeviceKeys(h.ctx, "d1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("keys after decommission: %v, want not found (cache dropped, key destroyed)", err)
	}
	if err := h.s.DeviceAccess(h.ctx, "d1"); !errors.Is(err, ErrDecommissioned) {
		t.Fatalf("decommissioned: %v", err)
	}
}

// TestPurgeDeletesOnlyThatDevice: a purge deletes every key of the device,
// also ones the backend package does not name, and none of a device whose
// ID starts the same; the ID can then be provisioned with a new key.
func TestPurgeDeletesOnlyThatDevice(t *testing.T) {
	h := newHarness(t)
	old := h.device("a")
	h.device("a-1")
	for _, name := range []string{"cmd:01X", "tm", "fota_served:1.0.1", "cfghist"} {
		for _, id := range []string{"a", "a-1"} {
			if err := h.rdb.Set(h.ctx, h.s.keys.Dev(id, name), "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := h.s.Purge(h.ctx, "a", Who{By: "alice"}); err != nil {
		t.Fatal(err)
	}
	snap := h.snapshot()
	var sibling int
	for k := range snap {
		if strings.Contains(k, "{dev:a}") {
			t.Errorf("key %s left after purge", k)
		}
		if strings.Contains(k, "{dev:a-1}") {
			sibling++
		}
	}
	if sibling < 5 { // dev, psk and the four above (rxhigh/rxbits may be absent)
		t.Errorf("purge touched a-1: %d keys left", sibling)
	}
	ids, _ := h.rdb.ZRange(h.ctx, h.s.keys.Devices(), 0, -1).Result()
	if strings.Join(ids, ",") != "a-1" {
		t.Errorf("device index after purge: %v", ids)
	}
	fresh := h.device("a")
	if fresh.Equal(old) {
		t.Error("reprovisioned with the old key")
	}
	if evs, err := h.s.Events(h.ctx, "a", 10); err != nil || len(evs) != 0 {
		t.Errorf("reprovisioned device's timeline: %v, %v", evs, err)
	}
}

// TestDecommissionLeavesSelectors: a decommissioned device leaves the label
// indexes (no selector finds it, as it is gone from the device list), and
// its labels cannot change (409, nothing changed): the archived record
// stays as it was.
func TestDecommissionLeavesSelectors(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"gone", "kept"} {
		if _, err := h.s.ProvisionLabeled(h.ctx, id, map[string]string{"site": "colombo"}, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.s.Decommission(h.ctx, "gone", Who{By: "alice"}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"site=colombo", "site", "site in (colombo,galle)"} {
		sel, err := selector.Parse(q)
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.s.QueryDevices(h.ctx, FleetQuery{Selector: sel, Limit: 10})
		if err != nil || p.Total != 1 || len(p.Devices) != 1 || p.Devices[0].ID != "kept" {
			t.Errorf("%s: %+v %v, want only kept", q, p, err)
		}
	}
	before := h.snapshot()
	site := "galle"
	_, err := h.s.PatchLabels(h.ctx, "gone", map[string]*string{"site": &site}, "bob")
	if ErrorCode(err) != CodeConflict || !errors.Is(err, ErrDecommissioned) {
		t.Fatalf("PatchLabels on a decommissioned device = %v, want conflict", err)
	}
	h.assertUnchanged(before)
	if d, err := h.s.Device(h.ctx, "gone"); err != nil || d.Labels["site"] != "colombo" {
		t.Errorf("archived labels %v %v", d.Labels, err)
	}
}
