package telemetry

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// t0 is 2025-06-01T12:00:00Z in Unix milliseconds.
const t0 = 1748779200000

// goldenBatch is the small batch pinned by testdata/golden_dz1.hex and
// documented in docs/PROTOCOL.md: voltage, frequency and output_power every
// 5 s, the third sample's frequency read failed, the last sample 1 s late.
func goldenBatch() Batch {
	return Batch{
		Interval:  5 * time.Second,
		Registers: []uint8{CodeVoltage, CodeFrequency, CodeOutputPower},
		Samples: []Sample{
			{Time: t0, Values: []uint16{2301, 5000, 1200}},
			{Time: t0 + 5000, Values: []uint16{2303, 4999, 1250}},
			{Time: t0 + 10000, Values: []uint16{2298, 0, 1190}, Missing: 1 << 1},
			{Time: t0 + 16000, Values: []uint16{2300, 5001, 1300}},
		},
	}
}

func TestGolden(t *testing.T) {
	got, err := Encode(goldenBatch())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "golden_dz1.hex")
	if *update {
		if err := os.WriteFile(path, []byte(hex.EncodeToString(got)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding changed:\n got %x\nwant %x", got, want)
	}
	back, err := Decode(want, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, goldenBatch()) {
		t.Fatalf("decode(golden) = %+v", back)
	}
}

// randomBatch draws a batch with random registers, times, gaps and values.
func randomBatch(r *rand.Rand) Batch {
	nreg := 1 + r.IntN(NumRegisters)
	regs := r.Perm(NumRegisters)[:nreg]
	b := Batch{Interval: time.Duration(r.IntN(60_000)) * time.Millisecond}
	for _, c := range regs {
		b.Registers = append(b.Registers, uint8(c))
	}
	n := r.IntN(300)
	if r.IntN(20) == 0 {
		n = MaxSamples
	}
	ts := r.Int64N(maxTimeMS / 2)
	for i := range n {
		if i > 0 {
			step := b.Interval.Milliseconds()
			if r.IntN(4) == 0 {
				step += r.Int64N(5000) - 2500
			}
			ts += max(step, 1)
		}
		s := Sample{Time: ts, Values: make([]uint16, nreg)}
		for j := range nreg {
			if r.IntN(10) == 0 {
				s.Missing |= 1 << j
				continue
			}
			switch r.IntN(3) {
			case 0:
				s.Values[j] = uint16(r.UintN(65536))
			case 1:
				s.Values[j] = 65535
			default:
				s.Values[j] = uint16(1000 + r.IntN(50))
			}
		}
		b.Samples = append(b.Samples, s)
	}
	return b
}

func TestRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		b := randomBatch(r)
		data, err := Encode(b)
		if err != nil {
			t.Fatalf("batch %d: encode: %v", i, err)
		}
		got, err := Decode(data, Limits{})
		if err != nil {
			t.Fatalf("batch %d: decode: %v", i, err)
		}
		if len(b.Samples) == 0 {
			b.Samples = nil
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("batch %d: round trip differs", i)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	base := goldenBatch
	tests := []struct {
		name   string
		mutate func(*Batch)
	}{
		{"no registers", func(b *Batch) { b.Registers = nil }},
		{"unknown register", func(b *Batch) { b.Registers[0] = 10 }},
		{"duplicate register", func(b *Batch) { b.Registers[1] = b.Registers[0] }},
		{"sub-millisecond interval", func(b *Batch) { b.Interval = time.Microsecond }},
		{"short values", func(b *Batch) { b.Samples[1].Values = b.Samples[1].Values[:2] }},
		{"missing bit beyond registers", func(b *Batch) { b.Samples[0].Missing = 1 << 5 }},
		{"time not increasing", func(b *Batch) { b.Samples[2].Time = b.Samples[1].Time }},
		{"negative time", func(b *Batch) { b.Samples[0].Time = -1 }},
		{"too many samples", func(b *Batch) {
			for len(b.Samples) <= MaxSamples {
				s := b.Samples[len(b.Samples)-1]
				s.Time++
				b.Samples = append(b.Samples, s)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := base()
			tt.mutate(&b)
			if _, err := Encode(b); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Encode error = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode(goldenBatch())
	if err != nil {
		t.Fatal(err)
	}
	big := goldenBatch()
	for len(big.Samples) < 200 {
		s := big.Samples[len(big.Samples)-1]
		s.Time += 5000
		big.Samples = append(big.Samples, s)
	}
	bigData, err := Encode(big)
	if err != nil {
		t.Fatal(err)
	}
	with := func(i int, v ...byte) []byte {
		d := bytes.Clone(good)
		copy(d[i:], v)
		return d
	}
	regOff := 2 + 6 + 2 + 1 + 1 // version, flags, base(6), interval(2), count, nreg
	tests := []struct {
		name string
		data []byte
		lim  Limits
		want error
	}{
		{"empty", nil, Limits{}, ErrTruncated},
		{"header only", good[:5], Limits{}, ErrTruncated},
		{"truncated values", good[:len(good)-1], Limits{}, ErrTruncated},
		{"trailing byte", append(bytes.Clone(good), 0), Limits{}, ErrCorrupt},
		{"bad version", with(0, 2), Limits{}, ErrCorrupt},
		{"unknown flag", with(1, 0x83), Limits{}, ErrCorrupt},
		{"unknown register", with(regOff, 12), Limits{}, ErrUnknownRegister},
		{"duplicate register", with(regOff+1, 0), Limits{}, ErrCorrupt},
		{"overlong varint", append(bytes.Clone(good[:2]), bytes.Repeat([]byte{0xFF}, 11)...), Limits{}, ErrCorrupt},
		{"varint cut off", append(bytes.Clone(good[:2]), 0xFF, 0xFF), Limits{}, ErrTruncated},
		{"value out of range", append(bytes.Clone(good[:len(good)-1]), 0xFE, 0xFF, 0x0F), Limits{}, ErrCorrupt},
		{"over caller limit", bigData, Limits{MaxSamples: 100}, ErrTooLarge},
		{"count over MaxSamples", append(append(bytes.Clone(good[:2]), 0, 0), 0x81, 0x40, 1, 0), Limits{}, ErrTooLarge},
		{"future timestamp", good, Limits{NotAfter: time.UnixMilli(t0 + 15000)}, ErrFuture},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.data, tt.lim)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode error = %v, want %v", err, tt.want)
			}
		})
	}
	t.Run("at future bound", func(t *testing.T) {
		if _, err := Decode(good, Limits{NotAfter: time.UnixMilli(t0 + 16000)}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMessage(t *testing.T) {
	b := goldenBatch()
	b.Seq, b.Dropped = 7, 3
	b.Adapter = Counters{Requests: 12, Retries: 2, Timeouts: 1, CRCErrors: 1}
	m, err := NewMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Failures != 1 || m.Stats["frequency"].Failures != 1 || m.Stats["voltage"].Max != 230.3 {
		t.Fatalf("summary = %+v", m)
	}
	if st := m.Stats["output_power"]; st.Min != 1190 || st.Avg != 1235 || st.Max != 1300 || st.Unit != "W" {
		t.Fatalf("output_power stats = %+v", st)
	}
	raw, err := json.Marshal(Body{Telemetry: &m})
	if err != nil {
		t.Fatal(err)
	}
	var body Body
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatal(err)
	}
	got, err := body.Telemetry.Batch(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, b) {
		t.Fatalf("message round trip = %+v", got)
	}
	bad := []struct {
		name   string
		mutate func(*Message)
		want   error
	}{
		{"format", func(m *Message) { m.Format = "gzip" }, ErrFormat},
		{"samples", func(m *Message) { m.Samples++ }, ErrFormat},
		{"failures", func(m *Message) { m.Failures = 0 }, ErrFormat},
		{"oversized", func(m *Message) { m.Data = make([]byte, MaxDataLen+1) }, ErrTooLarge},
		{"truncated", func(m *Message) { m.Data = m.Data[:len(m.Data)-2] }, ErrTruncated},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			mm := *body.Telemetry
			tt.mutate(&mm)
			if _, err := mm.Batch(Limits{}); !errors.Is(err, tt.want) {
				t.Fatalf("Batch error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRegisters(t *testing.T) {
	regs := Registers()
	if len(regs) != NumRegisters {
		t.Fatalf("%d registers", len(regs))
	}
	for i, r := range regs {
		if int(r.Code) != i {
			t.Errorf("register %d has code %d", i, r.Code)
		}
		byName, ok := RegisterByName(r.Name)
		if !ok || byName != r {
			t.Errorf("RegisterByName(%q) = %+v, %v", r.Name, byName, ok)
		}
	}
	if r, ok := RegisterByName("export_power"); !ok || !r.Writable || r.Max != 100 {
		t.Errorf("export_power = %+v", r)
	}
	if _, ok := RegisterByCode(NumRegisters); ok {
		t.Error("RegisterByCode(10) found a register")
	}
	if v := regs[CodeFrequency].Scale(5001); math.Abs(v-50.01) > 1e-9 {
		t.Errorf("Scale = %v", v)
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := Encode(goldenBatch())
	f.Add(good)
	r := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		data, _ := Encode(randomBatch(r))
		if len(data) < 4096 {
			f.Add(data)
		}
	}
	f.Add([]byte{1, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data, Limits{NotAfter: time.UnixMilli(maxTimeMS)})
		if err != nil {
			return
		}
		again, err := Encode(b)
		if err != nil {
			t.Fatalf("decoded batch does not encode: %v", err)
		}
		b2, err := Decode(again, Limits{})
		if err != nil || !reflect.DeepEqual(b, b2) {
			t.Fatalf("re-encoding changed the batch: %v", err)
		}
	})
}
