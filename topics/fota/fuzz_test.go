package fota

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func FuzzParseManifest(f *testing.F) {
	f.Add(manifestJSON(f, "", ""))
	f.Add(manifestJSON(f, `"chunk_size":1024`, `"chunk_size":2048`))
	f.Add(manifestJSON(f, `"version"`, `"Version"`))
	for _, s := range []string{`{}`, `null`, `{"version":"1.0.4","version":"1"}`, `{"Version":1}`, `[{"a":{"b":[1,{"c":2}]}}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed manifest does not validate: %v", err)
		}
		again, err := ParseManifest(mustJSON(t, m))
		if err != nil {
			t.Fatalf("re-marshalled manifest does not parse: %v", err)
		}
		sb1, _ := m.SigningBytes()
		sb2, _ := again.SigningBytes()
		if !bytes.Equal(sb1, sb2) || again.Signature != m.Signature {
			t.Fatal("signing bytes changed across a JSON round trip")
		}
		pubKey, _ := testKey(1)
		_ = m.Verify(pubKey) // must not panic
	})
}

func FuzzParseImage(f *testing.F) {
	img, _ := BuildTestImage("1.0.4", MinTestImageSize, false, 1)
	f.Add(img)
	f.Add(img[:300])
	f.Add(realishImage(true))
	f.Add(realishImage(false))
	f.Add([]byte{0xE9})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseImage(b)
		if err != nil {
			return
		}
		if d.ImageLen > len(b) || d.ImageLen < appDescOffset+appDescSize || d.Version == "" {
			t.Fatalf("accepted image with descriptor %+v, %d bytes", d, len(b))
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	for _, g := range chunkGolden {
		b, _ := hex.DecodeString(g.hex)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChunk(b)
		if err != nil {
			return
		}
		enc, err := EncodeChunk(c)
		if err != nil {
			t.Fatalf("decoded chunk does not encode: %v", err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("round trip changed the bytes: %x -> %x", b, enc)
		}
	})
}

func FuzzParseBodies(f *testing.F) {
	for _, s := range []string{
		`{"fota_request":{"version":"1.0.4","chunks":[3,4,5,6]}}`,
		`{"fota_status":{"version":"1.0.4","state":"downloading","chunk_received":12,"total_chunks":64}}`,
		`{"rollback":{"reason":"x","version":"1.0.4"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseRequest(b); err == nil {
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		if s, err := ParseStatus(b); err == nil {
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = ParseRollback(b)
	})
}

func FuzzCompareVersions(f *testing.F) {
	f.Add("1.0.4", "1.0.10")
	f.Add("1.1.0-rc.1", "1.1.0")
	f.Add("v1", "1.0.0+x")
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, err1 := CompareVersions(a, b)
		ba, err2 := CompareVersions(b, a)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("asymmetric errors: %v / %v", err1, err2)
		}
		if err1 == nil && ab != -ba {
			t.Fatalf("compare(%q,%q)=%d but reverse=%d", a, b, ab, ba)
		}
	})
}
