package fota

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// chunkGolden pins the chunk encoding byte by byte.
var chunkGolden = []struct {
	name string
	c    Chunk
	hex  string
}{
	{"small", Chunk{"1.0.4", 0, []byte("hello")},
		"05" + "312e302e34" + "00000000" + "68656c6c6f"},
	{"index 258", Chunk{"2.0.0", 258, []byte{0xde, 0xad}},
		"05" + "322e302e30" + "00000102" + "dead"},
	{"max index", Chunk{"v1", MaxChunks - 1, []byte{0}},
		"02" + "7631" + "00000bff" + "00"},
}

func TestChunkGolden(t *testing.T) {
	for _, tc := range chunkGolden {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := EncodeChunk(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(enc); got != tc.hex {
				t.Fatalf("encoded %s, want %s", got, tc.hex)
			}
			dec, err := DecodeChunk(enc)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Version != tc.c.Version || dec.Index != tc.c.Index || !bytes.Equal(dec.Data, tc.c.Data) {
				t.Fatalf("decoded %+v", dec)
			}
		})
	}
}

func TestChunkMaxSize(t *testing.T) {
	c := Chunk{strings.Repeat("1", MaxVersionLen), 1, make([]byte, MaxChunkSize)}
	enc, err := EncodeChunk(c)
	if err != nil {
		t.Fatal(err)
	}
	const maxBinaryEnvelopePayload = 33 << 10 // envelope.MaxBinaryPayload
	if len(enc) != MaxChunkPayload || len(enc) > maxBinaryEnvelopePayload {
		t.Fatalf("largest chunk is %d bytes", len(enc))
	}
	if _, err := DecodeChunk(enc); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeChunkErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Chunk
	}{
		{"empty version", Chunk{"", 0, []byte{1}}},
		{"long version", Chunk{strings.Repeat("1", 32), 0, []byte{1}}},
		{"negative index", Chunk{"1.0.0", -1, []byte{1}}},
		{"index too large", Chunk{"1.0.0", MaxChunks, []byte{1}}},
		{"no data", Chunk{"1.0.0", 0, nil}},
		{"too much data", Chunk{"1.0.0", 0, make([]byte, MaxChunkSize+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := EncodeChunk(tc.c)
			wantErr(t, err, ErrMalformed, "")
		})
	}
}

func TestDecodeChunkErrors(t *testing.T) {
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name     string
		in       []byte
		sentinel error
	}{
		{"empty", nil, ErrMalformed},
		{"zero version length", h("00" + "00000000" + "00"), ErrMalformed},
		{"version runs past end", h("09" + "312e302e34" + "0000"), ErrMalformed},
		{"no data", h("05" + "312e302e34" + "00000000"), ErrMalformed},
		{"version not printable", h("05" + "312e300034" + "00000000" + "01"), ErrMalformed},
		{"version too long", append(append([]byte{32}, strings.Repeat("1", 32)...), 0, 0, 0, 0, 1), ErrMalformed},
		{"index too large", h("05" + "312e302e34" + "00000c00" + "01"), ErrMalformed},
		{"data too large", append(h("05"+"312e302e34"+"00000000"), make([]byte, MaxChunkSize+1)...), ErrTooLarge},
		{"frame too large", make([]byte, MaxChunkPayload+1), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeChunk(tc.in)
			wantErr(t, err, tc.sentinel, "")
		})
	}
}
