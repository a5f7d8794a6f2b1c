package fota

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// ESP32 app image layout (ESP-IDF esp_app_format.h / esp_app_desc.h). All
// multi-byte fields of the image are little-endian.
const (
	ImageMagic        = 0xE9       // esp_image_header_t.magic
	AppDescMagic      = 0xABCD5432 // esp_app_desc_t.magic_word
	imageHeaderSize   = 24         // sizeof(esp_image_header_t)
	segmentHeaderSize = 8          // sizeof(esp_image_segment_header_t)
	appDescSize       = 256        // sizeof(esp_app_desc_t)
	appDescOffset     = imageHeaderSize + segmentHeaderSize
	maxSegments       = 16 // ESP_IMAGE_MAX_SEGMENTS
	checksumSeed      = 0xEF
	failBootMarker    = 0x4C494146 // "FAIL" as little-endian u32 in reserv1[0]

	// MinTestImageSize is the smallest size BuildTestImage accepts.
	MinTestImageSize = 336
)

// Offsets inside esp_app_desc_t.
const (
	descSecureVersion = 4
	descReserv1       = 8
	descVersion       = 16
	descProjectName   = 48
	descTime          = 80
	descDate          = 96
	descIDFVer        = 112
	descELFSHA256     = 144
)

// Descriptor is what ParseImage reads from an ESP32 app image: the
// esp_app_desc_t at the start of the first segment, plus layout facts.
type Descriptor struct {
	Version       string   // esp_app_desc_t.version
	ProjectName   string   // esp_app_desc_t.project_name
	SecureVersion uint32   // anti-rollback counter of ESP-IDF secure boot
	Time, Date    string   // build time and date (may be empty)
	IDFVersion    string   // esp_app_desc_t.idf_ver
	ELFSHA256     [32]byte // esp_app_desc_t.app_elf_sha256
	ChipID        uint16   // esp_image_header_t.chip_id (0 = ESP32)
	Segments      int      // segment count
	HashAppended  bool     // a SHA-256 of the image follows the checksum
	ImageLen      int      // bytes covered by the image format; any rest is trailing padding
	// FailBoot marks an EcoWatt test image whose self-test fails on
	// purpose: esp_app_desc_t.reserv1[0] == 0x4C494146 ("FAIL" in memory).
	// Real ESP-IDF images have zero there.
	FailBoot bool
}

// ParseImage validates an ESP32 app image and returns its descriptor. It
// checks the image header, walks every segment, verifies the XOR checksum
// and, when the header says so, the appended SHA-256; the first segment must
// start with a valid esp_app_desc_t. Bytes after the image proper (flash
// padding, a secure-boot signature block) are allowed: the manifest hash
// covers them.
func ParseImage(b []byte) (Descriptor, error) {
	var d Descriptor
	if len(b) < appDescOffset+appDescSize {
		return d, fmt.Errorf("parse image: %w: truncated: %d bytes, need at least %d for header and app descriptor",
			ErrBadImage, len(b), appDescOffset+appDescSize)
	}
	if b[0] != ImageMagic {
		return d, fmt.Errorf("parse image: %w: magic %#02x, want %#02x (not an ESP32 app image)", ErrBadImage, b[0], ImageMagic)
	}
	d.Segments = int(b[1])
	if d.Segments < 1 || d.Segments > maxSegments {
		return d, fmt.Errorf("parse image: %w: segment count %d outside 1..%d", ErrBadImage, d.Segments, maxSegments)
	}
	d.ChipID = binary.LittleEndian.Uint16(b[12:])
	switch b[23] {
	case 0:
	case 1:
		d.HashAppended = true
	default:
		return d, fmt.Errorf("parse image: %w: hash_appended byte %#02x, want 0 or 1", ErrBadImage, b[23])
	}
	if n := binary.LittleEndian.Uint32(b[imageHeaderSize+4:]); n < appDescSize {
		return d, fmt.Errorf("parse image: %w: no app descriptor: first segment is %d bytes, need %d", ErrBadImage, n, appDescSize)
	}
	if err := parseDesc(b[appDescOffset:appDescOffset+appDescSize], &d); err != nil {
		return Descriptor{}, fmt.Errorf("parse image: %w", err)
	}
	n, err := imageLen(b, d.Segments, d.HashAppended)
	if err != nil {
		return Descriptor{}, fmt.Errorf("parse image: %w", err)
	}
	d.ImageLen = n
	return d, nil
}

