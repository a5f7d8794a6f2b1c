package envelope

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDeriveKeys(t *testing.T) {
	k := keysFor(t, testPSK)
	if k.MAC == k.Enc || k.MAC == k.Password || k.Enc == k.Password {
		t.Fatal("derived keys are not distinct")
	}
	if o := keysFor(t, otherPSK); o.MAC == k.MAC {
		t.Fatal("two PSKs derived the same MAC key")
	}
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := DeriveKeys(make([]byte, n)); err == nil {
			t.Errorf("DeriveKeys accepted a %d-byte psk", n)
		}
	}
}

func TestCanonicalLayout(t *testing.T) {
	got := Canonical("a/b", 0x0102030405060708, -2, true, []byte("xy"))
	want := mustHex("65636f776174742d7631" + "00" + // "ecowatt-v1" 0x00
		"0003" + "612f62" + // topic length, topic
		"0102030405060708" + // nonce
		"fffffffffffffffe" + // timestamp -2 ms, two's complement
		"01" + // encrypted
		"00000002" + "7879") // payload length, payload
	if !bytes.Equal(got, want) {
		t.Fatalf("Canonical =\n%x\nwant\n%x", got, want)
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := keysFor(t, testPSK)
	bodies := []struct{ name, body string }{
		{"birth", testBody},
		{"empty", ""},
		{"escapes", "{\"s\":\"quote\\\" backslash\\\\ tab\t nl\n ctl\x01 <b>&amp;</b>\"}"},
		{"unicode", `{"site":"Zürich ☀ 太陽","sep":"` + "\u2028\u2029" + `"}`},
		{"256B", `{"pad":"` + strings.Repeat("x", 256-10) + `"}`},
		{"large", `{"pad":"` + strings.Repeat("y", 100<<10) + `"}`},
	}
	for _, b := range bodies {
		for _, encrypt := range []bool{false, true} {
			name := b.name + "/plain"
			if encrypt {
				name = b.name + "/encrypted"
			}
			t.Run(name, func(t *testing.T) {
				for _, topic := range []string{testTopic, "ecowatt/v1/dev/inv-0001/down/command"} {
					raw := mustSeal(t, k, topic, 42, b.body, encrypt)
					m, err := Open(k, topic, raw)
					if err != nil {
						t.Fatalf("Open: %v\n%s", err, raw)
					}
					if m.Nonce != 42 || !m.Timestamp.Equal(testTime) || m.Encrypted != encrypt || string(m.Body) != b.body {
						t.Fatalf("Open = %+v", m)
					}
					e := decodeEnv(t, raw)
					if len(e.MAC) != 64 || !isHex(e.MAC) {
						t.Errorf("mac %q is not 64 lowercase hex digits", e.MAC)
					}
					if !encrypt && e.Payload != b.body {
						t.Errorf("plain payload %q, want the body", e.Payload)
					}
					if encrypt && strings.Contains(string(raw), "firmware") {
						t.Error("encrypted envelope leaks plaintext")
					}
				}
			})
		}
	}
}

func TestSealDetails(t *testing.T) {
	k := keysFor(t, testPSK)
	t.Run("field order and no html escaping", func(t *testing.T) {
		raw := mustSeal(t, k, testTopic, 1, `{"a":"<&>"}`, false)
		want := `{"nonce":1,"timestamp":1767225600123,"encrypted":false,"payload":"{\"a\":\"<&>\"}","mac":"`
		if !strings.HasPrefix(string(raw), want) || raw[len(raw)-1] != '}' {
			t.Fatalf("sealed %s\nwant prefix %s", raw, want)
		}
	})
	t.Run("iv is read from random and changes the payload", func(t *testing.T) {
		a := decodeEnv(t, mustSeal(t, k, testTopic, 1, testBody, true))
		ct, _ := base64.StdEncoding.DecodeString(a.Payload)
		if !bytes.Equal(ct[:12], testIV) || len(ct) != 12+len(testBody)+16 {
			t.Fatalf("ciphertext %x: want IV %x prefix and %d bytes", ct, testIV, 12+len(testBody)+16)
		}
		iv2 := bytes.Repeat([]byte{7}, 12)
		raw, err := Seal(k, testTopic, 1, testTime, []byte(testBody), true, bytes.NewReader(iv2))
		if err != nil {
			t.Fatal(err)
		}
		if b := decodeEnv(t, raw); b.Payload == a.Payload {
			t.Fatal("different IVs gave the same ciphertext")
		}
	})
	t.Run("max nonce", func(t *testing.T) {
		raw := mustSeal(t, k, testTopic, MaxNonce, testBody, false)
		if m, err := Open(k, testTopic, raw); err != nil || m.Nonce != MaxNonce {
			t.Fatalf("Open = %v, %v", m.Nonce, err)
		}
	})
}

func TestSealErrors(t *testing.T) {
	k := keysFor(t, testPSK)
	big := `"` + strings.Repeat("z", MaxSize) + `"`
	cases := []struct {
		name    string
		topic   string
		nonce   uint64
		body    []byte
		encrypt bool
		random  func() *bytes.Reader
		fail    bool // use failReader
		want    error
	}{
		{"nonce 0", testTopic, 0, []byte(testBody), false, nil, false, ErrMalformed},
		{"nonce above max", testTopic, MaxNonce + 1, []byte(testBody), false, nil, false, ErrMalformed},
		{"empty topic", "", 1, []byte(testBody), false, nil, false, ErrMalformed},
		{"topic too long", strings.Repeat("t", 0x10000), 1, []byte(testBody), false, nil, false, ErrMalformed},
		{"plain body not utf-8", testTopic, 1, []byte{'"', 0xff, '"'}, false, nil, false, ErrMalformed},
		{"plain too large", testTopic, 1, []byte(big), false, nil, false, ErrTooLarge},
		{"encrypted too large", testTopic, 1, []byte(big), true, func() *bytes.Reader { return ivReader(testIV) }, false, ErrTooLarge},
		{"no random source", testTopic, 1, []byte(testBody), true, nil, false, nil},
		{"random fails", testTopic, 1, []byte(testBody), true, nil, true, errFail},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r interface{ Read([]byte) (int, error) }
			if tc.random != nil {
				r = tc.random()
			}
			if tc.fail {
				r = failReader{}
			}
			out, err := Seal(k, tc.topic, tc.nonce, testTime, tc.body, tc.encrypt, r)
			if err == nil {
				t.Fatalf("Seal succeeded: %.80s", out)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Seal error %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("encrypted body need not be utf-8", func(t *testing.T) {
		raw, err := Seal(k, testTopic, 1, testTime, []byte{0xff, 0x00, 0xfe}, true, ivReader(testIV))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := Open(k, testTopic, raw); err != nil || !bytes.Equal(m.Body, []byte{0xff, 0x00, 0xfe}) {
			t.Fatalf("Open = %x, %v", m.Body, err)
		}
	})
}

// openCase is one row of the Open table; FuzzOpen is seeded from it.
type openCase struct {
	name  string
	topic string // empty means testTopic
	psk   []byte // nil means testPSK
	raw   []byte
	want  error // nil means Open must succeed
}

// openCases builds the Open table: tampering, malformed input, and key
// holders that MAC something that still must not open.
func openCases(t testing.TB) []openCase {
	k := keysFor(t, testPSK)
	plain := mustSeal(t, k, testTopic, 7, testBody, false)
	enc := mustSeal(t, k, testTopic, 8, testBody, true)
	pe, ee := decodeEnv(t, plain), decodeEnv(t, enc)
	with := func(e Envelope, f func(*Envelope)) []byte { f(&e); return encodeEnv(t, e) }
	ct, _ := base64.StdEncoding.DecodeString(ee.Payload)
	b64 := base64.StdEncoding.EncodeToString

	otherTopicCT, _ := k.encrypt("ecowatt/v1/dev/inv-0002/up/birth", []byte(testBody), ivReader(testIV))
	badTag := append([]byte(nil), ct...)
	badTag[len(badTag)-1] ^= 1

	return []openCase{
		{name: "plain ok", raw: plain},
		{name: "encrypted ok", raw: enc},
		{name: "trailing whitespace ok", raw: append(append([]byte(nil), plain...), " \r\n\t"...)},
		{name: "uppercase mac ok", raw: with(pe, func(e *Envelope) { e.MAC = strings.ToUpper(e.MAC) })},
		{name: "escaped payload ok", raw: bytes.Replace(plain, []byte("online"), []byte(`\u006fnline`), 1)},

		// Tampering by someone without the key.
		{name: "flipped payload byte", raw: with(pe, func(e *Envelope) { e.Payload = flipChar(e.Payload, 5) }), want: ErrMAC},
		{name: "flipped ciphertext byte", raw: with(ee, func(e *Envelope) { e.Payload = flipChar(e.Payload, 30) }), want: ErrMAC},
		{name: "flipped mac", raw: with(pe, func(e *Envelope) { e.MAC = flipHex(e.MAC, 63) }), want: ErrMAC},
		{name: "flipped nonce", raw: with(pe, func(e *Envelope) { e.Nonce++ }), want: ErrMAC},
		{name: "flipped timestamp", raw: with(pe, func(e *Envelope) { e.Timestamp++ }), want: ErrMAC},
		{name: "encrypted flag set on plain", raw: with(pe, func(e *Envelope) { e.Encrypted = true }), want: ErrMAC},
		{name: "encrypted flag cleared", raw: with(ee, func(e *Envelope) { e.Encrypted = false }), want: ErrMAC},
		{name: "wrong key", psk: otherPSK, raw: plain, want: ErrMAC},
		{name: "wrong key encrypted", psk: otherPSK, raw: enc, want: ErrMAC},
		{name: "moved to another kind", topic: "ecowatt/v1/dev/inv-0001/up/telemetry", raw: plain, want: ErrMAC},
		{name: "moved to another device", topic: "ecowatt/v1/dev/inv-0002/up/birth", raw: plain, want: ErrMAC},
		{name: "moved to the other direction", topic: "ecowatt/v1/dev/inv-0001/down/birth", raw: enc, want: ErrMAC},
		{name: "bad base64", raw: with(ee, func(e *Envelope) { e.Payload = "!!" + e.Payload[2:] }), want: ErrMAC},
		{name: "truncated ciphertext", raw: with(ee, func(e *Envelope) { e.Payload = b64(ct[:len(ct)-1]) }), want: ErrMAC},

		// Malformed envelopes.
		{name: "nonce 0", raw: with(pe, func(e *Envelope) { e.Nonce = 0 }), want: ErrMalformed},
		{name: "nonce above max", raw: with(pe, func(e *Envelope) { e.Nonce = MaxNonce + 1 }), want: ErrMalformed},
		{name: "nonce max uint64", raw: with(pe, func(e *Envelope) { e.Nonce = 1<<64 - 1 }), want: ErrMalformed},
		{name: "unknown field", raw: bytes.Replace(plain, []byte(`{"nonce"`), []byte(`{"extra":1,"nonce"`), 1), want: ErrMalformed},
		{name: "trailing garbage", raw: append(append([]byte(nil), plain...), 'x'), want: ErrMalformed},
		{name: "trailing brace", raw: append(append([]byte(nil), plain...), '}'), want: ErrMalformed},
		{name: "trailing bracket", raw: append(append([]byte(nil), plain...), ']'), want: ErrMalformed},
		{name: "second object", raw: append(append([]byte(nil), plain...), plain...), want: ErrMalformed},
		{name: "non-hex mac", raw: with(pe, func(e *Envelope) { e.MAC = "zz" + e.MAC[2:] }), want: ErrMalformed},
		{name: "short mac", raw: with(pe, func(e *Envelope) { e.MAC = e.MAC[:62] }), want: ErrMalformed},
		{name: "long mac", raw: with(pe, func(e *Envelope) { e.MAC += "00" }), want: ErrMalformed},
		{name: "empty mac", raw: with(pe, func(e *Envelope) { e.MAC = "" }), want: ErrMalformed},
		{name: "empty input", raw: []byte{}, want: ErrMalformed},
		{name: "not json", raw: []byte("hello"), want: ErrMalformed},
		{name: "json null", raw: []byte("null"), want: ErrMalformed},
		{name: "json array", raw: []byte("[1,2]"), want: ErrMalformed},
		{name: "truncated json", raw: plain[:len(plain)-1], want: ErrMalformed},
		{name: "nonce as string", raw: bytes.Replace(plain, []byte(`"nonce":7`), []byte(`"nonce":"7"`), 1), want: ErrMalformed},
		{name: "nonce negative", raw: bytes.Replace(plain, []byte(`"nonce":7`), []byte(`"nonce":-7`), 1), want: ErrMalformed},
		{name: "nonce fraction", raw: bytes.Replace(plain, []byte(`"nonce":7`), []byte(`"nonce":7.0`), 1), want: ErrMalformed},
		{name: "encrypted as string", raw: bytes.Replace(plain, []byte(`"encrypted":false`), []byte(`"encrypted":"false"`), 1), want: ErrMalformed},
		{name: "payload as object", raw: []byte(`{"nonce":1,"timestamp":1,"encrypted":false,"payload":{},"mac":"00"}`), want: ErrMalformed},
		{name: "invalid utf-8", raw: bytes.Replace(plain, []byte("1.0.3"), []byte("1.\xff.3"), 1), want: ErrMalformed},
		{name: "oversized", raw: append(append([]byte(nil), plain...), bytes.Repeat([]byte(" "), MaxSize)...), want: ErrTooLarge},

		// A key holder MACs something that must still be refused.
		{name: "authentic but not base64", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = "not base64!" })), want: ErrMalformed},
		// Base64 is strict (section 4): one text per ciphertext, so a port
		// with a strict decoder and this one agree on every input.
		{name: "authentic but base64 with a line break", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = e.Payload[:76] + "\n" + e.Payload[76:] })), want: ErrMalformed},
		{name: "authentic but base64 with CRLF", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = e.Payload[:76] + "\r\n" + e.Payload[76:] })), want: ErrMalformed},
		{name: "authentic but base64 with a trailing newline", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload += "\n" })), want: ErrMalformed},
		{name: "authentic but base64 with a space", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = e.Payload[:8] + " " + e.Payload[8:] })), want: ErrMalformed},
		{name: "authentic but base64 without padding", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = strings.TrimRight(e.Payload, "=") })), want: ErrMalformed},
		{name: "authentic but base64 with nonzero padding bits", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = setPadBits(t, e.Payload) })), want: ErrMalformed},
		{name: "authentic but ciphertext too short", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = b64(ct[:27]) })), want: ErrDecrypt},
		{name: "authentic but truncated ciphertext", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = b64(ct[:len(ct)-1]) })), want: ErrDecrypt},
		{name: "authentic but bad gcm tag", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = b64(badTag) })), want: ErrDecrypt},
		{name: "authentic but ciphertext from another topic", raw: forge(t, k, testTopic, with2(ee, func(e *Envelope) { e.Payload = b64(otherTopicCT) })), want: ErrDecrypt},
	}
}

