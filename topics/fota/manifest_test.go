package fota

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

func TestBuildManifestRoundTrip(t *testing.T) {
	pub, priv := testKey(1)
	for _, tc := range []struct {
		name            string
		size, chunkSize int
	}{
		{"exact multiple", 64 << 10, 16 << 10},
		{"short last chunk", 100_003, 16 << 10},
		{"min chunk", 5000, MinChunkSize},
		{"max chunk", 1 << 20, MaxChunkSize},
		{"one chunk", 1000, MaxChunkSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := mustImage(t, "1.0.4", tc.size, false, 3)
			m := mustManifest(t, img, "1.0.4", tc.chunkSize, priv)
			if m.Size != int64(tc.size) || len(m.Chunks) != NumChunks(int64(tc.size), tc.chunkSize) {
				t.Fatalf("size %d, %d chunks", m.Size, len(m.Chunks))
			}
			if err := m.Verify(pub); err != nil {
				t.Fatal(err)
			}
			back, err := ParseManifest(mustJSON(t, m))
			if err != nil {
				t.Fatal(err)
			}
			if err := back.Verify(pub); err != nil {
				t.Fatal(err)
			}
			body, err := ParseManifestBody(mustJSON(t, ManifestBody{&m}))
			if err != nil || body.Hash != m.Hash {
				t.Fatalf("body round trip: %v", err)
			}
			// The device side: every chunk checks, the reassembled image verifies.
			var got []byte
			for i := range m.Chunks {
				off, end, err := m.ChunkBounds(i)
				if err != nil {
					t.Fatal(err)
				}
				c := Chunk{Version: m.Version, Index: i, Data: img[off:end]}
				if err := m.CheckChunk(c); err != nil {
					t.Fatal(err)
				}
				got = append(got, c.Data...)
			}
			if d, err := m.VerifyImage(got); err != nil || d.Version != "1.0.4" {
				t.Fatalf("VerifyImage: %+v, %v", d, err)
			}
		})
	}
}

func TestBuildManifestErrors(t *testing.T) {
	_, priv := testKey(1)
	img := mustImage(t, "1.0.4", 8192, false, 1)
	noDesc := espImage(realishHeader, []espSegment{{0x3F400020, make([]byte, 1024)}}, true)
	for _, tc := range []struct {
		name      string
		img       []byte
		version   string
		chunkSize int
		sentinel  error
		sub       string
	}{
		{"version mismatch", img, "1.0.5", 1024, ErrVersionMismatch, `says "1.0.4", uploaded as "1.0.5"`},
		{"image without descriptor", noDesc, "1.0.4", 1024, ErrBadImage, "no app descriptor"},
		{"truncated image", img[:5000], "1.0.4", 1024, ErrBadImage, "truncated"},
		{"chunk size too small", img, "1.0.4", MinChunkSize - 1, ErrMalformed, "chunk size"},
		{"chunk size too large", img, "1.0.4", MaxChunkSize + 1, ErrMalformed, "chunk size"},
		{"oversized", make([]byte, MaxImageSize+1), "1.0.4", MaxChunkSize, ErrTooLarge, "limit"},
		{"too many chunks", make([]byte, MaxChunks*MinChunkSize+1), "1.0.4", MinChunkSize, ErrTooLarge, "larger chunk size"},
		{"bad version", img, "1.0.4 ", 1024, ErrMalformed, "version"},
		{"unsortable version", img, "release-a", 1024, ErrMalformed, "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := BuildManifest(tc.img, tc.version, tc.chunkSize, priv)
			wantErr(t, err, tc.sentinel, tc.sub)
		})
	}
	t.Run("bad private key", func(t *testing.T) {
		_, err := BuildManifest(img, "1.0.4", 1024, priv[:32])
		if err == nil || !strings.Contains(err.Error(), "private key is 32 bytes") {
			t.Fatalf("error %v, want a private key length error", err)
		}
	})
}

