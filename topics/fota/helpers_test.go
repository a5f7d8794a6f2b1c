package fota

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// testKey returns a deterministic key pair; seed byte s repeated 32 times.
func testKey(s byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = s
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return priv.Public().(ed25519.PublicKey), priv
}

func mustImage(t testing.TB, version string, size int, failBoot bool, seed int64) []byte {
	t.Helper()
	img, err := BuildTestImage(version, size, failBoot, seed)
	if err != nil {
		t.Fatalf("BuildTestImage(%q, %d): %v", version, size, err)
	}
	return img
}

func mustManifest(t testing.TB, img []byte, version string, chunkSize int, priv ed25519.PrivateKey) Manifest {
	t.Helper()
	m, err := BuildManifest(img, version, chunkSize, priv)
	if err != nil {
		t.Fatalf("BuildManifest: %v", err)
	}
	return m
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantErr checks err against a sentinel (nil: success expected) and, when
// sub is not empty, a substring of the message.
func wantErr(t *testing.T, err, sentinel error, sub string) {
	t.Helper()
	switch {
	case sentinel == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case sentinel != nil && !errors.Is(err, sentinel):
		t.Fatalf("error %v, want %v", err, sentinel)
	case sub != "" && (err == nil || !strings.Contains(err.Error(), sub)):
		t.Fatalf("error %v, want it to mention %q", err, sub)
	}
}

// espSegment is one segment for espImage.
type espSegment struct {
	addr uint32
	data []byte
}

// espImage lays out an ESP32 app image the way esptool elf2image does,
// independently of BuildTestImage: 24-byte header, segments, zero padding so
// the XOR checksum (seed 0xEF) is the last byte of a 16-byte block, then
// optionally the SHA-256 of everything before.
func espImage(hdr [24]byte, segs []espSegment, hashAppended bool) []byte {
	hdr[1] = byte(len(segs))
	hdr[23] = 0
	if hashAppended {
		hdr[23] = 1
	}
	out := append([]byte(nil), hdr[:]...)
	sum := byte(0xEF)
	for _, s := range segs {
		out = binary.LittleEndian.AppendUint32(out, s.addr)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(s.data)))
		out = append(out, s.data...)
		for _, c := range s.data {
			sum ^= c
		}
	}
	out = append(out, make([]byte, 15-len(out)%16)...)
	out = append(out, sum)
	if hashAppended {
		h := sha256.Sum256(out)
		out = append(out, h[:]...)
	}
	return out
}

// appDesc builds an esp_app_desc_t field by field, as ESP-IDF v5 defines it.
func appDesc(version, project, tim, date, idf string, reserv1 uint32) []byte {
	d := make([]byte, 0, 256)
	d = binary.LittleEndian.AppendUint32(d, 0xABCD5432) // magic_word
	d = binary.LittleEndian.AppendUint32(d, 0)          // secure_version
	d = binary.LittleEndian.AppendUint32(d, reserv1)    // reserv1[0]
	d = binary.LittleEndian.AppendUint32(d, 0)          // reserv1[1]
	field := func(s string, n int) {
		f := make([]byte, n)
		copy(f, s)
		d = append(d, f...)
	}
	field(version, 32)
	field(project, 32)
	field(tim, 16)
	field(date, 16)
	field(idf, 32)
	elf := sha256.Sum256([]byte("hello_world.elf"))
	d = append(d, elf[:]...)                     // app_elf_sha256
	d = binary.LittleEndian.AppendUint16(d, 0)   // min_efuse_blk_rev_full
	d = binary.LittleEndian.AppendUint16(d, 199) // max_efuse_blk_rev_full
	d = append(d, 16, 0, 0, 0)                   // mmu_page_size (log2 64 KiB), reserv3[3]
	return append(d, make([]byte, 18*4)...)      // reserv2[18]
}

// realishHeader is an esp_image_header_t as esptool writes it for an ESP32
// with DIO flash at 40 MHz, 4 MB, entry 0x40081218.
var realishHeader = [24]byte{
	0xE9, 0x00, 0x02, 0x20, // magic, segment_count (set later), spi_mode DIO, 40 MHz | 4 MB
	0x18, 0x12, 0x08, 0x40, // entry_addr 0x40081218
	0xEE, 0x00, 0x00, 0x00, // wp_pin disabled, spi_pin_drv
	0x00, 0x00, // chip_id ESP32
	0x00,       // min_chip_rev
	0x00, 0x00, // min_chip_rev_full
	0x8F, 0x01, // max_chip_rev_full 399
	0x00, 0x00, 0x00, 0x00, // reserved
	0x00, // hash_appended (set later)
}

// realishImage is a four-segment ESP32 app image with a descriptor for
// "hello_world" 1.2.3.
func realishImage(hashAppended bool) []byte {
	pattern := func(n int, b byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = b ^ byte(i*7)
		}
		return p
	}
	drom := append(appDesc("1.2.3", "hello_world", "14:02:11", "Mar 14 2025", "v5.2.1", 0), pattern(1024, 0x11)...)
	return espImage(realishHeader, []espSegment{
		{0x3F400020, drom},
		{0x3FFB0000, pattern(512, 0x22)},
		{0x40080000, pattern(2048, 0x33)},
		{0x400D0020, pattern(4096, 0x44)},
	}, hashAppended)
}
