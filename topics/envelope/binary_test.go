package envelope

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

func mustSealBinary(t testing.TB, k *Keys, topic string, nonce uint64, payload []byte) []byte {
	t.Helper()
	raw, err := SealBinary(k, topic, nonce, testTime, payload)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

const chunkTopic = "ecowatt/v1/dev/inv-0001/down/fota_chunk"

// testChunk is a small binary payload with every byte value in it.
func testChunk() []byte {
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestBinaryRoundTrip(t *testing.T) {
	k := keysFor(t, testPSK)
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"empty", []byte{}},
		{"one byte", []byte{0}},
		{"all byte values", testChunk()},
		{"max payload", bytes.Repeat([]byte{0xa5}, MaxBinaryPayload)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := mustSealBinary(t, k, chunkTopic, 99, tc.payload)
			if len(raw) != binaryHeader+len(tc.payload)+32 || !IsBinary(raw) {
				t.Fatalf("frame length %d, IsBinary %v", len(raw), IsBinary(raw))
			}
			m, err := OpenBinary(k, chunkTopic, raw)
			if err != nil {
				t.Fatal(err)
			}
			if m.Nonce != 99 || !m.Timestamp.Equal(testTime) || m.Encrypted || !bytes.Equal(m.Body, tc.payload) {
				t.Fatalf("OpenBinary = %+v", m)
			}
		})
	}
}

func TestBinaryLayout(t *testing.T) {
	k := keysFor(t, testPSK)
	raw := mustSealBinary(t, k, chunkTopic, 0x0102, []byte("hi"))
	head := hex.EncodeToString(raw[:binaryHeader+2])
	want := "45574231" + "0000000000000102" + hex.EncodeToString(binary.BigEndian.AppendUint64(nil, uint64(testMs))) + "00" + "00000002" + "6869"
	if head != want {
		t.Fatalf("header %s\nwant   %s", head, want)
	}
	// The trailing MAC is the same HMAC as a plain JSON envelope's.
	if got, want := raw[len(raw)-32:], k.mac(chunkTopic, 0x0102, testMs, false, []byte("hi")); !bytes.Equal(got, want[:]) {
		t.Fatalf("mac %x, want %x", got, want)
	}
}

// binaryCase is one row of the OpenBinary table; FuzzOpenBinary is seeded
// from it.
type binaryCase struct {
	name  string
	topic string
	psk   []byte
	raw   []byte
	want  error
}

func binaryCases(t testing.TB) []binaryCase {
	k := keysFor(t, testPSK)
	good := mustSealBinary(t, k, chunkTopic, 5, testChunk())
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	flip := func(i int) []byte { return mod(func(b []byte) []byte { b[i] ^= 0x01; return b }) }
	return []binaryCase{
		{name: "ok", raw: good},
		{name: "flipped payload byte", raw: flip(binaryHeader + 10), want: ErrMAC},
		{name: "flipped mac", raw: flip(len(good) - 1), want: ErrMAC},
		{name: "flipped nonce", raw: flip(11), want: ErrMAC},
		{name: "flipped timestamp", raw: flip(19), want: ErrMAC},
		{name: "wrong key", psk: otherPSK, raw: good, want: ErrMAC},
		{name: "moved to another device", topic: "ecowatt/v1/dev/inv-0002/down/fota_chunk", raw: good, want: ErrMAC},
		{name: "moved to another kind", topic: "ecowatt/v1/dev/inv-0001/down/fota_manifest", raw: good, want: ErrMAC},
		{name: "wrong magic", raw: mod(func(b []byte) []byte { copy(b, "EWB2"); return b }), want: ErrMalformed},
		{name: "json is not binary", raw: mustSeal(t, k, chunkTopic, 5, "{}", false), want: ErrMalformed},
		{name: "flags set", raw: flip(20), want: ErrMalformed},
		{name: "one byte short", raw: good[:len(good)-1], want: ErrMalformed},
		{name: "one byte extra", raw: append(append([]byte(nil), good...), 0), want: ErrMalformed},
		{name: "length field too big", raw: flip(24), want: ErrMalformed},
		{name: "length field huge", raw: mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[21:], 1<<32-1); return b }), want: ErrMalformed},
		{name: "header only", raw: good[:binaryHeader], want: ErrMalformed},
		{name: "empty", raw: []byte{}, want: ErrMalformed},
		{name: "magic only", raw: []byte(BinaryMagic), want: ErrMalformed},
		{name: "nonce 0", raw: mod(func(b []byte) []byte { binary.BigEndian.PutUint64(b[4:], 0); return b }), want: ErrMalformed},
		{name: "nonce above max", raw: mod(func(b []byte) []byte { binary.BigEndian.PutUint64(b[4:], MaxNonce+1); return b }), want: ErrMalformed},
	}
}

func TestOpenBinary(t *testing.T) {
	for _, tc := range binaryCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			psk, topic := tc.psk, tc.topic
			if psk == nil {
				psk = testPSK
			}
			if topic == "" {
				topic = chunkTopic
			}
			m, err := OpenBinary(keysFor(t, psk), topic, tc.raw)
			if tc.want == nil {
				if err != nil || !bytes.Equal(m.Body, testChunk()) {
					t.Fatalf("OpenBinary = %x, %v", m.Body, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("OpenBinary error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSealBinaryErrors(t *testing.T) {
	k := keysFor(t, testPSK)
	for _, tc := range []struct {
		name    string
		topic   string
		nonce   uint64
		payload []byte
		want    error
	}{
		{"nonce 0", chunkTopic, 0, nil, ErrMalformed},
		{"nonce above max", chunkTopic, MaxNonce + 1, nil, ErrMalformed},
		{"empty topic", "", 1, nil, ErrMalformed},
		{"payload too large", chunkTopic, 1, make([]byte, MaxBinaryPayload+1), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SealBinary(k, tc.topic, tc.nonce, time.Time{}, tc.payload); !errors.Is(err, tc.want) {
				t.Fatalf("SealBinary error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestIsBinary(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want bool
	}{{"EWB1", true}, {"EWB1\x00", true}, {"EWB", false}, {"", false}, {`{"nonce":1}`, false}, {"ewb1", false}} {
		if got := IsBinary([]byte(tc.raw)); got != tc.want {
			t.Errorf("IsBinary(%q) = %v", tc.raw, got)
		}
	}
}