func with2(e Envelope, f func(*Envelope)) Envelope { f(&e); return e }

func TestOpen(t *testing.T) {
	for _, tc := range openCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			psk, topic := tc.psk, tc.topic
			if psk == nil {
				psk = testPSK
			}
			if topic == "" {
				topic = testTopic
			}
			m, err := Open(keysFor(t, psk), topic, tc.raw)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if string(m.Body) != testBody {
					t.Fatalf("body %q", m.Body)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open error %v, want %v", err, tc.want)
			}
			for _, other := range []error{ErrMalformed, ErrTooLarge, ErrMAC, ErrDecrypt} {
				if other != tc.want && errors.Is(err, other) {
					t.Fatalf("Open error %v also matches %v", err, other)
				}
			}
		})
	}
}

func TestMessageTimestamp(t *testing.T) {
	k := keysFor(t, testPSK)
	for _, ms := range []int64{0, 1, -1, testMs, 1 << 50} {
		raw, err := Seal(k, testTopic, 1, time.UnixMilli(ms), []byte("{}"), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Open(k, testTopic, raw)
		if err != nil || m.Timestamp.UnixMilli() != ms {
			t.Fatalf("ms %d: got %v, %v", ms, m.Timestamp.UnixMilli(), err)
		}
	}
}

// TestReason holds Reason to the result names of the vectors file.
func TestReason(t *testing.T) {
	for _, r := range resultNames[:6] {
		if got := Reason(errors.Join(errors.New("open"), r.err)); got != r.name {
			t.Errorf("Reason(%v) = %q, want %q", r.err, got, r.name)
		}
	}
	if got := Reason(nil); got != "" {
		t.Errorf("Reason(nil) = %q", got)
	}
	if got := Reason(ErrPasswordMAC); got != "" {
		t.Errorf("Reason(ErrPasswordMAC) = %q", got)
	}
	if len(Reasons) != 6 {
		t.Errorf("Reasons has %d names, want 6", len(Reasons))
	}
}
