package fota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"unicode/utf8"
)

// SigningLabel starts the canonical bytes a manifest signature covers. It
// differs from every envelope label, so no MAC input is ever a signing input.
const SigningLabel = "ecowatt-v1 fota-manifest"

// Manifest describes one firmware image. It travels as
// {"fota_manifest":{...}} on down/fota_manifest and is signed with the
// firmware key (Ed25519) over SigningBytes, never over its JSON text.
type Manifest struct {
	Version   string   `json:"version"`    // firmware version, equal to the image descriptor's
	Size      int64    `json:"size"`       // image size in bytes
	Hash      string   `json:"hash"`       // SHA-256 of the whole image, 64 lowercase hex digits
	ChunkSize int      `json:"chunk_size"` // bytes per chunk (the last one may be shorter)
	Chunks    []string `json:"chunks"`     // SHA-256 of each chunk, 64 lowercase hex digits each
	Signature string   `json:"signature"`  // Ed25519 signature, 128 lowercase hex digits
}

// NumChunks returns ceil(size / chunkSize), the number of chunks of an image.
func NumChunks(size int64, chunkSize int) int {
	if size <= 0 || chunkSize <= 0 {
		return 0
	}
	return int((size + int64(chunkSize) - 1) / int64(chunkSize))
}

// BuildManifest checks image (ESP32 app descriptor present, its version
// equal to version) and returns its signed manifest with chunks of
// chunkSize bytes.
func BuildManifest(image []byte, version string, chunkSize int, key ed25519.PrivateKey) (Manifest, error) {
	if err := ValidVersion(version); err != nil {
		return Manifest{}, fmt.Errorf("build manifest: %w", err)
	}
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize {
		return Manifest{}, fmt.Errorf("build manifest: %w: chunk size %d outside %d..%d", ErrMalformed, chunkSize, MinChunkSize, MaxChunkSize)
	}
	if len(image) > MaxImageSize {
		return Manifest{}, fmt.Errorf("build manifest: %w: image is %d bytes, limit %d", ErrTooLarge, len(image), MaxImageSize)
	}
	if n := NumChunks(int64(len(image)), chunkSize); n > MaxChunks {
		return Manifest{}, fmt.Errorf("build manifest: %w: %d chunks of %d bytes, limit %d chunks (use a larger chunk size)", ErrTooLarge, n, chunkSize, MaxChunks)
	}
	d, err := ParseImage(image)
	if err != nil {
		return Manifest{}, fmt.Errorf("build manifest: %w", err)
	}
	if d.Version != version {
		return Manifest{}, fmt.Errorf("build manifest: %w: image descriptor says %q, uploaded as %q", ErrVersionMismatch, d.Version, version)
	}
	sum := sha256.Sum256(image)
	m := Manifest{
		Version:   version,
		Size:      int64(len(image)),
		Hash:      hex.EncodeToString(sum[:]),
		ChunkSize: chunkSize,
		Chunks:    make([]string, 0, NumChunks(int64(len(image)), chunkSize)),
	}
	for off := 0; off < len(image); off += chunkSize {
		c := sha256.Sum256(image[off:min(off+chunkSize, len(image))])
		m.Chunks = append(m.Chunks, hex.EncodeToString(c[:]))
	}
	if err := m.Sign(key); err != nil {
		return Manifest{}, fmt.Errorf("build manifest: %w", err)
	}
	return m, nil
}

