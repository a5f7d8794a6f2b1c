package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// isSentinel reports whether err wraps one of errs.
func isSentinel(err error, errs ...error) bool {
	for _, e := range errs {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// FuzzOpen: Open never panics, every rejection wraps a sentinel, and
// whatever it accepts re-seals to an envelope that opens to the same message.
func FuzzOpen(f *testing.F) {
	for _, c := range openCases(f) {
		if c.want != ErrTooLarge && c.topic == "" && c.psk == nil {
			f.Add(c.raw)
		}
	}
	k := keysFor(f, testPSK)
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := Open(k, testTopic, raw)
		if err != nil {
			if !isSentinel(err, ErrMalformed, ErrTooLarge, ErrMAC, ErrDecrypt) {
				t.Fatalf("Open error %v wraps no sentinel", err)
			}
			return
		}
		resealed, err := Seal(k, testTopic, m.Nonce, m.Timestamp, m.Body, m.Encrypted, ivReader(testIV))
		if errors.Is(err, ErrTooLarge) {
			return // the input used a more compact JSON escaping than Seal does
		}
		if err != nil {
			t.Fatalf("Open accepted what Seal refuses: %v", err)
		}
		m2, err := Open(k, testTopic, resealed)
		if err != nil {
			t.Fatalf("re-sealed envelope does not open: %v", err)
		}
		if m2.Nonce != m.Nonce || !m2.Timestamp.Equal(m.Timestamp) || m2.Encrypted != m.Encrypted || !bytes.Equal(m2.Body, m.Body) {
			t.Fatalf("re-sealed %+v, first %+v", m2, m)
		}
	})
}

// FuzzSealOpen: every message Seal accepts opens to itself, on its own topic
// only.
func FuzzSealOpen(f *testing.F) {
	f.Add(uint64(1), int64(testMs), []byte(testBody), false)
	f.Add(uint64(MaxNonce), int64(-1), []byte(bodyResult), true)
	f.Add(uint64(0), int64(0), []byte{}, false)
	f.Add(uint64(7), int64(1)<<62, []byte{0xff, 0xfe}, true)
	k := keysFor(f, testPSK)
	f.Fuzz(func(t *testing.T, nonce uint64, ms int64, body []byte, encrypt bool) {
		raw, err := Seal(k, testTopic, nonce, time.UnixMilli(ms), body, encrypt, ivReader(testIV))
		if err != nil {
			if !isSentinel(err, ErrMalformed, ErrTooLarge) {
				t.Fatalf("Seal error %v wraps no sentinel", err)
			}
			return
		}
		m, err := Open(k, testTopic, raw)
		if err != nil {
			t.Fatalf("Open(Seal()) = %v\n%s", err, raw)
		}
		if m.Nonce != nonce || m.Timestamp.UnixMilli() != ms || m.Encrypted != encrypt || !bytes.Equal(m.Body, body) {
			t.Fatalf("round trip changed the message: %+v", m)
		}
		if _, err := Open(k, "ecowatt/v1/dev/inv-0002/up/birth", raw); !errors.Is(err, ErrMAC) {
			t.Fatalf("opened on another topic: %v", err)
		}
	})
}

// FuzzOpenBinary: OpenBinary never panics, rejections wrap a sentinel, and
// the binary form is canonical: anything accepted re-seals to the same bytes.
func FuzzOpenBinary(f *testing.F) {
	for _, c := range binaryCases(f) {
		if c.topic == "" && c.psk == nil {
			f.Add(c.raw)
		}
	}
	k := keysFor(f, testPSK)
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := OpenBinary(k, chunkTopic, raw)
		if err != nil {
			if !isSentinel(err, ErrMalformed, ErrMAC) {
				t.Fatalf("OpenBinary error %v wraps no sentinel", err)
			}
			return
		}
		resealed, err := SealBinary(k, chunkTopic, m.Nonce, m.Timestamp, m.Body)
		if err != nil {
			t.Fatalf("OpenBinary accepted what SealBinary refuses: %v", err)
		}
		if !bytes.Equal(resealed, raw) {
			t.Fatalf("re-sealed frame differs:\n%x\n%x", resealed, raw)
		}
	})
}