// TestVerifyRejects: a manifest changed after signing, or checked with the
// wrong key, fails with ErrSignature; structural damage fails earlier.
func TestVerifyRejects(t *testing.T) {
	pub, priv := testKey(1)
	otherPub, otherPriv := testKey(2)
	img := mustImage(t, "1.0.4", 10_000, false, 1)
	good := mustManifest(t, img, "1.0.4", 1024, priv)
	edit := func(f func(m *Manifest)) Manifest {
		m := good
		m.Chunks = append([]string(nil), good.Chunks...)
		f(&m)
		return m
	}
	flipHex := func(s string) string {
		b, _ := hex.DecodeString(s)
		b[0] ^= 1
		return hex.EncodeToString(b)
	}
	for _, tc := range []struct {
		name     string
		m        Manifest
		pub      []byte
		sentinel error
	}{
		{"good", good, pub, nil},
		{"wrong key", good, otherPub, ErrSignature},
		{"signed by another key", edit(func(m *Manifest) { _ = m.Sign(otherPriv) }), pub, ErrSignature},
		{"bad signature", edit(func(m *Manifest) { m.Signature = flipHex(m.Signature) }), pub, ErrSignature},
		{"signature not hex", edit(func(m *Manifest) { m.Signature = strings.Repeat("z", 128) }), pub, ErrSignature},
		{"signature missing", edit(func(m *Manifest) { m.Signature = "" }), pub, ErrSignature},
		{"tampered version", edit(func(m *Manifest) { m.Version = "1.0.5" }), pub, ErrSignature},
		{"tampered hash", edit(func(m *Manifest) { m.Hash = flipHex(m.Hash) }), pub, ErrSignature},
		{"tampered chunk hash", edit(func(m *Manifest) { m.Chunks[3] = flipHex(m.Chunks[3]) }), pub, ErrSignature},
		{"swapped chunks", edit(func(m *Manifest) { m.Chunks[0], m.Chunks[1] = m.Chunks[1], m.Chunks[0] }), pub, ErrSignature},
		{"tampered size same count", edit(func(m *Manifest) { m.Size-- }), pub, ErrSignature},
		{"tampered chunk size", edit(func(m *Manifest) { m.ChunkSize = 1025 }), pub, ErrSignature},
		{"chunk removed", edit(func(m *Manifest) { m.Chunks = m.Chunks[:len(m.Chunks)-1] }), pub, ErrMalformed},
		{"chunk added", edit(func(m *Manifest) { m.Chunks = append(m.Chunks, m.Chunks[0]) }), pub, ErrMalformed},
		{"oversized", edit(func(m *Manifest) { m.Size = MaxImageSize + 1 }), pub, ErrTooLarge},
		{"uppercase hash", edit(func(m *Manifest) { m.Hash = strings.ToUpper(m.Hash) }), pub, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, tc.m.Verify(tc.pub), tc.sentinel, "")
		})
	}
	t.Run("short public key", func(t *testing.T) {
		if err := good.Verify(pub[:31]); err == nil {
			t.Fatal("accepted a 31-byte public key")
		}
	})
}

// manifestJSON returns a valid manifest's JSON with old replaced by new.
func manifestJSON(t testing.TB, old, new string) []byte {
	t.Helper()
	_, priv := testKey(1)
	m := mustManifest(t, mustImage(t, "1.0.4", 2500, false, 1), "1.0.4", 1024, priv)
	b := string(mustJSON(t, m))
	if old != "" && !strings.Contains(b, old) {
		t.Fatalf("%q not in %s", old, b)
	}
	return []byte(strings.Replace(b, old, new, 1))
}

func TestParseManifestStrict(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       []byte
		sentinel error
		sub      string
	}{
		{"valid", manifestJSON(t, "", ""), nil, ""},
		{"whitespace around", append(append([]byte(" \n"), manifestJSON(t, "", "")...), '\n'), nil, ""},
		{"unknown field", manifestJSON(t, `{"version"`, `{"project":"x","version"`), ErrMalformed, "unknown field"},
		{"case-folded key", manifestJSON(t, `"version"`, `"Version"`), ErrMalformed, "lowercase"},
		{"duplicate key", manifestJSON(t, `{"version":"1.0.4"`, `{"version":"1.0.4","version":"1.0.9"`), ErrMalformed, "duplicate"},
		{"trailing data", append(manifestJSON(t, "", ""), `{}`...), ErrMalformed, "after"},
		{"not an object", []byte(`["version"]`), ErrMalformed, "object"},
		{"null", []byte(`null`), ErrMalformed, "object"},
		{"invalid UTF-8", manifestJSON(t, `"version":"1.0.4"`, "\"version\":\"1.0.4\xff\""), ErrMalformed, "UTF-8"},
		{"missing signature", manifestJSON(t, `,"signature"`, `,"x_signature"`), ErrMalformed, ""},
		{"size zero", manifestJSON(t, `"size":2500`, `"size":0`), ErrMalformed, "size"},
		{"size float", manifestJSON(t, `"size":2500`, `"size":2500.0`), ErrMalformed, ""},
		{"oversized", manifestJSON(t, `"size":2500`, `"size":16777217`), ErrTooLarge, ""},
		{"wrong chunk count", manifestJSON(t, `"chunk_size":1024`, `"chunk_size":2048`), ErrMalformed, "needs 2"},
		{"chunk size out of range", manifestJSON(t, `"chunk_size":1024`, `"chunk_size":512`), ErrMalformed, "chunk_size"},
		{"short hash", manifestJSON(t, `"hash":"`, `"hash":"0`), ErrMalformed, "hash"},
		{"uppercase chunk hash", manifestJSON(t, `"chunks":["`, `"chunks":["A`), ErrMalformed, "chunks[0]"},
		{"short signature", manifestJSON(t, `"signature":"`, `"signature":"00`), ErrMalformed, "signature"},
		{"version too long", manifestJSON(t, `"version":"1.0.4"`, `"version":"1.0.4-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"`), ErrMalformed, "version"},
		{"too large", append(manifestJSON(t, "", ""), bytes.Repeat([]byte(" "), MaxBodySize)...), ErrTooLarge, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest(tc.in)
			wantErr(t, err, tc.sentinel, tc.sub)
		})
	}
}

