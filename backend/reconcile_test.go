package backend

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/broker"
)

// rigOpts configure a reconcileRig: a presenceRig whose Service knows its
// replica and the broker's connections, as in `ecowatt serve`.
type rigOpts struct {
	rdb     redis.UniversalClient
	prefix  string
	replica string
	sweep   time.Duration
	vault   *keyvault.Vault // shared by the replicas of one test
}

// newReconcileRig starts a broker and a Service on o.rdb. stop ends the
// Service first and then the broker, so no sweep sees the connections go.
func newReconcileRig(t *testing.T, o rigOpts) (r *presenceRig, stop func()) {
	t.Helper()
	r = &presenceRig{t: t, reg: prometheus.NewRegistry()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	if r.srv, err = broker.New(broker.Config{MQTTListener: ln, Devices: rigAuth{r}, Presence: rigPresence{r}, Logger: log}); err != nil {
		t.Fatal(err)
	}
	r.s, err = New(Config{
		Redis: o.rdb, Prefix: o.prefix, Vault: o.vault, Bus: rigBus{r},
		Logger: log, Registerer: r.reg, BcryptCost: bcrypt.MinCost, Workers: 2,
		Replica: o.replica, Connections: r.srv, PresenceSweep: o.sweep,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, startRun(t, r.s, r.srv, true)
}

// crash stops r as a kill -9 would leave Redis: no disconnect report is
// recorded and the replica's heartbeat is still there until its TTL.
func (r *presenceRig) crash(stop func()) {
	r.holdReports.Store(true) // held and never released: lost
	stop()
	if err := r.s.heartbeat(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func onlineIDs(t *testing.T, s *Service) []string {
	t.Helper()
	ids, err := s.rdb.ZRange(context.Background(), s.keys.Online(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestPresenceRestartReconciles: devices online when the server crashed
// (no disconnect reported) are offline within 1.5 × keepalive of the
// restart, whether the restarted replica keeps its ID or gets a new one;
// a device that reconnects to it stays online through later sweeps.
func TestPresenceRestartReconciles(t *testing.T) {
	const keepalive = 2 * time.Second
	for _, tc := range []struct {
		name, after string
		via         string
	}{
		{"same replica ID", "r1", ViaNotHeld},
		{"new replica ID", "r2", ViaReplicaGone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, prefix := redistest.Client(t)
			vault := backendtest.Vault(t)
			a, stopA := newReconcileRig(t, rigOpts{rdb: rdb, prefix: prefix, replica: "r1", sweep: 100 * time.Millisecond, vault: vault})
			var devs []*device
			for i := range 5 {
				d := a.device(fmt.Sprintf("crash-%d", i))
				cl, _ := a.connect(d, true, keepalive)
				a.birth(cl, d, 1)
				devs = append(devs, d)
			}
			// The births' handlers finish after their events: crashing
			// before the last online-index write left 4 stale devices.
			waitFor(t, 5*time.Second, "the 5 births indexed", func() bool { return len(onlineIDs(t, a.s)) == 5 })
			a.crash(stopA)
			if got := onlineIDs(t, a.s); len(got) != 5 {
				t.Fatalf("after the crash %d devices in the online index, want the 5 stale ones", len(got))
			}

			start := time.Now()
			b, _ := newReconcileRig(t, rigOpts{rdb: rdb, prefix: prefix, replica: tc.after, sweep: 100 * time.Millisecond, vault: vault})
			b.t = t
			cl, _ := b.connect(devs[0], true, keepalive)
			b.birth(cl, devs[0], 2)
			for _, d := range devs[1:] {
				b.waitPresence(d.id, false, 0, 3*keepalive/2-time.Since(start))
			}
			t.Logf("stale presence cleared %v after the restart", time.Since(start).Round(time.Millisecond))
			if n := testutil.ToFloat64(b.s.pres.m.reconciled.WithLabelValues(tc.via)); n < 4 {
				t.Fatalf("reconciled{cause=%s} = %v, want >= 4", tc.via, n)
			}
			// Many sweeps later the reconnected device is still online.
			time.Sleep(time.Second)
			if got := onlineIDs(t, b.s); len(got) != 1 || got[0] != devs[0].id {
				t.Fatalf("online index %v, want only %s", got, devs[0].id)
			}
			b.waitPresence(devs[0].id, true, 2, time.Second)
		})
	}
}

// TestPresenceSweepKeepsConnected: devices connected to this replica or to
// another live one are never marked offline by the sweep, however old
// their last_seen; in the same sweeps a device of a dead replica and a
// silent device no replica holds are.
func TestPresenceSweepKeepsConnected(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	// A heartbeat lives 3 sweeps: at 50 ms, a 150 ms stall of r2 under a
	// loaded -race run made r1 end r2's live device (replica_gone).
	const sweep = 200 * time.Millisecond
	vault := backendtest.Vault(t)
	r1, _ := newReconcileRig(t, rigOpts{rdb: rdb, prefix: prefix, replica: "r1", sweep: sweep, vault: vault})
	r2, _ := newReconcileRig(t, rigOpts{rdb: rdb, prefix: prefix, replica: "r2", sweep: sweep, vault: vault})
	ctx := context.Background()
	keys := r1.s.keys
	old := strconv.FormatInt(time.Now().Add(-2*DefaultPresenceExpiry).UnixMilli(), 10)

	x := r1.device("keep-x")
	clx, _ := r1.connect(x, false, 30*time.Second)
	r1.birth(clx, x, 1)
	y := r1.device("keep-y")
	r2.t = t
	cly, _ := r2.connect(y, false, 30*time.Second)
	r2.birth(cly, y, 1)
	// Stale presence as a crash of replica r-dead, and as an external
	// broker leaves it (no replica, the will lost).
	for id, replica := range map[string]string{"keep-dead": "r-dead", "keep-silent": ""} {
		r1.device(id)
		f := []any{fOnline, "1", fLastSeen, old}
		if replica != "" {
			f = append(f, "replica", replica, "conn_gen", "3")
		}
		if err := rdb.HSet(ctx, keys.Device(id), f...).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ZAdd(ctx, keys.Online(), redis.Z{Score: 1, Member: id}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{x.id, y.id} {
		if err := rdb.HSet(ctx, keys.Device(id), fLastSeen, old).Err(); err != nil {
			t.Fatal(err)
		}
	}

	r1.waitPresence("keep-dead", false, 0, 5*time.Second)
	r1.waitPresence("keep-silent", false, 0, 5*time.Second)
	time.Sleep(10 * sweep)
	r1.waitPresence(x.id, true, 1, time.Millisecond)
	r1.waitPresence(y.id, true, 1, time.Millisecond)
	if got := onlineIDs(t, r1.s); len(got) != 2 {
		t.Fatalf("online index %v, want %s and %s", got, x.id, y.id)
	}
	var gone, expired float64
	for _, r := range []*presenceRig{r1, r2} {
		if n := testutil.ToFloat64(r.s.pres.m.reconciled.WithLabelValues(ViaNotHeld)); n != 0 {
			t.Fatalf("a connected device was ended as not held (%v)", n)
		}
		gone += testutil.ToFloat64(r.s.pres.m.reconciled.WithLabelValues(ViaReplicaGone))
		expired += testutil.ToFloat64(r.s.pres.m.reconciled.WithLabelValues(ViaExpired))
	}
	if gone != 1 || expired != 1 {
		t.Fatalf("replica_gone %v, expired %v; want 1 each", gone, expired)
	}
}

// TestPresenceDisconnectDuringRedisOutage: a device that disconnects
// while Redis is down is offline once Redis is back, through the retried
// disconnect report (the sweep is too slow to be the one that does it).
func TestPresenceDisconnectDuringRedisOutage(t *testing.T) {
	srv := redistest.StartServer(t) // its own, so that it can be stopped
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(srv.Port), MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	r, _ := newReconcileRig(t, rigOpts{rdb: rdb, prefix: "t:outage:", replica: "r1", sweep: time.Minute, vault: backendtest.Vault(t)})
	d := r.device("outage-1")
	events := r.presenceEvents(d.id)
	cl, _ := r.connect(d, true, 30*time.Second)
	r.birth(cl, d, 1)

	srv.Stop()
	cl.Disconnect(100)
	deadline := time.Now().Add(5 * time.Second)
	for r.s.pres.queued() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the disconnect report was not queued for retry")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * retryEvery) // retries fail while Redis is down
	srv.Start()
	r.waitPresence(d.id, false, 0, 5*time.Second)
	if q := r.s.pres.queued(); q != 0 {
		t.Fatalf("%v reports still queued", q)
	}
	if got := onlineIDs(t, r.s); len(got) != 0 {
		t.Fatalf("online index %v after the outage, want empty", got)
	}
	deadline = time.Now().Add(2 * time.Second)
	for {
		var via []any
		for _, ev := range events() {
			if ev["online"] == false {
				via = append(via, ev["via"])
			}
		}
		if len(via) == 1 && via[0] == "disconnect" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("offline events via %v, want one via disconnect", via)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
