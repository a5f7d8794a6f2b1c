package telemetry

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// DefaultQuerySpan is the window of a Query whose from is zero: the last
// hour before to.
const DefaultQuerySpan = time.Hour

// Series is the answer of Query, ready to serve as JSON.
type Series struct {
	Device    string           `json:"device"`
	From      time.Time        `json:"from"`
	To        time.Time        `json:"to"`
	Registers []RegisterSeries `json:"registers"`
}

// RegisterSeries is one register's readings, in engineering units, in time
// order. Readings the device could not take are absent.
type RegisterSeries struct {
	Name   string  `json:"name"`
	Unit   string  `json:"unit"`
	Points []Point `json:"points"`
}

// Point is one reading: raw value / gain, at T.
type Point struct {
	T time.Time `json:"t"`
	V float64   `json:"v"`
}

// Latest is a device's most recent telemetry, ready to serve as JSON.
// LastUpload and LastSample are nil before the first batch.
type Latest struct {
	LastUpload *time.Time    `json:"last_upload"`
	LastSample *time.Time    `json:"last_sample"`
	LastSeq    uint64        `json:"last_seq"`
	Values     []Value       `json:"values"`
	Counters   Counters      `json:"counters"`
	Adapter    wire.Counters `json:"adapter"` // Modbus adapter counters of the last batch (since the device's boot)
}

// Value is the latest reading of one register.
type Value struct {
	Name  string    `json:"name"`
	Value float64   `json:"value"`
	Unit  string    `json:"unit"`
	At    time.Time `json:"at"`
}

// Counters are a device's telemetry totals since its first batch.
type Counters struct {
	Batches      uint64 `json:"batches"`       // batches stored
	Samples      uint64 `json:"samples"`       // sample slots stored
	Dropped      uint64 `json:"dropped"`       // slots the device reported lost
	ReadFailures uint64 `json:"read_failures"` // register readings the device reported missing
	Duplicates   uint64 `json:"duplicates"`    // redelivered batches not stored again
}

// Query returns dev's readings with from <= t <= to of the named registers
// (every register present in the data when names is empty), scaled, with
// names and units. A zero to means now; a zero from means to minus
// DefaultQuerySpan. Readings older than the retention are not returned.
// Bad arguments (from after to, a window over MaxQueryWindow, an unknown
// register name, more than MaxPoints readings) return a *backend.Error with
// CodeInvalid. Query does not check that dev exists.
func (s *Store) Query(ctx context.Context, dev string, from, to time.Time, names []string) (Series, error) {
	now := s.now()
	if to.IsZero() {
		to = now
	}
	if from.IsZero() {
		from = to.Add(-DefaultQuerySpan)
	}
	switch {
	case from.After(to):
		return Series{}, backend.Errorf(backend.CodeInvalid, "from", "from %s is after to %s", from.Format(time.RFC3339), to.Format(time.RFC3339))
	case to.Sub(from) > s.cfg.MaxQueryWindow:
		return Series{}, backend.Errorf(backend.CodeInvalid, "to", "window %v is longer than %v", to.Sub(from), s.cfg.MaxQueryWindow)
	}
	var want, all [wire.NumRegisters]bool
	var order []uint8
	for _, name := range names {
		reg, ok := wire.RegisterByName(name)
		if !ok {
			return Series{}, backend.Errorf(backend.CodeInvalid, "registers", "unknown register %q", name)
		}
		if !want[reg.Code] {
			want[reg.Code] = true
			order = append(order, reg.Code)
		}
	}
	if len(names) == 0 {
		for c := range all {
			all[c] = true
		}
	}
	out := Series{Device: dev, From: from.UTC(), To: to.UTC(), Registers: []RegisterSeries{}}
	var series [wire.NumRegisters][]Point
	var seen [wire.NumRegisters]bool
	total := 0
	if err := s.scan(ctx, dev, from, to, func(b wire.Batch, lo, hi int64) error {
		for j, code := range b.Registers {
			if !want[code] && !all[code] {
				continue
			}
			seen[code] = true
			reg, _ := wire.RegisterByCode(code)
			for _, smp := range b.Samples {
				if smp.Time < lo || smp.Time > hi || !smp.Present(j) {
					continue
				}
				series[code] = append(series[code], Point{T: time.UnixMilli(smp.Time).UTC(), V: reg.Scale(smp.Values[j])})
				total++
			}
		}
		if total > s.cfg.MaxPoints {
			return backend.Errorf(backend.CodeInvalid, "from", "window holds more than %d readings; narrow it", s.cfg.MaxPoints)
		}
		return nil
	}); err != nil {
		return Series{}, err
	}
	if len(names) == 0 {
		for c := range wire.NumRegisters {
			if seen[c] {
				order = append(order, uint8(c))
			}
		}
	}
	for _, code := range order {
		reg, _ := wire.RegisterByCode(code)
		pts := series[code]
		if pts == nil {
			pts = []Point{}
		}
		if !slices.IsSortedFunc(pts, cmpPoint) {
			slices.SortStableFunc(pts, cmpPoint)
		}
		out.Registers = append(out.Registers, RegisterSeries{Name: reg.Name, Unit: reg.Unit, Points: pts})
	}
	return out, nil
}

