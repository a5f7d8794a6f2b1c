package telemetry

import (
	"bytes"
	"testing"
	"time"

	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// FuzzDecode checks that decode never panics, that every rejection has a
// reason, and that an accepted body's data re-encodes to the same bytes
// (dz1 is canonical), so what Ingest stores is exactly what it validated.
func FuzzDecode(f *testing.F) {
	now := t0.Add(time.Minute)
	for _, tc := range badInputs {
		f.Add(tc.mk(f, now))
	}
	f.Add(body(f, message(f, goldenBatch())).Body)
	f.Add(body(f, message(f, mkBatch(1, t0, 0))).Body)
	lim := wire.Limits{MaxSamples: testMaxSamples, NotAfter: now.Add(DefaultMaxFuture)}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, b, reason, err := decode(raw, lim)
		if err != nil {
			if reason == "" {
				t.Fatalf("rejection without a reason: %v", err)
			}
			return
		}
		if reason != "" {
			t.Fatalf("accepted with reason %q", reason)
		}
		if len(b.Samples) > testMaxSamples {
			t.Fatalf("%d samples over the limit %d", len(b.Samples), testMaxSamples)
		}
		if n := len(b.Samples); n > 0 && b.Samples[n-1].Time > lim.NotAfter.UnixMilli() {
			t.Fatalf("sample at %d after %v", b.Samples[n-1].Time, lim.NotAfter)
		}
		if len(b.Samples) == 0 {
			return
		}
		again, err := wire.Encode(b)
		if err != nil {
			t.Fatalf("accepted batch does not encode: %v", err)
		}
		if !bytes.Equal(again, m.Data) {
			t.Fatalf("data not canonical:\n got %x\nwant %x", again, m.Data)
		}
	})
}