// FuzzVerifyPassword: never panics, rejections wrap a sentinel, and an
// accepted token is the one Password computes (up to hex case) for a time
// within the validity window.
func FuzzVerifyPassword(f *testing.F) {
	for _, c := range passwordCases(f) {
		if c.psk == nil {
			f.Add(c.id, c.token, c.now.Unix(), int64(c.now.Nanosecond()))
		}
	}
	k := keysFor(f, testPSK)
	f.Fuzz(func(t *testing.T, id, token string, sec, nsec int64) {
		if id == "" {
			id = testID
		}
		now := time.Unix(sec, nsec)
		err := VerifyPassword(k, id, token, now)
		if err != nil {
			if !isSentinel(err, ErrPasswordFormat, ErrPasswordExpired, ErrPasswordMAC) {
				t.Fatalf("VerifyPassword error %v wraps no sentinel", err)
			}
			return
		}
		parts := strings.Split(token, ".")
		issued, perr := strconv.ParseInt(parts[1], 10, 64)
		if perr != nil {
			t.Fatalf("accepted token %q has bad seconds", token)
		}
		if d := now.Sub(time.Unix(issued, 0)); d > PasswordValidity || d < -PasswordValidity {
			t.Fatalf("accepted token issued %v from now", d)
		}
		if want := Password(k, id, time.Unix(issued, 0)); !strings.EqualFold(token, want) || token[:3] != "v1." {
			t.Fatalf("accepted %q, Password gives %q", token, want)
		}
	})
}

// windowDeltas encodes nonces as zigzag varint deltas from the running
// maximum, the input form of FuzzWindow.
func windowDeltas(start uint64, nonces []uint64) []byte {
	var b []byte
	high := start
	for _, n := range nonces {
		b = binary.AppendVarint(b, int64(n-high))
		high = max(high, n)
	}
	return b
}

// FuzzWindow: Window agrees with the reference model from any start state.
func FuzzWindow(f *testing.F) {
	for _, c := range windowCases {
		var ns []uint64
		for _, s := range c.steps {
			ns = append(ns, s.n)
		}
		f.Add(c.start.High, c.start.Seen, windowDeltas(c.start.High, ns))
	}
	f.Add(uint64(0), uint64(0), windowDeltas(0, nonceOps([]byte("\x00\x01\x01\x05\x02\x00\x04\x00\x04\x01\x03\x02"))))
	f.Fuzz(func(t *testing.T, high, seen uint64, deltas []byte) {
		high = min(high, MaxNonce)
		w := Window{High: high, Seen: seen}
		ref := refWindow{seen: map[uint64]bool{}, max: high}
		for i := uint64(0); i < WindowSize && i < high; i++ {
			if seen&(1<<i) != 0 {
				ref.seen[high-i] = true
			}
		}
		for step := 0; len(deltas) > 0; step++ {
			d, n := binary.Varint(deltas)
			if n <= 0 {
				return
			}
			deltas = deltas[n:]
			nonce := ref.max + uint64(d)
			if d < 0 && uint64(-d) > ref.max || d > 0 && nonce > MaxNonce {
				nonce = 0 // out of range: offer nonce 0 instead
			}
			want := ref.accept(nonce)
			got := w.Accept(nonce)
			if !errors.Is(got, want) || (want == nil) != (got == nil) {
				t.Fatalf("step %d: Accept(%d) = %v, model says %v (start %d/%#x)", step, nonce, got, want, high, seen)
			}
			if w.High != ref.max {
				t.Fatalf("step %d: High %d, model %d", step, w.High, ref.max)
			}
		}
	})
}