// Validate checks every field except the signature: version, size within
// 1..MaxImageSize, hex lengths and case, chunk size, and that there are
// exactly ceil(size/chunk_size) chunk hashes.
func (m Manifest) Validate() error {
	if err := ValidVersion(m.Version); err != nil {
		return err
	}
	if m.Size < 1 {
		return fmt.Errorf("%w: size %d", ErrMalformed, m.Size)
	}
	if m.Size > MaxImageSize {
		return fmt.Errorf("%w: size %d, limit %d", ErrTooLarge, m.Size, MaxImageSize)
	}
	if m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize {
		return fmt.Errorf("%w: chunk_size %d outside %d..%d", ErrMalformed, m.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	want := NumChunks(m.Size, m.ChunkSize)
	if want > MaxChunks {
		return fmt.Errorf("%w: %d chunks, limit %d", ErrTooLarge, want, MaxChunks)
	}
	if len(m.Chunks) != want {
		return fmt.Errorf("%w: %d chunk hashes, size %d at chunk_size %d needs %d", ErrMalformed, len(m.Chunks), m.Size, m.ChunkSize, want)
	}
	if !isLowerHex(m.Hash, sha256.Size) {
		return fmt.Errorf("%w: hash must be %d lowercase hex digits", ErrMalformed, 2*sha256.Size)
	}
	for i, c := range m.Chunks {
		if !isLowerHex(c, sha256.Size) {
			return fmt.Errorf("%w: chunks[%d] must be %d lowercase hex digits", ErrMalformed, i, 2*sha256.Size)
		}
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// SigningBytes returns the canonical byte string the signature covers:
//
//	"ecowatt-v1 fota-manifest" || 0x00 || u8(len(version)) || version
//	|| u64(size) || hash[32] || u32(chunk_size) || u32(len(chunks)) || chunk[0][32] || ... || chunk[n-1][32]
//
// Integers are big-endian; hashes are the raw 32-byte digests.
func (m Manifest) SigningBytes() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("manifest signing bytes: %w", err)
	}
	b := make([]byte, 0, len(SigningLabel)+2+len(m.Version)+8+32+8+32*len(m.Chunks))
	b = append(b, SigningLabel...)
	b = append(b, 0, byte(len(m.Version)))
	b = append(b, m.Version...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b, _ = hex.AppendDecode(b, []byte(m.Hash)) // Validate checked the hex
	b = binary.BigEndian.AppendUint32(b, uint32(m.ChunkSize))
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Chunks)))
	for _, c := range m.Chunks {
		b, _ = hex.AppendDecode(b, []byte(c))
	}
	return b, nil
}

// Sign sets m.Signature to the Ed25519 signature of m.SigningBytes().
func (m *Manifest) Sign(key ed25519.PrivateKey) error {
	if len(key) != ed25519.PrivateKeySize {
		return fmt.Errorf("sign manifest: private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	msg, err := m.SigningBytes()
	if err != nil {
		return fmt.Errorf("sign manifest: %w", err)
	}
	m.Signature = hex.EncodeToString(ed25519.Sign(key, msg))
	return nil
}

// Verify validates m and checks its signature under pub. A tampered field,
// a signature by another key or a malformed signature all wrap ErrSignature;
// invalid fields wrap ErrMalformed or ErrTooLarge.
func (m Manifest) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("verify manifest: public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	msg, err := m.SigningBytes()
	if err != nil {
		return fmt.Errorf("verify manifest: %w", err)
	}
	if !isLowerHex(m.Signature, ed25519.SignatureSize) {
		return fmt.Errorf("verify manifest: %w: signature must be %d lowercase hex digits", ErrSignature, 2*ed25519.SignatureSize)
	}
	sig, _ := hex.DecodeString(m.Signature)
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("verify manifest %s: %w", m.Version, ErrSignature)
	}
	return nil
}

// ParseManifest reads a bare manifest object strictly: valid UTF-8, at most
// MaxBodySize bytes, no unknown or missing fields, nothing after the object,
// and every field valid (Validate; the signature must be 128 lowercase hex
// digits). It does not check the signature: call Verify.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	if err := decodeStrict(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("parse manifest: %w", err)
	}
	if err := m.checkWire(); err != nil {
		return Manifest{}, fmt.Errorf("parse manifest: %w", err)
	}
	return m, nil
}

// checkWire is Validate plus the signature's format.
func (m Manifest) checkWire() error {
	if err := m.Validate(); err != nil {
		return err
	}
	if !isLowerHex(m.Signature, ed25519.SignatureSize) {
		return fmt.Errorf("%w: signature must be %d lowercase hex digits", ErrMalformed, 2*ed25519.SignatureSize)
	}
	return nil
}

// decodeStrict decodes one JSON object into v: at most MaxBodySize bytes,
// valid UTF-8, unknown fields refused, only whitespace after it. Missing
// fields are left for the caller's validation to catch.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxBodySize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxBodySize)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	if err := checkKeys(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	return nil
}