// imageLen walks the segments and checks checksum and appended hash.
func imageLen(b []byte, segments int, hashAppended bool) (int, error) {
	off := imageHeaderSize
	sum := byte(checksumSeed)
	for i := range segments {
		if len(b)-off < segmentHeaderSize {
			return 0, fmt.Errorf("%w: truncated in segment %d header at offset %d", ErrBadImage, i, off)
		}
		n := binary.LittleEndian.Uint32(b[off+4:])
		off += segmentHeaderSize
		if uint64(n) > uint64(len(b)-off) {
			return 0, fmt.Errorf("%w: truncated: segment %d needs %d bytes at offset %d, image has %d", ErrBadImage, i, n, off, len(b))
		}
		for _, c := range b[off : off+int(n)] {
			sum ^= c
		}
		off += int(n)
	}
	off += 15 - off%16 // zero padding; the checksum is the last byte of a 16-byte block
	if off >= len(b) {
		return 0, fmt.Errorf("%w: truncated before the checksum at offset %d", ErrBadImage, off)
	}
	if b[off] != sum {
		return 0, fmt.Errorf("%w: checksum %#02x, computed %#02x (corrupt image)", ErrBadImage, b[off], sum)
	}
	off++
	if hashAppended {
		if len(b)-off < sha256.Size {
			return 0, fmt.Errorf("%w: truncated in the appended SHA-256 at offset %d", ErrBadImage, off)
		}
		h := sha256.Sum256(b[:off])
		if !bytes.Equal(h[:], b[off:off+sha256.Size]) {
			return 0, fmt.Errorf("%w: appended SHA-256 does not match the image (corrupt image)", ErrBadImage)
		}
		off += sha256.Size
	}
	return off, nil
}

func parseDesc(p []byte, d *Descriptor) error {
	if m := binary.LittleEndian.Uint32(p); m != AppDescMagic {
		return fmt.Errorf("%w: no app descriptor: magic_word %#08x at offset %d, want %#08x", ErrBadImage, m, appDescOffset, uint32(AppDescMagic))
	}
	d.SecureVersion = binary.LittleEndian.Uint32(p[descSecureVersion:])
	d.FailBoot = binary.LittleEndian.Uint32(p[descReserv1:]) == failBootMarker
	copy(d.ELFSHA256[:], p[descELFSHA256:descELFSHA256+32])
	for _, f := range []struct {
		name     string
		off, n   int
		required bool
		dst      *string
	}{
		{"version", descVersion, 32, true, &d.Version},
		{"project_name", descProjectName, 32, false, &d.ProjectName},
		{"time", descTime, 16, false, &d.Time},
		{"date", descDate, 16, false, &d.Date},
		{"idf_ver", descIDFVer, 32, false, &d.IDFVersion},
	} {
		s, err := cString(p[f.off : f.off+f.n])
		if err != nil {
			return fmt.Errorf("%w: garbled app descriptor: %s: %w", ErrBadImage, f.name, err)
		}
		if f.required && s == "" {
			return fmt.Errorf("%w: garbled app descriptor: empty %s", ErrBadImage, f.name)
		}
		*f.dst = s
	}
	return nil
}

// cString reads a NUL-terminated printable-ASCII string from a fixed field.
// The field must hold a NUL (a C char[N] holds at most N-1 characters).
func cString(f []byte) (string, error) {
	i := bytes.IndexByte(f, 0)
	if i < 0 {
		return "", fmt.Errorf("no NUL terminator in %d bytes", len(f))
	}
	for _, c := range f[:i] {
		if c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("byte %#02x is not printable ASCII", c)
		}
	}
	return string(f[:i]), nil
}

