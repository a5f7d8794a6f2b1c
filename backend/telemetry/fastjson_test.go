package telemetry

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// fastCases are bodies around parseBody's subset: the ones it reads and
// the ones it leaves to encoding/json.
func fastCases(t testing.TB) []struct {
	name string
	raw  string
	fast bool
} {
	golden := string(body(t, message(t, goldenBatch())).Body)
	empty := string(body(t, message(t, mkBatch(1, t0, 0))).Body)
	return []struct {
		name string
		raw  string
		fast bool
	}{
		{"golden", golden, true},
		{"empty batch", empty, true},
		{"whitespace", " \n{ \"telemetry\" :\t{\"seq\": 1 , \"format\":\"dz1\",\"data\":\"\"} }\r\n", true},
		{"empty message", `{"telemetry":{}}`, true},
		{"floats", `{"telemetry":{"stats":{"a":{"n":-0,"min":-0,"avg":1.5e-3,"max":2E+2,"unit":"W"}}}}`, true},
		{"int extremes", `{"telemetry":{"samples":-9223372036854775808,"seq":18446744073709551615,"stats":{"a":{"n":9223372036854775807}}}}`, true},
		{"int overflow", `{"telemetry":{"samples":9223372036854775808}}`, false},
		{"upper-case key", strings.Replace(golden, `"seq"`, `"SEQ"`, 1), false},
		{"unknown key", `{"telemetry":{"seq":1,"extra":[1,2]}}`, false},
		{"duplicate key", `{"telemetry":{"seq":1,"seq":2}}`, false},
		{"duplicate register", `{"telemetry":{"stats":{"a":{"n":1},"a":{"n":2}}}}`, false},
		{"escaped string", `{"telemetry":{"format":"dz\u0031"}}`, false},
		{"no telemetry", `{}`, false},
		{"null telemetry", `{"telemetry":null}`, false},
		{"null data", `{"telemetry":{"data":null}}`, false},
		{"negative seq", `{"telemetry":{"seq":-1}}`, false},
		{"fractional seq", `{"telemetry":{"seq":1.0}}`, false},
		{"seq overflow", `{"telemetry":{"seq":18446744073709551616}}`, false},
		{"leading zero", `{"telemetry":{"seq":01}}`, false},
		{"float overflow", `{"telemetry":{"stats":{"a":{"min":1e999}}}}`, false},
		{"bad base64", `{"telemetry":{"data":"!!!!"}}`, false},
		{"trailing garbage", `{"telemetry":{}} x`, false},
		{"two values", `{"telemetry":{}}{}`, false},
		{"UTF-8", `{"telemetry":{"format":"dz1é"}}`, true},
		{"invalid UTF-8", "{\"telemetry\":{\"format\":\"dz1\xff\"}}", false},
		{"truncated", golden[:len(golden)/2], false},
	}
}

// TestParseBody: the plain bodies devices send take the fast path, the
// others fall back, and wherever the fast path answers it answers as
// encoding/json does.
func TestParseBody(t *testing.T) {
	for _, tc := range fastCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			m, ok := parseBody([]byte(tc.raw))
			if ok != tc.fast {
				t.Fatalf("fast path %v, want %v", ok, tc.fast)
			}
			if ok {
				sameAsJSON(t, []byte(tc.raw), m)
			}
		})
	}
	lim := wire.Limits{MaxSamples: testMaxSamples, NotAfter: t0.Add(time.Hour)}
	if _, _, reason, err := decode([]byte(`{"telemetry":{"seq":1,"seq":"x"}}`), lim); reason != ReasonBadJSON || err == nil {
		t.Fatalf("a body encoding/json refuses: %q %v, want %q", reason, err, ReasonBadJSON)
	}
}

// sameAsJSON fails unless encoding/json accepts raw and decodes it to m.
func sameAsJSON(t *testing.T, raw []byte, m wire.Message) {
	t.Helper()
	var env wire.Body
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("fast path accepted what encoding/json refuses (%v): %q", err, raw)
	}
	if env.Telemetry == nil || !reflect.DeepEqual(*env.Telemetry, m) {
		t.Fatalf("fast path decoded %q differently:\n got %+v\nwant %+v", raw, m, env.Telemetry)
	}
}

// FuzzParseBody: whatever parseBody accepts, encoding/json accepts and
// decodes to the same Message.
func FuzzParseBody(f *testing.F) {
	for _, tc := range fastCases(f) {
		f.Add([]byte(tc.raw))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if m, ok := parseBody(raw); ok {
			sameAsJSON(t, raw, m)
		}
	})
}

// BenchmarkDecodeBody compares the body decode of a simulator-sized batch
// (3 samples of all 10 registers) by parseBody and by encoding/json.
func BenchmarkDecodeBody(b *testing.B) {
	all := make([]uint8, wire.NumRegisters)
	for i := range all {
		all[i] = uint8(i)
	}
	raw := body(b, message(b, mkBatch(7, t0, 3, all...))).Body
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := parseBody(raw); !ok {
				b.Fatal("not on the fast path")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var env wire.Body
			if err := json.Unmarshal(raw, &env); err != nil {
				b.Fatal(err)
			}
		}
	})
}
