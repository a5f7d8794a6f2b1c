package commands

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// replica is one Service of a two-replica test, with its own Redis
// connection so that a crash can be faked by closing it.
// replica is a commands Service run as a replica of its own.
type replica struct {
	*fleettest.Replica
	svc *Service
}

func (h *harness) startReplica(name string) *replica {
	h.T.Helper()
	r := &replica{Replica: h.NewReplica(name)}
	cfg := h.cfg
	cfg.Redis, cfg.Replica = r.Redis, name
	cfg.LeaseTTL, cfg.DeliveryTick = 300*time.Millisecond, 20*time.Millisecond
	r.svc = fleettest.Build(h.T, New, cfg)
	r.Start(r.svc.Run)
	return r
}

// holder returns the replica holding lease name ("" when free).
func (h *harness) holder(name string) string {
	h.T.Helper()
	tok, err := h.Redis.Get(h.Ctx, h.svc.keys.Global(name)).Result()
	if err == redis.Nil {
		return ""
	}
	if err != nil {
		h.T.Fatal(err)
	}
	return lease.ReplicaOf(tok)
}

// waitDownlinks waits until n commands have been sent to dev.
func (h *harness) waitDownlinks(dev string, n int) {
	h.T.Helper()
	h.WaitDownlinks(dev, topics.KindCommand, n)
}

// TestLeaseTakeover: two replicas on one Redis; one holds the delivery
// lease and one the sweep lease, the holders do not change while both
// run, and commands queued on either go out once each, in order. When
// the delivery lease holder stops (cleanly, releasing its leases) or
// crashes (its Redis connection gone: its leases expire after LeaseTTL),
// the other replica takes both leases, sends the unfinished commands
// again in order, and delivers what is queued next.
func TestLeaseTakeover(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash bool
	}{{"stop", false}, {"crash", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.device("dev-1", true)
			reps := []*replica{h.startReplica("rep-a"), h.startReplica("rep-b")}
			var ids []string
			for i := range 6 {
				c, err := reps[i%2].svc.Parse([]byte(`{"action":"ping"}`))
				if err != nil {
					t.Fatal(err)
				}
				cmd, _, err := reps[i%2].svc.Submit(h.Ctx, "dev-1", "tester", c)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, cmd.ID)
			}
			h.waitDownlinks("dev-1", len(ids))

			deliverer, sweeper := h.holder("lease:command-delivery"), h.holder("lease:command-sweep")
			for range 10 { // ten sweep intervals and more delivery ticks
				time.Sleep(h.cfg.SweepInterval)
				if d, s := h.holder("lease:command-delivery"), h.holder("lease:command-sweep"); d != deliverer || s != sweeper || d == "" || s == "" {
					t.Fatalf("lease holders moved while both replicas ran: delivery %q -> %q, sweep %q -> %q", deliverer, d, sweeper, s)
				}
			}
			var victim, survivor *replica
			for _, r := range reps {
				if r.Name == deliverer {
					victim = r
				} else {
					survivor = r
				}
			}
			stopped := time.Now()
			if tc.crash {
				victim.Redis.Close() // no renewal, no release: the leases must expire
			}
			victim.Stop(t)
			for _, l := range []string{"lease:command-delivery", "lease:command-sweep"} {
				deadline := time.Now().Add(5 * time.Second)
				for h.holder(l) != survivor.Name {
					if time.Now().After(deadline) {
						t.Fatalf("%s held by %q 5 s after %s stopped", l, h.holder(l), victim.Name)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			took := time.Since(stopped)
			if tc.crash && took < survivor.svc.cfg.LeaseTTL/3 {
				t.Errorf("took over %s after a crash, before the lease (ttl %s) could have expired", took, survivor.svc.cfg.LeaseTTL)
			}
			for range 3 {
				c, _ := survivor.svc.Parse([]byte(`{"action":"ping"}`))
				cmd, _, err := survivor.svc.Submit(h.Ctx, "dev-1", "tester", c)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, cmd.ID)
			}
			// The new holder sends everything unfinished again, in order
			// (the old one may have lost it), then what is new.
			want := strings.Join(append(ids[:6:6], ids...), ",")
			h.waitDownlinks("dev-1", 6+len(ids))
			time.Sleep(5 * h.cfg.SweepInterval)
			if got := idsOf(h.downlinks("dev-1")); got != want {
				t.Fatalf("sent %s\nwant %s (each once, then all again in order at the takeover)", got, want)
			}
			for _, id := range ids {
				h.wantState(id, StateSent)
			}
		})
	}
}

