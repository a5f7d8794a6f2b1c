package main

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
)

// serverKeys are the Redis keys of s (its --redis-prefix).
func serverKeys(t *testing.T, s *testServer) store.Keys {
	t.Helper()
	i := slices.Index(s.args, "--redis-prefix")
	if i < 0 {
		t.Fatal("server has no --redis-prefix")
	}
	k, err := store.NewKeys(s.args[i+1])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestServeRepairsBrokenIndex: a label index broken behind the server's
// back (a missing member, a stale one: what a replica killed between the
// device write and the index write leaves) is repaired by the running
// serve on its --index-repair-interval, and by the pass at start-up;
// the selector answers right again afterwards.
func TestServeRepairsBrokenIndex(t *testing.T) {
	rdb, err := redistest.NewClient(os.Getenv(redistest.EnvURL))
	if err != nil {
		t.Skipf("no test redis: %v", err)
	}
	defer rdb.Close()
	ctx := context.Background()
	s := startServer(t, "--index-repair-interval", "200ms")
	keys := serverKeys(t, s)
	for _, a := range [][]string{{"ir-1", "site=colombo"}, {"ir-2", "site=galle"}} {
		if out, err := s.cli(t, "device", "add", a[0], "--label", a[1]); err != nil {
			t.Fatalf("device add: %v\n%s", err, out)
		}
	}
	colombo, galle := keys.LabelIndex("site", "colombo"), keys.LabelIndex("site", "galle")
	members := func(key string) []string {
		m, err := rdb.SMembers(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(m)
		return m
	}
	healthy := func() (bool, string) {
		c, g := members(colombo), members(galle)
		sel := listIDs(t, s, "--selector", "site=colombo")
		ok := reflect.DeepEqual(c, []string{"ir-1"}) && reflect.DeepEqual(g, []string{"ir-2"}) && reflect.DeepEqual(sel, []string{"ir-1"})
		return ok, fmt.Sprintf("colombo index %v, galle index %v, site=colombo lists %v", c, g, sel)
	}
	if ok, msg := healthy(); !ok {
		t.Fatalf("indexes wrong before any break: %s", msg)
	}
	breakIndex := func() {
		t.Helper()
		if err := rdb.SRem(ctx, colombo, "ir-1").Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.SAdd(ctx, galle, "ir-1").Err(); err != nil {
			t.Fatal(err)
		}
	}

	breakIndex()
	// The break is visible: the selector is narrowed by the index.
	if sel := listIDs(t, s, "--selector", "site=colombo"); len(sel) != 0 {
		t.Fatalf("site=colombo lists %v with ir-1 missing from its index", sel)
	}
	eventually(t, 10*time.Second, "the running serve to repair the index", healthy)

	// While the server is down, then a restart with a long interval:
	// only the start-up pass can repair it in time.
	s.stop(t)
	breakIndex()
	i := slices.Index(s.args, "--index-repair-interval")
	s.args[i+1] = "1h"
	s.start(t)
	eventually(t, 10*time.Second, "the start-up pass to repair the index", healthy)
}

// TestServeIndexRepairIntervalFlag: a zero or negative interval is a usage
// error, from the flag or from ECOWATT_INDEX_REPAIR_INTERVAL.
func TestServeIndexRepairIntervalFlag(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag zero", nil, []string{"serve", "--index-repair-interval", "0s"}},
		{"env negative", map[string]string{"ECOWATT_INDEX_REPAIR_INTERVAL": "-1m"}, []string{"serve"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, code, err := cliRun(tc.env, append(tc.args, "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0")...)
			if code != exitUsage || err == nil || !strings.Contains(err.Error(), "--index-repair-interval") {
				t.Fatalf("exit %d, err %v; want a usage error naming --index-repair-interval", code, err)
			}
		})
	}
}