// checkKeys walks the JSON token stream and requires every object key to
// be unique within its object and spelled in lowercase [a-z0-9_], so that
// encoding/json's case-insensitive matching and last-one-wins duplicates
// cannot make two readers see different values.
func checkKeys(b []byte) error {
	type frame struct {
		obj, wantKey bool
		keys         map[string]bool
	}
	var st []*frame
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		t, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if n := len(st); n > 0 && st[n-1].obj && st[n-1].wantKey {
			if d, ok := t.(json.Delim); ok && d == '}' {
				st = st[:n-1]
			} else {
				k, _ := t.(string)
				if !isLowerKey(k) {
					return fmt.Errorf("%w: key %q is not lowercase [a-z0-9_]", ErrMalformed, k)
				}
				if st[n-1].keys[k] {
					return fmt.Errorf("%w: duplicate key %q", ErrMalformed, k)
				}
				st[n-1].keys[k] = true
				st[n-1].wantKey = false
				continue
			}
		} else if d, ok := t.(json.Delim); ok {
			switch d {
			case '{':
				st = append(st, &frame{obj: true, wantKey: true, keys: map[string]bool{}})
				continue
			case '[':
				st = append(st, &frame{})
				continue
			default: // ']'
				st = st[:len(st)-1]
			}
		}
		// A value is complete: its parent object expects a key next.
		if n := len(st); n > 0 && st[n-1].obj {
			st[n-1].wantKey = true
		}
	}
}

func isLowerKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// ChunkBounds returns the byte range [off, end) of chunk i in the image.
func (m Manifest) ChunkBounds(i int) (off, end int64, err error) {
	if i < 0 || i >= len(m.Chunks) {
		return 0, 0, fmt.Errorf("%w: index %d outside 0..%d", ErrChunk, i, len(m.Chunks)-1)
	}
	off = int64(i) * int64(m.ChunkSize)
	return off, min(off+int64(m.ChunkSize), m.Size), nil
}

// CheckChunk checks a received chunk against a verified manifest before it
// is written: same version, index in range, exact length, SHA-256 equal to
// the manifest's. Every failure wraps ErrChunk.
func (m Manifest) CheckChunk(c Chunk) error {
	if c.Version != m.Version {
		return fmt.Errorf("check chunk %d: %w: it belongs to firmware %q, downloading %q", c.Index, ErrChunk, c.Version, m.Version)
	}
	off, end, err := m.ChunkBounds(c.Index)
	if err != nil {
		return fmt.Errorf("check chunk: %w", err)
	}
	if int64(len(c.Data)) != end-off {
		return fmt.Errorf("check chunk %d: %w: %d bytes, want %d", c.Index, ErrChunk, len(c.Data), end-off)
	}
	h := sha256.Sum256(c.Data)
	if hex.EncodeToString(h[:]) != m.Chunks[c.Index] {
		return fmt.Errorf("check chunk %d: %w: SHA-256 does not match the manifest", c.Index, ErrChunk)
	}
	return nil
}

// VerifyImage is the device's final check of an assembled image against a
// verified manifest: exact size, whole-image SHA-256 (ErrImageHash), a valid
// app descriptor (ErrBadImage) naming the manifest's version
// (ErrVersionMismatch).
func (m Manifest) VerifyImage(image []byte) (Descriptor, error) {
	if int64(len(image)) != m.Size {
		return Descriptor{}, fmt.Errorf("verify image: %w: %d bytes, manifest says %d", ErrImageHash, len(image), m.Size)
	}
	h := sha256.Sum256(image)
	if hex.EncodeToString(h[:]) != m.Hash {
		return Descriptor{}, fmt.Errorf("verify image: %w", ErrImageHash)
	}
	d, err := ParseImage(image)
	if err != nil {
		return Descriptor{}, fmt.Errorf("verify image: %w", err)
	}
	if d.Version != m.Version {
		return Descriptor{}, fmt.Errorf("verify image: %w: descriptor says %q, manifest %q", ErrVersionMismatch, d.Version, m.Version)
	}
	return d, nil
}
