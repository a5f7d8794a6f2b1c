package fota

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

func TestParseRealishImage(t *testing.T) {
	for _, hashed := range []bool{true, false} {
		img := realishImage(hashed)
		d, err := ParseImage(img)
		if err != nil {
			t.Fatalf("hash_appended=%t: %v", hashed, err)
		}
		elf := sha256.Sum256([]byte("hello_world.elf"))
		want := Descriptor{
			Version: "1.2.3", ProjectName: "hello_world", Time: "14:02:11", Date: "Mar 14 2025",
			IDFVersion: "v5.2.1", ELFSHA256: elf, ChipID: 0, Segments: 4, HashAppended: hashed, ImageLen: len(img),
		}
		if d != want {
			t.Errorf("hash_appended=%t:\n got %+v\nwant %+v", hashed, d, want)
		}
		// A secure-boot signature block or erased flash after the image is allowed.
		padded := append(append([]byte(nil), img...), bytes.Repeat([]byte{0xFF}, 4096)...)
		if d2, err := ParseImage(padded); err != nil || d2.ImageLen != len(img) {
			t.Errorf("with trailing padding: %+v, %v", d2, err)
		}
	}
}

func TestBuildTestImage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     int
		failBoot bool
	}{
		{"minimum", MinTestImageSize, false},
		{"odd size", 100_003, false},
		{"one MiB", 1 << 20, false},
		{"fail boot", 4096, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := mustImage(t, "1.0.4", tc.size, tc.failBoot, 42)
			if len(img) != tc.size {
				t.Fatalf("len %d, want %d", len(img), tc.size)
			}
			d, err := ParseImage(img)
			if err != nil {
				t.Fatal(err)
			}
			if d.Version != "1.0.4" || d.ProjectName != TestProjectName || d.FailBoot != tc.failBoot || !d.HashAppended {
				t.Errorf("descriptor %+v", d)
			}
			if d.ImageLen != tc.size-tc.size%16 {
				t.Errorf("ImageLen %d for size %d", d.ImageLen, tc.size)
			}
			if again := mustImage(t, "1.0.4", tc.size, tc.failBoot, 42); !bytes.Equal(img, again) {
				t.Error("not deterministic")
			}
			if other := mustImage(t, "1.0.4", tc.size, tc.failBoot, 43); bytes.Equal(img, other) {
				t.Error("seed does not change the filler")
			}
		})
	}
}

func TestBuildTestImageErrors(t *testing.T) {
	for _, tc := range []struct {
		name, version string
		size          int
		sentinel      error
	}{
		{"too small", "1.0.0", MinTestImageSize - 1, ErrTooLarge},
		{"too large", "1.0.0", MaxImageSize + 1, ErrTooLarge},
		{"empty version", "", 4096, ErrMalformed},
		{"long version", "1.0.0-aaaaaaaaaaaaaaaaaaaaaaaaaaaa", 4096, ErrMalformed},
		{"space in version", "1.0 beta", 4096, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := BuildTestImage(tc.version, tc.size, false, 1)
			wantErr(t, err, tc.sentinel, "")
		})
	}
}

// TestParseImageErrors: every damaged image is refused as ErrBadImage with
// a message that says what is wrong.
func TestParseImageErrors(t *testing.T) {
	good := mustImage(t, "1.0.4", 4096, false, 7)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	desc := func(b []byte) []byte { return b[appDescOffset : appDescOffset+appDescSize] }
	noDesc := espImage(realishHeader, []espSegment{{0x3F400020, make([]byte, 1024)}}, true)
	smallFirst := espImage(realishHeader, []espSegment{{0x3F400020, make([]byte, 64)}, {0x40080000, make([]byte, 1024)}}, true)

	for _, tc := range []struct {
		name string
		img  []byte
		sub  string
	}{
		{"empty", nil, "truncated"},
		{"header only", good[:24], "truncated"},
		{"truncated in descriptor", good[:200], "truncated"},
		{"truncated in segment", good[:2048], "truncated: segment 0"},
		{"truncated before checksum", good[:len(good)-33], "before the checksum"},
		{"truncated in hash", good[:len(good)-1], "appended SHA-256"},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 0xE8; return b }), "not an ESP32 app image"},
		{"zero segments", mod(func(b []byte) []byte { b[1] = 0; return b }), "segment count 0"},
		{"17 segments", mod(func(b []byte) []byte { b[1] = 17; return b }), "segment count 17"},
		{"bad hash_appended", mod(func(b []byte) []byte { b[23] = 2; return b }), "hash_appended"},
		{"no descriptor", noDesc, "no app descriptor: magic_word"},
		{"first segment too small", smallFirst, "no app descriptor: first segment"},
		{"descriptor magic", mod(func(b []byte) []byte { desc(b)[0] ^= 1; return b }), "no app descriptor"},
		{"version without NUL", mod(func(b []byte) []byte {
			copy(desc(b)[descVersion:], bytes.Repeat([]byte{'9'}, 32))
			return b
		}), "version: no NUL"},
		{"empty version", mod(func(b []byte) []byte { clear(desc(b)[descVersion : descVersion+32]); return b }), "empty version"},
		{"garbled project name", mod(func(b []byte) []byte { desc(b)[descProjectName+2] = 0x07; return b }), "project_name: byte 0x07"},
		{"garbled idf_ver", mod(func(b []byte) []byte { desc(b)[descIDFVer] = 0xC3; return b }), "idf_ver"},
		{"corrupt filler", mod(func(b []byte) []byte { b[1000] ^= 0x55; return b }), "checksum"},
		{"corrupt checksum", mod(func(b []byte) []byte { b[len(b)-33] ^= 1; return b }), "checksum"},
		{"corrupt hash", mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), "appended SHA-256 does not match"},
		{"segment length overflow", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[28:], 0xFFFFFFF0)
			return b
		}), "truncated: segment 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseImage(tc.img)
			wantErr(t, err, ErrBadImage, tc.sub)
		})
	}
}

func TestFailBootMarker(t *testing.T) {
	// A real image with the marker in reserv1[0] is a fail-boot image too:
	// the marker is the documented 4 bytes "FAIL", nothing else.
	img := mustImage(t, "2.0.0", 1024, true, 1)
	if got := img[appDescOffset+descReserv1 : appDescOffset+descReserv1+4]; string(got) != "FAIL" {
		t.Fatalf("reserv1[0] bytes %q, want \"FAIL\"", got)
	}
	if d, _ := ParseImage(realishImage(true)); d.FailBoot {
		t.Fatal("real image reported as fail-boot")
	}
}
