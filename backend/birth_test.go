package backend

import (
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/topics"
)

// TestBirthIsStrict: an authentic birth that breaks topics.ParseBirth (an
// unknown member, an over-long version, a bad config) is refused as
// invalid_body naming the member, and the device stays offline with
// nothing of the birth recorded.
func TestBirthIsStrict(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	topic := topics.DeviceUp("d1", topics.KindBirth)
	for i, tc := range []struct{ name, body, field string }{
		{"unknown member", `{"online":true,"firmware_version":"1.0.3","config_version":0,"boot_count":0,"uptime_s":0,"rssi":-60}`, "rssi"},
		{"long firmware version", `{"online":true,"firmware_version":"` + strings.Repeat("9", 32) + `","config_version":0,"boot_count":0,"uptime_s":0}`, "firmware_version"},
		{"missing boot count", `{"online":true,"firmware_version":"1.0.3","config_version":0,"uptime_s":0}`, "boot_count"},
		{"invalid config", `{"online":true,"firmware_version":"1.0.3","config_version":0,"boot_count":0,"uptime_s":0,"config":{"sampling_interval":5,"upload_interval":7,"registers":["voltage"]}}`, "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			ev := h.publish("d1", topics.EventSecurity, Message{Topic: topic, Payload: h.seal(k, topic, uint64(i+1), tc.body), Username: "d1"})
			if s := string(ev.Data); !strings.Contains(s, ReasonInvalidBody) || !strings.Contains(s, tc.field) {
				t.Fatalf("event %s: want %s naming %s", s, ReasonInvalidBody, tc.field)
			}
		})
	}
	if d, err := h.s.Device(h.ctx, "d1"); err != nil || d.Online || d.FirmwareVersion != "" {
		t.Fatalf("device after refused births: %+v, %v", d, err)
	}
}
