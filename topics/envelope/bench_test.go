package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// bench256 is a 256-byte JSON body.
var bench256 = []byte(`{"pad":"` + strings.Repeat("x", 256-10) + `"}`)

// BenchmarkSealOpen is one Seal plus one Open of a 256-byte body; compare
// it with BenchmarkBareHMAC, the HMAC-SHA256 of the same canonical bytes.
func BenchmarkSealOpen(b *testing.B) {
	k := keysFor(b, testPSK)
	for _, encrypt := range []bool{false, true} {
		name := "plain"
		if encrypt {
			name = "encrypted"
		}
		b.Run(name, func(b *testing.B) {
			r := ivReader(testIV)
			b.ReportAllocs()
			b.SetBytes(int64(len(bench256)))
			for i := 0; b.Loop(); i++ {
				if r.Len() < 12 {
					r.Seek(0, 0)
				}
				raw, err := Seal(k, testTopic, uint64(i+1), testTime, bench256, encrypt, r)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Open(k, testTopic, raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(bench256)))
		for i := 0; b.Loop(); i++ {
			raw, err := SealBinary(k, chunkTopic, uint64(i+1), testTime, bench256)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := OpenBinary(k, chunkTopic, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBareHMAC is the floor: one HMAC-SHA256 over the canonical bytes
// Seal and Open each MAC (for encrypted, over the base64 payload).
func BenchmarkBareHMAC(b *testing.B) {
	k := keysFor(b, testPSK)
	ct, err := k.encrypt(testTopic, bench256, ivReader(testIV))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		encrypted bool
		payload   []byte
	}{
		{"plain", false, bench256},
		{"encrypted", true, []byte(base64.StdEncoding.EncodeToString(ct))},
	} {
		msg := Canonical(testTopic, 1, testMs, c.encrypted, c.payload)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bench256)))
			for b.Loop() {
				h := hmac.New(sha256.New, k.MAC[:])
				h.Write(msg)
				h.Sum(nil)
			}
		})
	}
}

// BenchmarkWindow is one Accept on an in-order stream.
func BenchmarkWindow(b *testing.B) {
	var w Window
	for i := uint64(1); b.Loop(); i++ {
		if err := w.Accept(i); err != nil {
			b.Fatal(err)
		}
	}
}