// Test image constants: what BuildTestImage writes.
const (
	TestProjectName = "ecowatt-gw"
	testIDFVersion  = "v5.2.1"
	testLoadAddr    = 0x3F400020 // ESP32 DROM, where .flash.rodata (and the descriptor) is mapped
	testEntryAddr   = 0x40081000
)

// BuildTestImage makes a valid ESP32-style app image of exactly size bytes:
// one DROM segment that starts with an esp_app_desc_t (project
// TestProjectName, the given version) followed by deterministic filler
// derived from seed, the XOR checksum and an appended SHA-256. When size is
// not a multiple of 16 the remainder follows as 0xFF padding, as in erased
// flash. With failBoot the descriptor carries the fail-boot marker
// (Descriptor.FailBoot), and a simulated device fails its self-test.
//
// The filler is block i = SHA-256("ecowatt-fota-fill" || u64be(seed) ||
// u64be(i)), concatenated, so any language can reproduce an image.
func BuildTestImage(version string, size int, failBoot bool, seed int64) ([]byte, error) {
	if size < MinTestImageSize || size > MaxImageSize {
		return nil, fmt.Errorf("build test image: %w: size %d outside %d..%d", ErrTooLarge, size, MinTestImageSize, MaxImageSize)
	}
	if err := checkVersionString(version); err != nil {
		return nil, fmt.Errorf("build test image: %w", err)
	}
	proper := size - size%16
	segLen := proper - appDescOffset - 4 - sha256.Size // 3 bytes of padding, 1 checksum byte
	b := make([]byte, size)

	b[0] = ImageMagic
	b[1] = 1    // segment count
	b[2] = 2    // spi_mode DIO
	b[3] = 0x20 // spi_speed 40 MHz (low nibble 0), spi_size 4 MB (high nibble 2)
	binary.LittleEndian.PutUint32(b[4:], testEntryAddr)
	b[8] = 0xEE                                // wp_pin: disabled
	binary.LittleEndian.PutUint16(b[12:], 0)   // chip_id ESP32
	binary.LittleEndian.PutUint16(b[17:], 399) // max_chip_rev_full v3.99
	b[23] = 1                                  // hash_appended
	binary.LittleEndian.PutUint32(b[24:], testLoadAddr)
	binary.LittleEndian.PutUint32(b[28:], uint32(segLen))

	seg := b[appDescOffset : appDescOffset+segLen]
	fill(seg[appDescSize:], seed)
	desc := seg[:appDescSize]
	binary.LittleEndian.PutUint32(desc, AppDescMagic)
	if failBoot {
		binary.LittleEndian.PutUint32(desc[descReserv1:], failBootMarker)
	}
	copy(desc[descVersion:], version)
	copy(desc[descProjectName:], TestProjectName)
	copy(desc[descTime:], "00:00:00")
	copy(desc[descDate:], "Jan  1 2026")
	copy(desc[descIDFVer:], testIDFVersion)
	elf := sha256.Sum256(fmt.Appendf(nil, "ecowatt-fota-elf %s %d %t", version, seed, failBoot))
	copy(desc[descELFSHA256:], elf[:])

	sum := byte(checksumSeed)
	for _, c := range seg {
		sum ^= c
	}
	off := appDescOffset + segLen + 3 // padding bytes stay zero
	b[off] = sum
	off++
	h := sha256.Sum256(b[:off])
	copy(b[off:], h[:])
	for i := proper; i < size; i++ {
		b[i] = 0xFF
	}
	return b, nil
}

// fill writes the deterministic filler stream for seed into p.
func fill(p []byte, seed int64) {
	var in [len("ecowatt-fota-fill") + 16]byte
	copy(in[:], "ecowatt-fota-fill")
	binary.BigEndian.PutUint64(in[len(in)-16:], uint64(seed))
	for i := uint64(0); len(p) > 0; i++ {
		binary.BigEndian.PutUint64(in[len(in)-8:], i)
		h := sha256.Sum256(in[:])
		p = p[copy(p, h[:]):]
	}
}
