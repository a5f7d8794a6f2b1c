package envelope

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzCodecMatchesStdlib checks the hand-written reader against
// encoding/json: whatever parseEnvelope accepts, encoding/json decodes to
// the same values, and appendEnvelope's output is valid JSON that both read
// back identically.
func FuzzCodecMatchesStdlib(f *testing.F) {
	f.Add([]byte(`{"nonce":1,"timestamp":-5,"encrypted":false,"payload":"a\"b\\u00e9\u2028","mac":"00"}`))
	f.Add([]byte(` { "mac" : "x" , "payload":"\ud83d\ude00", "encrypted":true,"timestamp":0,"nonce":9007199254740991 } `))
	f.Add([]byte(`{"nonce":01,"timestamp":1,"encrypted":false,"payload":"","mac":""}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := parseEnvelope(raw)
		// Open refuses invalid UTF-8 before parsing; encoding/json would
		// replace it, so compare only valid input.
		if err == nil && utf8.Valid(raw) {
			var std Envelope
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&std); err != nil {
				t.Fatalf("we accepted what encoding/json refuses (%v): %q", err, raw)
			}
			if std.Nonce != e.nonce || std.Timestamp != e.ms || std.Encrypted != e.encrypted ||
				std.Payload != string(e.payload) || std.MAC != string(e.mac) {
				t.Fatalf("decoded differently: std %+v, ours %+v", std, e)
			}
		}
		// Whatever bytes a payload holds (as valid UTF-8), writing then
		// reading gives them back.
		if !bytes.ContainsRune(raw, 0xFFFD) && validUTF8(raw) {
			out := appendEnvelope(nil, 1, 2, true, raw, make([]byte, 32))
			back, err := parseEnvelope(out)
			if err != nil || !bytes.Equal(back.payload, raw) {
				t.Fatalf("round trip of %q: %v, got %q", raw, err, back.payload)
			}
			var std Envelope
			if err := json.Unmarshal(out, &std); err != nil || std.Payload != string(raw) {
				t.Fatalf("encoding/json reads our %q as %q (%v)", out, std.Payload, err)
			}
		}
	})
}

func validUTF8(b []byte) bool { return utf8.Valid(b) }

// TestOpenBodyDoesNotAlias: the body Open returns stays valid when the
// caller reuses its receive buffer, with and without escapes in the payload.
func TestOpenBodyDoesNotAlias(t *testing.T) {
	k := keysFor(t, testPSK)
	for _, body := range []string{`plain-no-escapes`, `{"with":"escapes"}`} {
		raw, err := Seal(k, testTopic, 1, testTime, []byte(body), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Open(k, testTopic, raw)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			raw[i] = 'X'
		}
		if string(m.Body) != body {
			t.Fatalf("body %q changed to %q when the input buffer was reused", body, m.Body)
		}
	}
}