// TestResultResend: a delivered command whose result does not come is
// sent again after ResultResend (the device answers from its flash), not
// before, and times out after ResultTimeout as before.
func TestResultResend(t *testing.T) {
	h := newHarness(t)
	h.device("dev-1", true)
	c := h.submit("dev-1", `{"action":"ping"}`)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	h.result("dev-1", topics.CommandResult{ID: c.ID, Status: topics.ResultDelivered})
	h.Clock.Advance(h.svc.cfg.ResultResend - time.Second)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if n := len(h.downlinks("dev-1")); n != 1 {
		t.Fatalf("%d downlinks before ResultResend, want 1", n)
	}
	h.Clock.Advance(time.Second)
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if n := len(h.downlinks("dev-1")); n != 2 {
		t.Fatalf("%d downlinks at ResultResend, want 2", n)
	}
	if got := h.wantState(c.ID, StateDelivered); got.Attempts != 2 {
		t.Errorf("attempts %d, want 2", got.Attempts)
	}
	h.svc.sendDevice(h.Ctx, "dev-1", false)
	if n := len(h.downlinks("dev-1")); n != 2 {
		t.Fatalf("%d downlinks right after a resend, want 2", n)
	}
	h.Clock.Advance(h.svc.cfg.ResultTimeout)
	if err := h.svc.sweep(h.Ctx); err != nil {
		t.Fatal(err)
	}
	h.wantState(c.ID, StateTimedOut)
}

// TestShardedDelivery: the delivery lease holder delivers through a pool
// of workers sharded by device: commands queued on the holder go out at
// once (no cmdwake, no tick), each device's in queue order, several
// devices sharing a shard; commands queued on another replica arrive
// through cmdwake.
func TestShardedDelivery(t *testing.T) {
	h := newHarness(t)
	h.cfg.DeliveryWorkers = 3
	devs := []string{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5", "dev-6", "dev-7"}
	for _, d := range devs {
		h.device(d, true)
	}
	a, b := h.startReplica("rep-a"), h.startReplica("rep-b")
	deadline := time.Now().Add(5 * time.Second)
	for h.holder("lease:command-delivery") == "" {
		if time.Now().After(deadline) {
			t.Fatal("nobody took the delivery lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	holder, other := a, b
	if h.holder("lease:command-delivery") == b.Name {
		holder, other = b, a
	}
	for !holder.svc.delivering() { // the shards are up once the takeover scan is done
		time.Sleep(time.Millisecond)
	}
	want := map[string][]string{}
	for i := range 5 {
		for _, d := range devs {
			r := holder
			if i == 4 {
				r = other // the last of each device through cmdwake
			}
			c, _ := r.svc.Parse([]byte(`{"action":"ping"}`))
			cmd, _, err := r.svc.Submit(h.Ctx, d, "tester", c)
			if err != nil {
				t.Fatal(err)
			}
			want[d] = append(want[d], cmd.ID)
		}
	}
	for _, d := range devs {
		h.waitDownlinks(d, len(want[d]))
		if got := idsOf(h.downlinks(d)); got != strings.Join(want[d], ",") {
			t.Errorf("%s: sent %s\nwant %s", d, got, strings.Join(want[d], ","))
		}
	}
}

// delivering reports whether s's delivery shards are up.
func (s *Service) delivering() bool {
	s.shardMu.Lock()
	defer s.shardMu.Unlock()
	return s.shards != nil
}

// TestShardQueue: a device is queued once per shard, keeping "resend all"
// when woken again, first come first served.
func TestShardQueue(t *testing.T) {
	sh := newShards(1)
	sh.add("a", false)
	sh.add("b", true)
	sh.add("a", true)
	sh.add("b", false)
	var got []string
	for {
		dev, all, ok := sh[0].next()
		if !ok {
			break
		}
		got = append(got, fmt.Sprint(dev, all))
	}
	if s := strings.Join(got, " "); s != "atrue btrue" {
		t.Fatalf("got %s, want atrue btrue", s)
	}
	sh.add("c", false)
	if left := sh.drain(); len(left) != 1 || left["c"] {
		t.Fatalf("drained %v, want c (not all)", left)
	}
}
