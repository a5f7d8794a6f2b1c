package telemetry

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// badInputs are bodies Ingest must reject as CodeInvalid, storing
// nothing. mk builds the body for a store whose clock reads now.
var badInputs = []struct {
	name   string
	reason string
	is     error // the wire error the rejection wraps, if any
	mk     func(t testing.TB, now time.Time) []byte
}{
	{"truncated batch", ReasonTruncated, wire.ErrTruncated, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data = m.Data[:len(m.Data)-4]
		return body(t, m).Body
	}},
	{"truncated header", ReasonTruncated, wire.ErrTruncated, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data = m.Data[:5]
		return body(t, m).Body
	}},
	{"corrupt stream: trailing bytes", ReasonCorrupt, wire.ErrCorrupt, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data = append(m.Data, 0x00)
		return body(t, m).Body
	}},
	{"corrupt stream: unknown flags", ReasonCorrupt, wire.ErrCorrupt, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data[1] |= 0x80
		return body(t, m).Body
	}},
	{"corrupt stream: overlong varint", ReasonCorrupt, wire.ErrCorrupt, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 1, wire.CodeVoltage))
		// Replace the single value by an 11-byte varint.
		m.Data = append(m.Data[:len(m.Data)-2], 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)
		return body(t, m).Body
	}},
	{"corrupt stream: bad version", ReasonCorrupt, wire.ErrCorrupt, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data[0] = 9
		return body(t, m).Body
	}},
	{"unknown register code", ReasonUnknownRegister, wire.ErrUnknownRegister, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data[codesOffset(m.Data)+1] = 42
		return body(t, m).Body
	}},
	{"timestamps far in the future", ReasonFuture, wire.ErrFuture, func(t testing.TB, now time.Time) []byte {
		return body(t, message(t, mkBatch(1, now.Add(time.Hour), 3))).Body
	}},
	{"last timestamp just past the bound", ReasonFuture, wire.ErrFuture, func(t testing.TB, now time.Time) []byte {
		return body(t, message(t, mkBatch(1, now.Add(DefaultMaxFuture-5*time.Second), 3))).Body
	}},
	{"batch larger than the limit", ReasonTooLarge, wire.ErrTooLarge, func(t testing.TB, now time.Time) []byte {
		return body(t, message(t, mkBatch(1, t0, testMaxSamples+1))).Body
	}},
	{"data over MaxDataLen", ReasonTooLarge, wire.ErrTooLarge, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Data = make([]byte, wire.MaxDataLen+1)
		return body(t, m).Body
	}},
	{"wrong JSON: not JSON", ReasonBadJSON, nil, func(t testing.TB, now time.Time) []byte {
		return []byte("voltage=230")
	}},
	{"wrong JSON: no telemetry object", ReasonBadJSON, nil, func(t testing.TB, now time.Time) []byte {
		return []byte(`{"config_ack":{"version":1}}`)
	}},
	{"wrong JSON: telemetry null", ReasonBadJSON, nil, func(t testing.TB, now time.Time) []byte {
		return []byte(`{"telemetry":null}`)
	}},
	{"wrong JSON: seq is a string", ReasonBadJSON, nil, func(t testing.TB, now time.Time) []byte {
		return []byte(`{"telemetry":{"seq":"1","format":"dz1","data":"AQ=="}}`)
	}},
	{"wrong JSON: data not base64", ReasonBadJSON, nil, func(t testing.TB, now time.Time) []byte {
		return []byte(`{"telemetry":{"seq":1,"format":"dz1","data":"**"}}`)
	}},
	{"wrong format name", ReasonBadMessage, wire.ErrFormat, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Format = "gzip"
		return body(t, m).Body
	}},
	{"samples disagree with data", ReasonBadMessage, wire.ErrFormat, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Samples = 2
		return body(t, m).Body
	}},
	{"failures disagree with data", ReasonBadMessage, wire.ErrFormat, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Failures = 7
		return body(t, m).Body
	}},
	{"dropped out of range", ReasonBadMessage, wire.ErrFormat, func(t testing.TB, now time.Time) []byte {
		m := message(t, mkBatch(1, t0, 3))
		m.Dropped = 1 << 63
		return body(t, m).Body
	}},
}

