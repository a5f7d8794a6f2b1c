package backend

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/topics"
)

func sp(s string) *string { return &s }

func TestProvisionLabeled(t *testing.T) {
	h := newHarness(t)
	labels := map[string]string{"site": "colombo", "model": "SG5K"}
	if _, err := h.s.ProvisionLabeled(h.ctx, "inv-1", labels, "alice"); err != nil {
		t.Fatal(err)
	}
	d, err := h.s.Device(h.ctx, "inv-1")
	if err != nil || !maps.Equal(d.Labels, labels) {
		t.Fatalf("Device = %+v, %v", d.Labels, err)
	}
	evs, err := h.s.Events(h.ctx, "inv-1", 10)
	if err != nil || len(evs) != 1 || evs[0].Kind != topics.EventLabels {
		t.Fatalf("events = %+v, %v", evs, err)
	}
	var data struct {
		Labels map[string]string
		Via    string
		By     string
	}
	if err := json.Unmarshal(evs[0].Data, &data); err != nil || !maps.Equal(data.Labels, labels) || data.Via != "provision" || data.By != "alice" {
		t.Fatalf("event data %s", evs[0].Data)
	}
	h.bus.WaitSent(t, topics.Event("inv-1", topics.EventLabels), 1, 5*time.Second)

	// A device without labels shows {} and records no labels event.
	if _, err := h.s.Provision(h.ctx, "inv-2"); err != nil {
		t.Fatal(err)
	}
	if d, _ := h.s.Device(h.ctx, "inv-2"); d.Labels == nil || len(d.Labels) != 0 {
		t.Fatalf("labels of an unlabelled device = %#v", d.Labels)
	}
	if evs, _ := h.s.Events(h.ctx, "inv-2", 10); len(evs) != 0 {
		t.Fatalf("unlabelled provisioning recorded %+v", evs)
	}

	// Bad labels: CodeInvalid naming the label, and no device.
	many := map[string]string{}
	for i := range 17 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		field  string
	}{
		{"bad key", map[string]string{"Site": "x"}, "labels.Site"},
		{"reserved key", map[string]string{"firmware": "x"}, "labels.firmware"},
		{"bad value", map[string]string{"site": "a,b"}, "labels.site"},
		{"long value", map[string]string{"site": strings.Repeat("x", 64)}, "labels.site"},
		{"too many", many, "labels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := backendtest.Snapshot(t, h.rdb, h.prefix)
			_, err := h.s.ProvisionLabeled(h.ctx, "inv-bad", tc.labels, "")
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalid || e.Field != tc.field {
				t.Fatalf("err = %v; want invalid on %s", err, tc.field)
			}
			backendtest.AssertUnchanged(t, h.rdb, h.prefix, before)
		})
	}
}

func TestPatchLabels(t *testing.T) {
	h := newHarness(t)
	if _, err := h.s.ProvisionLabeled(h.ctx, "inv-1", map[string]string{"site": "colombo", "model": "SG5K"}, ""); err != nil {
		t.Fatal(err)
	}
	ch, err := h.s.PatchLabels(h.ctx, "inv-1", map[string]*string{"site": sp("galle"), "model": nil, "beta": sp("")}, "bob")
	want := map[string]string{"site": "galle", "beta": ""}
	if err != nil || !ch.Changed || !maps.Equal(ch.Labels, want) {
		t.Fatalf("PatchLabels = %+v, %v", ch, err)
	}
	if d, _ := h.s.Device(h.ctx, "inv-1"); !maps.Equal(d.Labels, want) {
		t.Fatalf("stored labels %v", d.Labels)
	}
	evs, _ := h.s.Events(h.ctx, "inv-1", 10)
	if len(evs) != 2 || evs[0].Kind != topics.EventLabels {
		t.Fatalf("events %+v", evs)
	}
	var data struct {
		Changed map[string]*string
		By, Via string
	}
	if err := json.Unmarshal(evs[0].Data, &data); err != nil || data.By != "bob" || data.Via != "patch" ||
		len(data.Changed) != 3 || data.Changed["model"] != nil || *data.Changed["site"] != "galle" {
		t.Fatalf("event data %s", evs[0].Data)
	}

	// No change: no event.
	if ch, err := h.s.PatchLabels(h.ctx, "inv-1", map[string]*string{"site": sp("galle"), "gone": nil}, ""); err != nil || ch.Changed {
		t.Fatalf("no-op patch = %+v, %v", ch, err)
	}
	if evs, _ := h.s.Events(h.ctx, "inv-1", 10); len(evs) != 2 {
		t.Fatalf("a no-op patch recorded an event: %+v", evs)
	}
	// Deleting the last label removes the field.
	if ch, err := h.s.PatchLabels(h.ctx, "inv-1", map[string]*string{"site": nil, "beta": nil}, ""); err != nil || len(ch.Labels) != 0 {
		t.Fatalf("delete all = %+v, %v", ch, err)
	}
	if n, _ := h.rdb.HExists(h.ctx, h.s.keys.Device("inv-1"), fLabels).Result(); n {
		t.Fatal("labels field kept after the last label went")
	}

	fill := map[string]*string{}
	for i := range 17 {
		fill[fmt.Sprintf("k%d", i)] = sp("v")
	}
	for _, tc := range []struct {
		name  string
		id    string
		patch map[string]*string
		code  string
		field string
	}{
		{"bad key", "inv-1", map[string]*string{"a b": sp("x")}, CodeInvalid, "labels.a b"},
		{"bad value", "inv-1", map[string]*string{"site": sp("(x)")}, CodeInvalid, "labels.site"},
		{"too many", "inv-1", fill, CodeInvalid, "labels"},
		{"unknown device", "nobody", map[string]*string{"site": sp("x")}, CodeNotFound, "id"},
		{"invalid device ID", "a/b", map[string]*string{"site": sp("x")}, CodeNotFound, "id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := backendtest.Snapshot(t, h.rdb, h.prefix)
			_, err := h.s.PatchLabels(h.ctx, tc.id, tc.patch, "")
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || e.Field != tc.field {
				t.Fatalf("err = %v; want %s on %s", err, tc.code, tc.field)
			}
			backendtest.AssertUnchanged(t, h.rdb, h.prefix, before)
		})
	}
}
