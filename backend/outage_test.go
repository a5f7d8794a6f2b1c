package backend

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// outageRig is a Service on a redis-server of the test's own, with a
// telemetry handler that stores each message's body in a Redis list.
type outageRig struct {
	t   *testing.T
	rs  *redistest.Server
	rdb redis.UniversalClient
	s   *Service
	bus *backendtest.TestBus[Message]
	k   *envelope.Keys
}

const outageDev = "out-1"

func newOutageRig(t *testing.T, retryFor time.Duration, retryQueue int) *outageRig {
	t.Helper()
	rs := redistest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rdb, closeRedis, err := store.Open(ctx, rs.URL, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeRedis() })
	r := &outageRig{t: t, rs: rs, rdb: rdb, bus: backendtest.Bus[Message](t)}
	r.s, err = New(Config{
		Redis: rdb, Vault: backendtest.Vault(t), Bus: r.bus,
		Logger:     zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel),
		Registerer: prometheus.NewRegistry(), BcryptCost: bcrypt.MinCost, Workers: 2, QueueSize: 8,
		RetryFor: retryFor, RetryQueue: retryQueue,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.s.Handle(topics.KindTelemetry, func(ctx context.Context, dev string, m envelope.Message) error {
		return r.rdb.RPush(ctx, "stored:"+dev, m.Body).Err()
	})
	psk, err := r.s.Provision(ctx, outageDev)
	if err != nil {
		t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	r.k = &k
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.s.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	r.bus.WaitSubscribed(t, 2, 5*time.Second)
	return r
}

// send delivers telemetry message n (nonce n, body {"n":n}).
func (r *outageRig) send(n int) {
	topic := topics.DeviceUp(outageDev, topics.KindTelemetry)
	env, err := envelope.Seal(r.k, topic, uint64(n), time.Now(), []byte(`{"n":`+strconv.Itoa(n)+`}`), false, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	r.bus.Deliver(Message{Topic: topic, Payload: env, Username: outageDev})
}

func (r *outageRig) stored() []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, _ := r.rdb.LRange(ctx, "stored:"+outageDev, 0, -1).Result()
	return v
}

func (r *outageRig) dropped(reason string) float64 {
	return testutil.ToFloat64(r.s.m.uplinkDropped.WithLabelValues(topics.KindTelemetry, reason))
}

// TestUplinkSurvivesRedisOutage stops Redis for 3 s while a device keeps
// sending (the broker has acknowledged each message): every message sent
// during the outage is stored, in order, once Redis is back, and nothing is
// counted dropped. Before the retry queue they were logged and dropped.
// The configured bound in production is RetryFor's default, 2 min; here it
// is 20 s, longer than the outage.
func TestUplinkSurvivesRedisOutage(t *testing.T) {
	r := newOutageRig(t, 20*time.Second, 64)
	r.send(1)
	waitFor(t, 5*time.Second, "message before the outage stored", func() bool { return len(r.stored()) == 1 })

	r.rs.Stop()
	const during = 30
	sent := time.Now()
	for n := 2; n < 2+during; n++ {
		r.send(n)
		time.Sleep(100 * time.Millisecond)
	}
	if took := time.Since(sent); took > 5*time.Second {
		t.Errorf("delivering %d messages during the outage took %v: the workers blocked the publishers", during, took)
	}
	r.rs.Start()
	waitFor(t, 15*time.Second, "every message stored after the outage", func() bool { return len(r.stored()) == 1+during })
	got := r.stored()
	for i, b := range got {
		if want := fmt.Sprintf(`{"n":%d}`, i+1); b != want {
			t.Fatalf("stored[%d] = %s, want %s (all: %v)", i, b, want, got)
		}
	}
	for _, reason := range []string{DropStoreUnavailable, DropError, DropShutdown} {
		if n := r.dropped(reason); n != 0 {
			t.Errorf("dropped{reason=%s} = %v, want 0", reason, n)
		}
	}
	if n := testutil.ToFloat64(r.s.m.uplinkRetrying); n != 0 {
		t.Errorf("retrying gauge %v after recovery, want 0", n)
	}
}

// TestUplinkOutageLongerThanRetryFor: past RetryFor a held message is
// given up and counted with its kind.
func TestUplinkOutageLongerThanRetryFor(t *testing.T) {
	r := newOutageRig(t, time.Second, 64)
	r.send(1)
	waitFor(t, 5*time.Second, "message before the outage stored", func() bool { return len(r.stored()) == 1 })
	r.rs.Stop()
	r.send(2)
	r.send(3)
	waitFor(t, 10*time.Second, "two drops counted", func() bool { return r.dropped(DropStoreUnavailable) == 2 })
	r.rs.Start()
	r.send(4)
	waitFor(t, 10*time.Second, "message after the outage stored", func() bool { return len(r.stored()) == 2 })
	if got := r.stored(); got[1] != `{"n":4}` {
		t.Errorf("stored %v, want messages 1 and 4", got)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