const testMaxSamples = 64

func TestIngestBadInput(t *testing.T) {
	for _, tc := range badInputs {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.MaxSamples = testMaxSamples })
			raw := tc.mk(t, e.clock.Now())
			err := e.st.Ingest(context.Background(), "d1", envelope.Message{Nonce: 1, Body: raw})
			if err == nil {
				t.Fatal("Ingest accepted the batch")
			}
			if code := backend.ErrorCode(err); code != backend.CodeInvalid {
				t.Errorf("code %q, want %q (err %v)", code, backend.CodeInvalid, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err %v, want it to wrap %v", err, tc.is)
			}
			if got := testutil.ToFloat64(e.st.m.rejected.WithLabelValues(tc.reason)); got != 1 {
				t.Errorf("rejected{reason=%q} = %v, want 1", tc.reason, got)
			}
			if got := testutil.ToFloat64(e.st.m.batches); got != 0 {
				t.Errorf("batches_total = %v, want 0", got)
			}
			if keys := e.keys(t); len(keys) != 0 {
				t.Errorf("stored keys %v, want none", keys)
			}
		})
	}
}

func TestIngestDuplicate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	first := body(t, message(t, mkBatch(7, t0, 3)))
	for i := range 3 { // original, then two redeliveries after reconnects
		if err := e.st.Ingest(ctx, "d1", first); err != nil {
			t.Fatalf("ingest %d: %v", i, err)
		}
	}
	k := e.st.keysOf("d1")
	if n := e.rdb.XLen(ctx, k.stream).Val(); n != 1 {
		t.Fatalf("stream length %d after a batch and two redeliveries, want 1", n)
	}
	l, err := e.st.Latest(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if l.Counters.Batches != 1 || l.Counters.Samples != 3 || l.Counters.Duplicates != 2 {
		t.Errorf("counters %+v, want 1 batch, 3 samples, 2 duplicates", l.Counters)
	}
	if got := testutil.ToFloat64(e.st.m.rejected.WithLabelValues(ReasonDuplicate)); got != 2 {
		t.Errorf("rejected{duplicate} = %v, want 2", got)
	}
	s, err := e.st.Query(ctx, "d1", t0, t0.Add(time.Minute), []string{"voltage"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.Registers[0].Points); n != 3 {
		t.Errorf("%d voltage points, want 3 (not double-stored)", n)
	}

	// After a reboot seq restarts: the same seq with new samples is new.
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, mkBatch(7, t0.Add(30*time.Second), 3)))); err != nil {
		t.Fatal(err)
	}
	if n := e.rdb.XLen(ctx, k.stream).Val(); n != 2 {
		t.Errorf("stream length %d after a rebooted device reused seq 7, want 2", n)
	}
}

