package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// refMAC is crypto/hmac over the canonical bytes: what k.mac must equal.
func refMAC(key [KeySize]byte, msg []byte) []byte {
	h := hmac.New(sha256.New, key[:])
	h.Write(msg)
	return h.Sum(nil)
}

// The cached pads must give crypto/hmac's answer for derived keys, for
// keys set by hand (no pads), and for derived keys changed afterwards
// (stale pads must not be used).
func TestMACMatchesCryptoHMAC(t *testing.T) {
	derived := keysFor(t, testPSK)
	byHand := Keys{MAC: derived.MAC, Enc: derived.Enc, Password: derived.Password}
	changed := *keysFor(t, testPSK)
	changed.MAC[0] ^= 1
	changed.Password[5] ^= 1
	for name, k := range map[string]*Keys{"derived": derived, "by hand": &byHand, "changed": &changed} {
		for _, payload := range [][]byte{nil, []byte("x"), bench256, bytes.Repeat([]byte("y"), 4096)} {
			want := refMAC(k.MAC, Canonical(testTopic, 7, testMs, true, payload))
			if got := k.mac(testTopic, 7, testMs, true, payload); !bytes.Equal(got[:], want) {
				t.Errorf("%s: mac over %d bytes = %x, crypto/hmac %x", name, len(payload), got, want)
			}
		}
		want := refMAC(k.Password, []byte(Label+" mqtt\x00"+testID+"\x00"+"1767225600"))
		if got := passwordMAC(k, testID, "1767225600"); !bytes.Equal(got[:], want) {
			t.Errorf("%s: password mac = %x, crypto/hmac %x", name, got, want)
		}
	}
}

// A derived Keys whose Enc was changed must encrypt under the new key, not
// the cached AEAD.
func TestGCMFollowsEncKey(t *testing.T) {
	k := *keysFor(t, testPSK)
	k.Enc[0] ^= 1
	raw, err := Seal(&k, testTopic, 1, testTime, []byte(testBody), true, ivReader(testIV))
	if err != nil {
		t.Fatal(err)
	}
	byHand := Keys{MAC: k.MAC, Enc: k.Enc}
	if m, err := Open(&byHand, testTopic, raw); err != nil || string(m.Body) != testBody {
		t.Fatalf("open with the changed key by hand: %v, %q", err, m.Body)
	}
	if _, err := Open(keysFor(t, testPSK), testTopic, raw); err == nil {
		t.Fatal("opened under the old Enc key")
	}
}

// Seal and Open allocate only the buffers they return (issue 14).
func TestSealOpenAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	k := keysFor(t, testPSK)
	for _, c := range []struct {
		name    string
		encrypt bool
		max     float64
	}{{"plain", false, 2}, {"encrypted", true, 3}} {
		r := ivReader(testIV)
		got := testing.AllocsPerRun(200, func() {
			r.Seek(0, 0)
			raw, err := Seal(k, testTopic, 1, testTime, bench256, c.encrypt, r)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Open(k, testTopic, raw); err != nil {
				t.Fatal(err)
			}
		})
		if got > c.max {
			t.Errorf("%s: %.1f allocations per seal+open, want <= %.0f", c.name, got, c.max)
		}
	}
	got := testing.AllocsPerRun(200, func() {
		raw, _ := SealBinary(k, chunkTopic, 1, testTime, bench256)
		if _, err := OpenBinary(k, chunkTopic, raw); err != nil {
			t.Fatal(err)
		}
	})
	if got > 1 {
		t.Errorf("binary: %.1f allocations per seal+open, want <= 1", got)
	}
}

// needsEscape must agree with the byte-wise test for every byte value in
// every lane, alone and next to other bytes.
func TestNeedsEscape(t *testing.T) {
	naive := func(b []byte) bool {
		for _, c := range b {
			if c == '"' || c == '\\' || c < 0x20 {
				return true
			}
		}
		return false
	}
	var w [8]byte
	for lane := range 8 {
		for v := range 256 {
			for _, fill := range []byte{'a', 0xff, 0x20, 0x21, 0x5b, 0x5d} {
				for i := range w {
					w[i] = fill
				}
				w[lane] = byte(v)
				if got, want := needsEscape(binary.LittleEndian.Uint64(w[:])), naive(w[:]); got != want {
					t.Fatalf("% x: needsEscape %v, want %v", w, got, want)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		x := rng.Uint64()
		binary.LittleEndian.PutUint64(w[:], x)
		if got, want := needsEscape(x), naive(w[:]); got != want {
			t.Fatalf("% x: needsEscape %v, want %v", w, got, want)
		}
	}
}

// DeriveKeys' extra state is one small allocation: the backend's key cache
// holds one per device (issue 14: memory per device).
func TestDerivedIsSmall(t *testing.T) {
	if size := unsafe.Sizeof(derived{}); size > 384 {
		t.Errorf("derived is %d bytes, want <= 384", size)
	}
}
