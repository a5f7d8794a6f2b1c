package acquisition

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// BenchmarkCompressionRatioSIM encodes batches of all ten registers of the
// simulated inverter sampled every 5 s around midday and reports the plain
// 9-byte-per-reading record size (uint32 ts, uint8 reg, float32 value)
// divided by the dz1 size (ratio) and by its base64 size (ratio_b64).
func BenchmarkCompressionRatioSIM(b *testing.B) {
	for _, n := range []int{3, 180} {
		b.Run(fmt.Sprintf("samples=%d", n), func(b *testing.B) {
			clk := clock.NewFake(time.Date(2025, 6, 1, 11, 0, 0, 0, time.UTC))
			sim := inverter.New(inverter.Config{Seed: 1, Clock: clk})
			batch := telemetry.Batch{Interval: 5 * time.Second}
			for c := range uint8(telemetry.NumRegisters) {
				batch.Registers = append(batch.Registers, c)
			}
			for range n {
				v := sim.Values()
				batch.Samples = append(batch.Samples, telemetry.Sample{Time: clk.Now().UnixMilli(), Values: v[:]})
				clk.Advance(5 * time.Second)
			}
			var size int
			for b.Loop() {
				data, err := telemetry.Encode(batch)
				if err != nil {
					b.Fatal(err)
				}
				size = len(data)
			}
			plain := 9 * n * telemetry.NumRegisters
			b.ReportMetric(float64(plain)/float64(size), "ratio")
			b.ReportMetric(float64(plain)/float64(base64.StdEncoding.EncodedLen(size)), "ratio_b64")
			b.ReportMetric(float64(size)/float64(n*telemetry.NumRegisters), "B/reading")
		})
	}
}