func TestIngestEmptyBatch(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	b := mkBatch(3, t0, 0)
	b.Dropped = 12
	m := body(t, message(t, b))
	for range 2 {
		if err := e.st.Ingest(ctx, "d1", m); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.rdb.XLen(ctx, e.st.keysOf("d1").stream).Val(); n != 0 {
		t.Errorf("stream length %d, want 0 for an empty batch", n)
	}
	l, err := e.st.Latest(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if l.Counters.Dropped != 12 || l.Counters.Batches != 1 || l.Counters.Duplicates != 1 {
		t.Errorf("counters %+v, want dropped 12 counted once", l.Counters)
	}
	if got := testutil.ToFloat64(e.st.m.missing.WithLabelValues(CauseDropped)); got != 12 {
		t.Errorf("missing_samples{dropped} = %v, want 12", got)
	}
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, func(c *Config) { c.Retention = 48 * time.Hour })
	k := e.st.keysOf("d1")
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, mkBatch(1, t0, 3)))); err != nil {
		t.Fatal(err)
	}
	if ttl := e.rdb.PTTL(ctx, k.stream).Val(); ttl <= 0 || ttl > 48*time.Hour {
		t.Errorf("stream TTL %v, want (0, 48h]", ttl)
	}

	// Three days later the first batch is past the retention: the next
	// XADD trims it, and Query no longer returns it even before.
	later := t0.Add(72 * time.Hour)
	e.clock.Set(later.Add(time.Minute))
	s, err := e.st.Query(ctx, "d1", t0, t0.Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Registers) != 0 {
		t.Errorf("query of expired data returned %+v", s.Registers)
	}
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, mkBatch(2, later, 3)))); err != nil {
		t.Fatal(err)
	}
	ids := e.rdb.XRange(ctx, k.stream, "-", "+").Val()
	if len(ids) != 1 || ids[0].Values["seq"] != "2" {
		t.Fatalf("stream after trimming: %v, want only seq 2", ids)
	}

	// A batch entirely older than the retention is dropped, not stored.
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, mkBatch(3, t0.Add(time.Hour), 3)))); err != nil {
		t.Fatalf("expired batch: %v, want nil (not the device's fault)", err)
	}
	if n := e.rdb.XLen(ctx, k.stream).Val(); n != 1 {
		t.Errorf("stream length %d after an expired batch, want 1", n)
	}
	if got := testutil.ToFloat64(e.st.m.rejected.WithLabelValues(ReasonExpired)); got != 1 {
		t.Errorf("rejected{expired} = %v, want 1", got)
	}
}

func TestIngestOutOfOrder(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	// The later batch arrives first (e.g. the device's clock stepped back,
	// or a redelivery overtook it).
	for _, b := range []wire.Batch{mkBatch(2, t0.Add(15*time.Second), 3), mkBatch(1, t0, 3)} {
		if err := e.st.Ingest(ctx, "d1", body(t, message(t, b))); err != nil {
			t.Fatal(err)
		}
	}
	s, err := e.st.Query(ctx, "d1", t0, t0.Add(time.Minute), []string{"output_power"})
	if err != nil {
		t.Fatal(err)
	}
	var got []time.Time
	for _, p := range s.Registers[0].Points {
		got = append(got, p.T)
	}
	var want []time.Time
	for i := range 6 {
		want = append(want, t0.Add(time.Duration(i)*5*time.Second))
	}
	if !slices.Equal(got, want) {
		t.Errorf("points at %v, want %v", got, want)
	}
	// A query window that holds only the late-arriving batch finds it
	// although its stream ID is later than its samples.
	s, err = e.st.Query(ctx, "d1", t0, t0.Add(5*time.Second), []string{"output_power"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.Registers[0].Points); n != 2 {
		t.Errorf("%d points in [t0, t0+5s], want 2", n)
	}
}

func TestIngestMetrics(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	b := mkBatch(1, t0, 4)
	b.Samples[2].Missing, b.Samples[2].Values[1] = 1<<1, 0
	b.Dropped = 2
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, b))); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		got  float64
		want float64
	}{
		"batches":                {testutil.ToFloat64(e.st.m.batches), 1},
		"samples":                {testutil.ToFloat64(e.st.m.samples), 4},
		"missing{dropped}":       {testutil.ToFloat64(e.st.m.missing.WithLabelValues(CauseDropped)), 2},
		"missing{read_failure}":  {testutil.ToFloat64(e.st.m.missing.WithLabelValues(CauseReadFailure)), 1},
		"rejected{bad_json}":     {testutil.ToFloat64(e.st.m.rejected.WithLabelValues(ReasonBadJSON)), 0},
		"registered collectors":  {float64(testutil.CollectAndCount(e.reg)), float64(2 + len(allReasons) + 2)},
		"rejected{unknown_code}": {testutil.ToFloat64(e.st.m.rejected.WithLabelValues(ReasonUnknownRegister)), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", name, tc.got, tc.want)
		}
	}
}