func cmpPoint(a, b Point) int { return a.T.Compare(b.T) }

// scan calls fn with every stored batch of dev that may hold readings in
// [from, to], and the bounds in ms, clamped to the retention.
func (s *Store) scan(ctx context.Context, dev string, from, to time.Time, fn func(b wire.Batch, lo, hi int64) error) error {
	lo := max(from.UnixMilli(), s.now().Add(-s.cfg.Retention).UnixMilli())
	hi := to.UnixMilli()
	if lo > hi {
		return nil
	}
	k := s.keysOf(dev)
	st, err := s.rdb.HMGet(ctx, k.state, "span", "lag").Result()
	if err != nil {
		return fmt.Errorf("query telemetry %s: %w", dev, err)
	}
	span, lag := atoi(st[0]), atoi(st[1])
	start := "-"
	if x := lo - span; x > 0 {
		start = strconv.FormatInt(x, 10)
	}
	entries, err := s.rdb.XRange(ctx, k.stream, start, strconv.FormatInt(hi+lag, 10)).Result()
	if err != nil {
		return fmt.Errorf("query telemetry %s: %w", dev, err)
	}
	for _, e := range entries {
		f, l := atoi(e.Values["f"]), atoi(e.Values["l"])
		if l < lo || f > hi {
			continue
		}
		data, _ := e.Values["d"].(string)
		b, err := wire.Decode([]byte(data), wire.Limits{})
		if err != nil {
			return fmt.Errorf("query telemetry %s: stored batch %s: %w", dev, e.ID, err)
		}
		if err := fn(b, lo, hi); err != nil {
			return err
		}
	}
	return nil
}

// Latest returns dev's latest value of every register it has reported,
// its last upload and its counters. A device without telemetry gets a
// zero Latest (no values, nil times), not an error.
func (s *Store) Latest(ctx context.Context, dev string) (Latest, error) {
	h, err := s.rdb.HGetAll(ctx, s.keysOf(dev).state).Result()
	if err != nil {
		return Latest{}, fmt.Errorf("latest telemetry %s: %w", dev, err)
	}
	out := Latest{
		LastUpload: msTime(h["last_upload"]),
		LastSample: msTime(h["last_sample"]),
		LastSeq:    atou(h["last_seq"]),
		Values:     []Value{},
		Counters: Counters{
			Batches:      atou(h["batches"]),
			Samples:      atou(h["samples"]),
			Dropped:      atou(h["dropped"]),
			ReadFailures: atou(h["failures"]),
			Duplicates:   atou(h["duplicates"]),
		},
		Adapter: wire.Counters{
			Requests:    atou(h[adapterPrefix+"requests"]),
			Retries:     atou(h[adapterPrefix+"retries"]),
			CRCErrors:   atou(h[adapterPrefix+"crc_errors"]),
			FrameErrors: atou(h[adapterPrefix+"frame_errors"]),
			Exceptions:  atou(h[adapterPrefix+"exceptions"]),
			Timeouts:    atou(h[adapterPrefix+"timeouts"]),
			Failures:    atou(h[adapterPrefix+"failures"]),
		},
	}
	for _, reg := range wire.Registers() {
		ms, raw, ok := strings.Cut(h[latestPrefix+reg.Name], ":")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(raw, 10, 16)
		if err != nil {
			continue
		}
		out.Values = append(out.Values, Value{Name: reg.Name, Value: reg.Scale(uint16(v)), Unit: reg.Unit, At: time.UnixMilli(atoi(ms)).UTC()})
	}
	return out, nil
}

// atoi parses a Redis integer reply (string or nil); anything else is 0.
func atoi(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func atou(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

func msTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	t := time.UnixMilli(atoi(s)).UTC()
	return &t
}
