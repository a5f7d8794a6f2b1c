package backend

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/redis/go-redis/v9"
)

// BenchmarkFleetQuery measures one 100-row page with a 2-term selector and
// the summary over ECOWATT_BENCH_DEVICES devices (default 10,000) written
// straight to the store, against a plain ZRANGE of 100 IDs in the same run.
func BenchmarkFleetQuery(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("ECOWATT_BENCH_DEVICES")); err == nil && v > 0 {
		n = v
	}
	h := newHarness(b)
	seedStore(b, h, n)
	sel, err := selector.Parse("site=colombo,online=true")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("zrange-100-ids", func(b *testing.B) {
		for b.Loop() {
			if err := h.rdb.ZRange(h.ctx, h.s.keys.Devices(), 0, 99).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("page-100-2-terms", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.s.QueryDevices(h.ctx, FleetQuery{Selector: sel, Limit: 100}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("summary-2-terms", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.s.Summary(h.ctx, sel); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// seedStore writes n devices the way provisioning and births leave them,
// in pipelines, without the per-device audit and publish.
func seedStore(tb testing.TB, h *harness, n int) {
	r := rand.New(rand.NewPCG(7, 7))
	const batch = 1000
	for start := 0; start < n; start += batch {
		_, err := h.rdb.Pipelined(h.ctx, func(p redis.Pipeliner) error {
			for i := start; i < min(start+batch, n); i++ {
				id := fmt.Sprintf("dev-%06d", i)
				labels := map[string]string{"site": sites[r.IntN(len(sites))], "model": models[r.IntN(len(models))]}
				lj, _ := json.Marshal(labels)
				online := r.IntN(2)
				p.HSet(h.ctx, h.s.keys.Device(id), fID, id, fCreatedAt, 1, fOnline, online, fLabels, string(lj),
					fFirmwareVersion, firmwares[r.IntN(len(firmwares))], fLastSeen, h.s.now().UnixMilli())
				p.ZAdd(h.ctx, h.s.keys.Devices(), redis.Z{Member: id})
				if online == 1 {
					p.ZAdd(h.ctx, h.s.keys.Online(), redis.Z{Score: 1, Member: id})
				}
				for k, v := range labels {
					p.SAdd(h.ctx, h.s.keys.LabelIndex(k, v), id)
					p.SAdd(h.ctx, h.s.keys.LabelKeyIndex(k), id)
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}
