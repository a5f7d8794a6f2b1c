package config

import (
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// sweepReplica is a config Service run as a replica of its own.
type sweepReplica struct {
	*fleettest.Replica
	s *Service
}

func (h *harness) startSweeper(name string, every time.Duration) *sweepReplica {
	h.T.Helper()
	r := &sweepReplica{Replica: h.NewReplica(name)}
	r.s = fleettest.Build(h.T, New, Config{
		Redis: r.Redis, Keys: h.Fleet.Keys(), Fleet: h.Fleet, Replica: name,
		Logger:        zerolog.New(zerolog.NewTestWriter(h.T)).Level(zerolog.ErrorLevel),
		SweepInterval: every, LeaseTTL: 300 * time.Millisecond,
	})
	r.Start(r.s.Run)
	return r
}

func (r *sweepReplica) redeliveries() float64 { return testutil.ToFloat64(r.s.m.redeliveries) }

// TestSweepLease: with two replicas running, only the holder of the sweep
// lease redelivers (one sweep per tick, not two); when it stops cleanly
// or crashes (no release: the lease expires after LeaseTTL), the other
// replica takes the lease and the sweep over.
func TestSweepLease(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash bool
	}{{"stop", false}, {"crash", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.Device("on")
			if err := h.Redis.HSet(h.Ctx, h.s.keys.Device("on"), "online", "1").Err(); err != nil {
				t.Fatal(err)
			}
			h.set("on", `{"sampling_interval":10,"upload_interval":30}`) // pending until acked: every sweep resends
			reps := []*sweepReplica{h.startSweeper("rep-a", 50*time.Millisecond), h.startSweeper("rep-b", 50*time.Millisecond)}

			var victim, survivor *sweepReplica
			deadline := time.Now().Add(5 * time.Second)
			for victim == nil {
				if time.Now().After(deadline) {
					t.Fatal("no replica swept within 5 s")
				}
				time.Sleep(10 * time.Millisecond)
				for i, r := range reps {
					if r.redeliveries() >= 5 {
						victim, survivor = r, reps[1-i]
					}
				}
			}
			if n := survivor.redeliveries(); n != 0 {
				t.Fatalf("both replicas swept: %s %v, %s %v", victim.Name, victim.redeliveries(), survivor.Name, n)
			}
			tok, _ := h.Redis.Get(h.Ctx, h.s.keys.Global("lease:config-sweep")).Result()
			if lease.ReplicaOf(tok) != victim.Name {
				t.Fatalf("lease held by %q, but %s swept", tok, victim.Name)
			}

			stopped := time.Now()
			if tc.crash {
				victim.Redis.Close()
			}
			victim.Stop(t)
			before := victim.redeliveries()
			deadline = time.Now().Add(5 * time.Second)
			for survivor.redeliveries() < 3 {
				if time.Now().After(deadline) {
					t.Fatalf("%s did not take the sweep over within 5 s", survivor.Name)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if took := time.Since(stopped); tc.crash && took < survivor.s.cfg.LeaseTTL/3 {
				t.Errorf("took over %s after a crash, before the lease (ttl %s) could have expired", took, survivor.s.cfg.LeaseTTL)
			}
			if n := victim.redeliveries(); n != before {
				t.Errorf("stopped replica still swept: %v -> %v", before, n)
			}
		})
	}
}

// TestRunSweepsAtOnce: the first lease attempt and the first sweep happen
// when Run starts, not a whole SweepInterval (30 s by default) later.
func TestRunSweepsAtOnce(t *testing.T) {
	h := newHarness(t)
	h.Device("late")
	h.set("late", `{"sampling_interval":10,"upload_interval":30}`)
	// Online, and the version was sent long ago without an ack: due.
	if err := h.Redis.HSet(h.Ctx, h.s.keys.Device("late"), "online", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := h.Redis.HSet(h.Ctx, h.s.cfgKey("late"), fSentAt, 1).Err(); err != nil {
		t.Fatal(err)
	}
	r := h.startSweeper("rep-a", time.Hour)
	deadline := time.Now().Add(3 * time.Second)
	for r.redeliveries() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no sweep within 3 s of Run with a one-hour SweepInterval")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
