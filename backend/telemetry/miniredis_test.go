package telemetry

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/devicesim/clock"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// TestMiniredis runs the ingest script on the in-process miniredis that
// store.Open uses for zero-setup runs, whose Lua and stream commands are
// reimplementations.
func TestMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	keys, err := store.NewKeys("mr:")
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(t0.Add(time.Minute))
	st, err := New(Config{Redis: rdb, Keys: keys, Now: clk.Now, Registerer: prometheus.NewRegistry(), Retention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A batch, its redelivery, and an older batch arriving late.
	for _, b := range []wire.Batch{goldenBatch(), goldenBatch(), mkBatch(1, t0.Add(-30*time.Second), 2)} {
		if err := st.Ingest(ctx, "d1", body(t, message(t, b))); err != nil {
			t.Fatal(err)
		}
	}
	s, err := st.Query(ctx, "d1", t0.Add(-time.Minute), t0.Add(time.Minute), []string{"voltage", "frequency"})
	if err != nil {
		t.Fatal(err)
	}
	if n, m := len(s.Registers[0].Points), len(s.Registers[1].Points); n != 6 || m != 5 {
		t.Errorf("%d voltage and %d frequency points, want 6 and 5", n, m)
	}
	l, err := st.Latest(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if l.Counters != (Counters{Batches: 2, Samples: 6, ReadFailures: 1, Duplicates: 1}) || len(l.Values) != 3 {
		t.Errorf("Latest = %+v", l)
	}
	if l.Values[0].Value != 230 || !l.Values[0].At.Equal(t0.Add(16*time.Second)) {
		t.Errorf("latest voltage %+v, want 230 V at t0+16s", l.Values[0])
	}

	// Two hours on, the next batch trims the expired ones.
	clk.Set(t0.Add(2 * time.Hour))
	if err := st.Ingest(ctx, "d1", body(t, message(t, mkBatch(2, t0.Add(2*time.Hour-time.Minute), 3)))); err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, st.keysOf("d1").stream).Val(); n != 1 {
		t.Errorf("stream length %d after trimming, want 1", n)
	}
}
