package jobs

import (
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
)

// Every bad job body is a clear error naming the field, and creates
// nothing: not a key changes.
func TestCreateRejectsBadBodies(t *testing.T) {
	h := newHarness(t)
	h.device("v1", map[string]string{"site": "colombo"})
	s := h.engine()
	future := h.clk.Now().Add(-1).Format("2006-01-02T15:04:05Z")
	cases := []struct {
		name, body, code, field, want string
	}{
		{"not json", `{`, backend.CodeInvalid, "", "bad job body"},
		{"unknown field", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"speed":1}`, backend.CodeInvalid, "", "unknown field"},
		{"no target", `{"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "selector", "target"},
		{"both targets", `{"selector":"site=colombo","devices":["v1"],"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "selector", "not both"},
		{"all and a selector", `{"all":true,"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "selector", "not both"},
		{"bad selector", `{"selector":"site=(","config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "selector", "at byte"},
		{"no action", `{"selector":"site=colombo","max_per_minute":10}`, backend.CodeInvalid, "action", "exactly one action"},
		{"two actions", `{"selector":"site=colombo","config":{"sampling_interval":10},"command":{"action":"reboot"},"max_per_minute":10}`, backend.CodeInvalid, "action", "has 2"},
		{"bad config field", `{"selector":"site=colombo","config":{"sampling_interval":0},"max_per_minute":10}`, backend.CodeInvalid, "config", "sampling_interval"},
		{"unknown config field", `{"selector":"site=colombo","config":{"colour":"red"},"max_per_minute":10}`, backend.CodeInvalid, "config", "colour"},
		{"bad command", `{"selector":"site=colombo","command":{"action":"explode"},"max_per_minute":10}`, backend.CodeInvalid, "command", "explode"},
		{"command with request_id", `{"selector":"site=colombo","command":{"action":"reboot","request_id":"x"},"max_per_minute":10}`, backend.CodeInvalid, "command.request_id", "request_id"},
		{"rotate_key with a field", `{"selector":"site=colombo","rotate_key":{"key":"00"},"max_per_minute":10}`, backend.CodeInvalid, "", "unknown field"},
		{"rotate_key and config", `{"selector":"site=colombo","rotate_key":{},"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "action", "has 2"},
		{"firmware without FOTA", `{"selector":"site=colombo","firmware":{"version":"9.9.9"},"max_per_minute":10}`, backend.CodeUnavailable, "firmware", "not served"},
		{"zero rate", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":0}`, backend.CodeInvalid, "max_per_minute", "1-"},
		{"negative rate", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":-5}`, backend.CodeInvalid, "max_per_minute", "1-"},
		{"batch above rate", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"batch_size":11}`, backend.CodeInvalid, "batch_size", "at most max_per_minute"},
		{"abort percent 100", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"abort":{"max_failure_percent":100,"min_executed":5}}`, backend.CodeInvalid, "abort.max_failure_percent", "below 100"},
		{"abort min 0", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"abort":{"max_failure_percent":10,"min_executed":0}}`, backend.CodeInvalid, "abort.min_executed", "at least 1"},
		{"negative canary", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"canary":-1}`, backend.CodeInvalid, "canary", "0-"},
		{"expired", `{"selector":"site=colombo","config":{"sampling_interval":10},"max_per_minute":10,"expires_at":"` + future + `"}`, backend.CodeInvalid, "expires_at", "not in the future"},
		{"bad device id", `{"devices":["a/b"],"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "devices", "devices[0]"},
		{"unknown device", `{"devices":["v1","ghost"],"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "devices", "ghost"},
		{"device twice", `{"devices":["v1","v1"],"config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeInvalid, "devices", "twice"},
		{"future with list", `{"devices":["v1"],"config":{"sampling_interval":10},"max_per_minute":10,"include_future":true}`, backend.CodeInvalid, "include_future", "selector"},
		{"matches nothing", `{"selector":"site=nowhere","config":{"sampling_interval":10},"max_per_minute":10}`, backend.CodeConflict, "selector", "matches no device"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := backendtest.Snapshot(t, h.rdb, h.prefix)
			_, err := s.Create(h.ctx, []byte(c.body), "tester")
			var be *backend.Error
			if err == nil || !asErr(err, &be) || be.Code != c.code || be.Field != c.field || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v (%+v), want %s on %q containing %q", err, be, c.code, c.field, c.want)
			}
			backendtest.AssertUnchanged(t, h.rdb, h.prefix, before, "jobs:cursorkey")
		})
	}
}

// Bad page queries are refused: a cursor from another state or altered,
// a limit out of range, an unknown state.
func TestDevicesPageBadQueries(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"a1", "a2", "a3"} {
		h.device(id, nil)
	}
	s := h.engine()
	j := h.create(s, `{"devices":["a1","a2","a3"],"config":{"sampling_interval":10},"max_per_minute":10}`)
	p, err := s.Devices(h.ctx, j.ID, "", "", 1)
	if err != nil || p.Next == "" || p.Total != 3 {
		t.Fatalf("page %+v %v", p, err)
	}
	for name, q := range map[string]func() error{
		"other state": func() error { _, err := s.Devices(h.ctx, j.ID, DevQueued, p.Next, 1); return err },
		"tampered":    func() error { _, err := s.Devices(h.ctx, j.ID, "", "YTI."+p.Next[4:], 1); return err },
		"limit 0":     func() error { _, err := s.Devices(h.ctx, j.ID, "", "", -1); return err },
		"limit big":   func() error { _, err := s.Devices(h.ctx, j.ID, "", "", MaxPageSize+1); return err },
		"bad state":   func() error { _, err := s.Devices(h.ctx, j.ID, "broken", "", 1); return err },
	} {
		if err := q(); backend.ErrorCode(err) != backend.CodeInvalid {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	next, err := s.Devices(h.ctx, j.ID, "", p.Next, 5)
	if err != nil || len(next.Devices) != 2 || next.Devices[0].Device != "a2" {
		t.Fatalf("second page %+v %v", next, err)
	}
	if _, err := s.Get(h.ctx, "nope"); backend.ErrorCode(err) != backend.CodeNotFound {
		t.Errorf("unknown job: %v", err)
	}
}
