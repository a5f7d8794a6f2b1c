package telemetry

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// BenchmarkIngest measures stored batches per second against the test
// Redis: simulator-sized batches (3 samples of all 10 registers) from
// 1000 devices, 16 concurrent ingesters (the backend's worker shards).
func BenchmarkIngest(b *testing.B) {
	for _, n := range []int{3, 180} {
		b.Run("samples="+strconv.Itoa(n), func(b *testing.B) {
			e := newEnv(b, func(c *Config) { c.Retention = 365 * 24 * time.Hour })
			all := make([]uint8, wire.NumRegisters)
			for i := range all {
				all[i] = uint8(i)
			}
			const devices = 1000
			span := time.Duration(n) * 5 * time.Second
			msgs := make([]envelope.Message, 64) // same data, distinct first sample times below
			for i := range msgs {
				msgs[i] = body(b, message(b, mkBatch(uint64(i+1), t0.Add(-time.Duration(len(msgs)-i)*span), n, all...)))
			}
			var next atomic.Int64
			ctx := context.Background()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := next.Add(1) - 1
					dev, round := "bench-"+strconv.Itoa(int(k%devices)), int(k/devices)
					// Rounds past len(msgs) are duplicates: still a full round trip.
					if err := e.st.Ingest(ctx, dev, msgs[round%len(msgs)]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
		})
	}
}
