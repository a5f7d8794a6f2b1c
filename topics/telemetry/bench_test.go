package telemetry

import (
	"encoding/base64"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// plainRecordSize is the reference encoding: uint32 timestamp, uint8
// register, float32 value per register reading.
const plainRecordSize = 9

// inverterLike builds a batch of n samples of all ten registers every
// interval that moves like an inverter around midday: slow PV drift with
// noise, mains voltage and frequency jitter, constant export limit.
func inverterLike(r *rand.Rand, n int, interval time.Duration) Batch {
	b := Batch{Interval: interval}
	for c := range uint8(NumRegisters) {
		b.Registers = append(b.Registers, c)
	}
	noise := func(a float64) float64 { return (r.Float64()*2 - 1) * a }
	for i := range n {
		frac := float64(i) / float64(max(n, 1))
		pv := 0.8 + 0.15*math.Sin(frac*math.Pi) + noise(0.01)
		vpv1, vpv2 := 360+noise(1.5), 352+noise(1.5)
		p := 5000 * pv
		vac := 230 + noise(0.6)
		s := Sample{Time: t0 + int64(i)*interval.Milliseconds(), Values: []uint16{
			uint16(vac * 10),
			uint16(p / vac * 10),
			uint16(5000 + noise(4)),
			uint16(vpv1 * 10),
			uint16(vpv2 * 10),
			uint16(p / 2 / vpv1 * 10),
			uint16(p / 2 / vpv2 * 10),
			uint16((35 + 15*pv + noise(0.2)) * 10),
			100,
			uint16(p),
		}}
		b.Samples = append(b.Samples, s)
	}
	return b
}

// BenchmarkCompressionRatio encodes batches of the simulator's default
// (15 s upload / 5 s sampling = 3 samples) and field (15 min / 5 s = 180
// samples) shapes and reports the size of the plain 9-byte-per-reading
// record divided by the dz1 size (ratio) and by its base64 size as it
// travels in JSON (ratio_b64).
func BenchmarkCompressionRatio(b *testing.B) {
	for _, n := range []int{3, 180, 720} {
		b.Run(fmt.Sprintf("samples=%d", n), func(b *testing.B) {
			batch := inverterLike(rand.New(rand.NewPCG(7, 7)), n, 5*time.Second)
			plain := plainRecordSize * n * NumRegisters
			var size int
			for b.Loop() {
				data, err := Encode(batch)
				if err != nil {
					b.Fatal(err)
				}
				size = len(data)
			}
			b.ReportMetric(float64(plain)/float64(size), "ratio")
			b.ReportMetric(float64(plain)/float64(base64.StdEncoding.EncodedLen(size)), "ratio_b64")
			b.ReportMetric(float64(size)/float64(n*NumRegisters), "B/reading")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	data, err := Encode(inverterLike(rand.New(rand.NewPCG(7, 7)), 180, 5*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(data, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
