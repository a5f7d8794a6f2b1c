package backend

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// TestTakeoverAcrossReplicas: a CONNECT reports a takeover to
// Config.Takeover only when the device's newest connection is still open
// and was recorded by another replica, with the new generation.
func TestTakeoverAcrossReplicas(t *testing.T) {
	var mu sync.Mutex
	var got []string
	h := newHarness(t, func(c *Config) {
		c.Replica = "r1"
		c.Takeover = func(dev, replica string, gen uint64) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s:%s@%d", dev, replica, gen))
		}
	})
	for _, tc := range []struct {
		name      string
		replica   string
		gen, down int
		want      []string
	}{
		{"open on another replica", "r0", 3, 2, []string{"d1:r0@4"}},
		{"ended on another replica", "r0", 3, 3, nil},
		{"open on this replica", "r1", 3, 2, nil},
		{"never connected", "", 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			id := "d1"
			h.rdb.Del(h.ctx, h.s.keys.Device(id))
			h.with(t).device(id)
			if tc.replica != "" {
				if err := h.rdb.HSet(h.ctx, h.s.keys.Device(id), "replica", tc.replica, "conn_gen", tc.gen, "conn_down", tc.down).Err(); err != nil {
					t.Fatal(err)
				}
			}
			gen, err := h.s.DeviceConnected(h.ctx, id)
			if err != nil || gen != uint64(tc.gen+1) {
				t.Fatalf("DeviceConnected: %d %v, want %d", gen, err, tc.gen+1)
			}
			if r := h.rdb.HGet(h.ctx, h.s.keys.Device(id), "replica").Val(); r != "r1" {
				t.Fatalf("holder %q, want r1", r)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(got, tc.want) {
				t.Fatalf("takeovers %v, want %v", got, tc.want)
			}
		})
	}
}
