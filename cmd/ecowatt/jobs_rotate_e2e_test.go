package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// TestJobRotateKeyCLI: `job create --rotate-key` rotates every simulated
// device's key through the job engine; the job completes with every part
// succeeded, each rotation confirmed by the job, and the devices online
// on their new keys.
func TestJobRotateKeyCLI(t *testing.T) {
	s := startServer(t, "--job-tick", "100ms", "--key-resend", "1s")
	keys := s.provision(t, "rkj", 3)
	for id, key := range keys {
		sd := &rotDevice{id: id, key: key, dir: t.TempDir()}
		sd.start(t, s, nil)
		t.Cleanup(func() { sd.stop(t) })
	}
	eventually(t, 15*time.Second, "all devices online", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == total && total == len(keys), fmt.Sprintf("%d of %d online", on, total)
	})
	out, err := s.cli(t, "job", "create", "--selector", "id~rkj-", "--rotate-key", "--max-per-minute", "600")
	if err != nil {
		t.Fatalf("job create: %v\n%s", err, out)
	}
	jid := regexp.MustCompile(`job (\w+) \(rotate_key\) created for 3 devices`).FindStringSubmatch(out)
	if jid == nil {
		t.Fatalf("job create said %q", out)
	}
	out, err = s.cli(t, "job", "status", jid[1], "--watch", "--timeout", "60s")
	if err != nil || !strings.Contains(out, "COMPLETED") || !strings.Contains(out, "succeeded 3") {
		t.Fatalf("job status --watch: %v\n%s", err, out)
	}
	for id := range keys {
		var r backend.Rotation
		if st := s.api(t, "GET", "/api/v1/devices/"+id+"/rotate-key", nil, &r); st != 200 || r.State != backend.RotationConfirmed || r.By != "job:"+jid[1] {
			t.Errorf("%s: rotation %d %+v, want confirmed by job:%s", id, st, r, jid[1])
		}
	}
	if out, err := s.cli(t, "job", "create", "--selector", "id~rkj-", "--rotate-key", "--config", "sampling_interval=2", "--max-per-minute", "60"); err == nil ||
		!strings.Contains(out+err.Error(), "exactly one action") {
		t.Errorf("two actions: %v\n%s", err, out)
	}
	eventually(t, 15*time.Second, "all devices online on their new keys", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == total, fmt.Sprintf("%d of %d online", on, total)
	})
}
