package telemetry

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// goldenBatch is the PROTOCOL.md 11.4 test vector: voltage, frequency and
// output_power every 5 s, the third frequency read failed, the fourth
// sample 1 s late.
func goldenBatch() wire.Batch {
	t := t0.UnixMilli()
	return wire.Batch{
		Seq: 12, Interval: 5 * time.Second,
		Registers: []uint8{wire.CodeVoltage, wire.CodeFrequency, wire.CodeOutputPower},
		Samples: []wire.Sample{
			{Time: t, Values: []uint16{2301, 5000, 1200}},
			{Time: t + 5000, Values: []uint16{2303, 4999, 1250}},
			{Time: t + 10000, Values: []uint16{2298, 0, 1190}, Missing: 1 << 1},
			{Time: t + 16000, Values: []uint16{2300, 5001, 1300}},
		},
		Adapter: wire.Counters{Requests: 12, Retries: 2, CRCErrors: 1, Timeouts: 1},
	}
}

func pts(start time.Time, offsets []time.Duration, vs ...float64) []Point {
	out := make([]Point, len(vs))
	for i, v := range vs {
		out[i] = Point{T: start.Add(offsets[i]), V: v}
	}
	return out
}

func TestQueryRoundTrip(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, goldenBatch()))); err != nil {
		t.Fatal(err)
	}
	// Another device's data stays apart.
	if err := e.st.Ingest(ctx, "d2", body(t, message(t, mkBatch(1, t0, 3, wire.CodeTemperature)))); err != nil {
		t.Fatal(err)
	}
	all := []time.Duration{0, 5 * time.Second, 10 * time.Second, 16 * time.Second}
	noThird := []time.Duration{0, 5 * time.Second, 16 * time.Second}
	voltage := RegisterSeries{Name: "voltage", Unit: "V", Points: pts(t0, all, 230.1, 230.3, 229.8, 230)}
	frequency := RegisterSeries{Name: "frequency", Unit: "Hz", Points: pts(t0, noThird, 50, 49.99, 50.01)}
	power := RegisterSeries{Name: "output_power", Unit: "W", Points: pts(t0, all, 1200, 1250, 1190, 1300)}
	tests := []struct {
		name     string
		from, to time.Time
		regs     []string
		want     []RegisterSeries
	}{
		{"all registers", t0, t0.Add(time.Minute), nil, []RegisterSeries{voltage, frequency, power}},
		{"chosen registers in the asked order", t0, t0.Add(time.Minute), []string{"output_power", "frequency"},
			[]RegisterSeries{power, frequency}},
		{"register without data", t0, t0.Add(time.Minute), []string{"temperature"},
			[]RegisterSeries{{Name: "temperature", Unit: "°C", Points: []Point{}}}},
		{"window inside the batch", t0.Add(5 * time.Second), t0.Add(10 * time.Second), []string{"voltage", "frequency"},
			[]RegisterSeries{
				{Name: "voltage", Unit: "V", Points: pts(t0, all[1:3], 230.3, 229.8)},
				{Name: "frequency", Unit: "Hz", Points: pts(t0, all[1:2], 49.99)},
			}},
		{"window before the data", t0.Add(-time.Hour), t0.Add(-time.Millisecond), nil, []RegisterSeries{}},
		{"zero from and to: the last hour", time.Time{}, time.Time{}, []string{"voltage"}, []RegisterSeries{voltage}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := e.st.Query(ctx, "d1", tc.from, tc.to, tc.regs)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Registers, tc.want) {
				t.Errorf("got  %+v\nwant %+v", s.Registers, tc.want)
			}
		})
	}
}

func TestQueryJSON(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, mkBatch(1, t0, 1, wire.CodeFrequency)))); err != nil {
		t.Fatal(err)
	}
	s, err := e.st.Query(ctx, "d1", t0, t0.Add(time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"device":"d1","from":"2025-06-01T12:00:00Z","to":"2025-06-01T12:00:01Z",` +
		`"registers":[{"name":"frequency","unit":"Hz","points":[{"t":"2025-06-01T12:00:00Z","v":50}]}]}`
	if string(got) != want {
		t.Errorf("JSON\n got %s\nwant %s", got, want)
	}
}

func TestQueryInvalid(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxQueryWindow = 6 * time.Hour; c.MaxPoints = 5 })
	if err := e.st.Ingest(context.Background(), "d1", body(t, message(t, mkBatch(1, t0, 3)))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		from, to time.Time
		regs     []string
		field    string
	}{
		{"from after to", t0.Add(time.Hour), t0, nil, "from"},
		{"window too large", t0.Add(-7 * time.Hour), t0, nil, "to"},
		{"unknown register name", t0, t0.Add(time.Hour), []string{"voltage", "bogus"}, "registers"},
		{"register code instead of name", t0, t0.Add(time.Hour), []string{"0"}, "registers"},
		{"too many points", t0, t0.Add(time.Hour), nil, "from"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.st.Query(context.Background(), "d1", tc.from, tc.to, tc.regs)
			if code := backend.ErrorCode(err); code != backend.CodeInvalid {
				t.Fatalf("err %v (code %q), want %q", err, code, backend.CodeInvalid)
			}
			if _, field := backend.ErrorMessage(err); field != tc.field {
				t.Errorf("field %q, want %q", field, tc.field)
			}
		})
	}
}

func TestLatest(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)

	l, err := e.st.Latest(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if l.LastUpload != nil || len(l.Values) != 0 || l.Counters != (Counters{}) {
		t.Errorf("Latest before any batch = %+v, want zero", l)
	}
	if raw, _ := json.Marshal(l); !strings.Contains(string(raw), `"last_upload":null`) || !strings.Contains(string(raw), `"values":[]`) {
		t.Errorf("Latest JSON before any batch: %s", raw)
	}

	if err := e.st.Ingest(ctx, "d1", body(t, message(t, goldenBatch()))); err != nil {
		t.Fatal(err)
	}
	// A later batch whose frequency read failed and which adds temperature:
	// frequency keeps its older value.
	upload := t0.Add(2 * time.Minute)
	e.clock.Set(upload)
	b := mkBatch(13, t0.Add(20*time.Second), 2, wire.CodeVoltage, wire.CodeFrequency, wire.CodeTemperature)
	b.Samples[1].Missing, b.Samples[1].Values[1] = 1<<1, 0
	b.Dropped = 3
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, b))); err != nil {
		t.Fatal(err)
	}
	// An older batch arriving late does not overwrite newer values.
	e.clock.Set(upload.Add(time.Second))
	old := mkBatch(11, t0.Add(-time.Minute), 2, wire.CodeVoltage)
	if err := e.st.Ingest(ctx, "d1", body(t, message(t, old))); err != nil {
		t.Fatal(err)
	}

	l, err = e.st.Latest(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	want := Latest{
		LastSample: ptr(at(25 * time.Second)),
		LastUpload: ptr(upload.Add(time.Second)),
		LastSeq:    11,
		Values: []Value{
			{Name: "voltage", Value: 230.2, Unit: "V", At: at(25 * time.Second)},
			{Name: "frequency", Value: 50, Unit: "Hz", At: at(20 * time.Second)},
			{Name: "temperature", Value: 41.6, Unit: "°C", At: at(25 * time.Second)},
			{Name: "output_power", Value: 1300, Unit: "W", At: at(16 * time.Second)},
		},
		Counters: Counters{Batches: 3, Samples: 8, Dropped: 3, ReadFailures: 2},
		Adapter:  old.Adapter,
	}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("Latest\n got %+v\nwant %+v", l, want)
	}
}

func ptr[T any](v T) *T { return &v }
