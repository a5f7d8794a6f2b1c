package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

type devicesDoc struct {
	Devices []struct {
		ID              string `json:"id"`
		Online          bool   `json:"online"`
		FirmwareVersion string `json:"firmware_version"`
	} `json:"devices"`
}

func countOnline(t *testing.T, s *testServer) (online, total int) {
	var d devicesDoc
	if code := s.api(t, "GET", "/api/v1/devices", nil, &d); code != 200 {
		t.Fatalf("GET devices: %d", code)
	}
	for _, dev := range d.Devices {
		if dev.Online {
			online++
		}
	}
	return online, len(d.Devices)
}

// TestFleetComesOnline is the foundation's end-to-end test: the real server
// on real Redis, 50 devices provisioned through the CLI, a devicesim fleet
// over the real broker; all online, then all offline when the fleet stops.
func TestFleetComesOnline(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "e2e", 50)
	fleet := startFleet(t, s, keys, "", nil)

	eventually(t, 60*time.Second, "50 devices online", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == 50 && total == 50, fmt.Sprintf("%d/%d online", on, total)
	})
	out, err := s.cli(t, "device", "show", "e2e-0007")
	if err != nil || !strings.Contains(out, "e2e-0007") || !strings.Contains(out, "true") {
		t.Fatalf("device show: %v\n%s", err, out)
	}
	fleet.stop(t)
	eventually(t, 30*time.Second, "all devices offline", func() (bool, string) {
		on, _ := countOnline(t, s)
		return on == 0, fmt.Sprintf("%d still online", on)
	})
}

// TestProvisioningBadInput: an invalid ID and a duplicate are refused with
// a clear error and change nothing.
func TestProvisioningBadInput(t *testing.T) {
	s := startServer(t)
	if _, err := s.cli(t, "device", "add", "ok-1"); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, id, want string }{
		{"invalid id", "bad/id", "invalid"},
		{"too long", strings.Repeat("x", 65), "invalid"},
		{"duplicate", "ok-1", "conflict"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := s.cli(t, "device", "add", tc.id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("device add %q: err=%v out=%s; want %q", tc.id, err, out, tc.want)
			}
			if _, total := countOnline(t, s); total != 1 {
				t.Fatalf("%d devices after a refused add, want 1", total)
			}
		})
	}
}

// TestDemoMode: serve --demo N provisions N devices and runs them
// in-process, so the fleet is live with no other command.
func TestDemoMode(t *testing.T) {
	s := startServer(t, "--demo", "3")
	eventually(t, 60*time.Second, "3 demo devices online", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == 3 && total == 3, fmt.Sprintf("%d/%d online", on, total)
	})
}