func TestParseManifestBody(t *testing.T) {
	m := manifestJSON(t, "", "")
	for _, tc := range []struct {
		name     string
		in       string
		sentinel error
	}{
		{"valid", `{"fota_manifest":` + string(m) + `}`, nil},
		{"bare manifest", string(m), ErrMalformed},
		{"null manifest", `{"fota_manifest":null}`, ErrMalformed},
		{"empty", `{}`, ErrMalformed},
		{"extra member", `{"fota_manifest":` + string(m) + `,"x":1}`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifestBody([]byte(tc.in))
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

// TestMaxManifestFitsEnvelope: the largest manifest, wrapped in its body and
// escaped into an envelope's payload string, stays under the 262 144-byte
// envelope limit.
func TestMaxManifestFitsEnvelope(t *testing.T) {
	m := Manifest{Version: strings.Repeat("9", MaxVersionLen), Size: MaxChunks * MinChunkSize, ChunkSize: MinChunkSize,
		Hash: strings.Repeat("a", 64), Signature: strings.Repeat("b", 128)}
	for range MaxChunks {
		m.Chunks = append(m.Chunks, strings.Repeat("c", 64))
	}
	m.Version = "999999999.999999999.999999999"
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	body := mustJSON(t, ManifestBody{&m})
	payload := mustJSON(t, string(body)) // the JSON string the envelope carries
	const envelopeOverhead = 200         // nonce, timestamp, encrypted, mac and punctuation
	if n := len(payload) + envelopeOverhead; n > 262_144 || len(body) > MaxBodySize {
		t.Fatalf("largest manifest needs %d envelope bytes (body %d)", n, len(body))
	}
}

func TestCheckChunk(t *testing.T) {
	_, priv := testKey(1)
	img := mustImage(t, "1.0.4", 2500, false, 1)
	m := mustManifest(t, img, "1.0.4", 1024, priv)
	corrupt := append([]byte(nil), img[1024:2048]...)
	corrupt[5] ^= 0x80
	for _, tc := range []struct {
		name string
		c    Chunk
		sub  string
	}{
		{"good first", Chunk{"1.0.4", 0, img[:1024]}, ""},
		{"good last", Chunk{"1.0.4", 2, img[2048:]}, ""},
		{"corrupt", Chunk{"1.0.4", 1, corrupt}, "SHA-256"},
		{"another firmware", Chunk{"1.0.3", 1, img[1024:2048]}, "belongs to firmware"},
		{"wrong index", Chunk{"1.0.4", 0, img[1024:2048]}, "SHA-256"},
		{"index out of range", Chunk{"1.0.4", 3, img[:1]}, "outside"},
		{"negative index", Chunk{"1.0.4", -1, img[:1]}, "outside"},
		{"short", Chunk{"1.0.4", 0, img[:1000]}, "want 1024"},
		{"long last", Chunk{"1.0.4", 2, img[2000:]}, "want 452"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := m.CheckChunk(tc.c)
			if tc.sub == "" {
				wantErr(t, err, nil, "")
				return
			}
			wantErr(t, err, ErrChunk, tc.sub)
		})
	}
}

func TestVerifyImage(t *testing.T) {
	_, priv := testKey(1)
	img := mustImage(t, "1.0.4", 4096, false, 1)
	m := mustManifest(t, img, "1.0.4", 1024, priv)
	flipped := append([]byte(nil), img...)
	flipped[2000] ^= 1

	// A manifest whose hashes match an image with the wrong descriptor
	// cannot come from BuildManifest; build it by hand to test the check.
	other := mustImage(t, "1.0.5", 4096, false, 1)
	sum := sha256.Sum256(other)
	lying := m
	lying.Hash = hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name     string
		m        Manifest
		img      []byte
		sentinel error
	}{
		{"good", m, img, nil},
		{"truncated", m, img[:4000], ErrImageHash},
		{"flipped bit", m, flipped, ErrImageHash},
		{"descriptor version differs", lying, other, ErrVersionMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.m.VerifyImage(tc.img)
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

func TestManifestJSONFieldNames(t *testing.T) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(manifestJSON(t, "", ""), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "size", "hash", "chunk_size", "chunks", "signature"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("missing %q", k)
		}
	}
	if len(fields) != 6 {
		t.Errorf("fields %v", fields)
	}
}
