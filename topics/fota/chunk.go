package fota

import (
	"encoding/binary"
	"fmt"
)

// Chunk is one piece of a firmware image as carried on down/fota_chunk,
// inside a binary envelope (PROTOCOL.md section 5):
//
//	u8 len(version) | version | u32 index | data
//
// The integer is big-endian; data runs to the end of the payload.
type Chunk struct {
	Version string // firmware version the chunk belongs to
	Index   int    // 0-based chunk index
	Data    []byte // 1..MaxChunkSize bytes
}

// chunkHeader is the fixed part besides the version bytes.
const chunkHeader = 1 + 4

// MaxChunkPayload is the largest encoded chunk: it fits the binary
// envelope's payload limit of 33 792 bytes.
const MaxChunkPayload = chunkHeader + MaxVersionLen + MaxChunkSize

// EncodeChunk returns the wire form of c.
func EncodeChunk(c Chunk) ([]byte, error) {
	if err := checkVersionString(c.Version); err != nil {
		return nil, fmt.Errorf("encode chunk: %w", err)
	}
	if c.Index < 0 || c.Index >= MaxChunks {
		return nil, fmt.Errorf("encode chunk: %w: index %d outside 0..%d", ErrMalformed, c.Index, MaxChunks-1)
	}
	if len(c.Data) == 0 || len(c.Data) > MaxChunkSize {
		return nil, fmt.Errorf("encode chunk: %w: %d data bytes, want 1..%d", ErrMalformed, len(c.Data), MaxChunkSize)
	}
	b := make([]byte, 0, chunkHeader+len(c.Version)+len(c.Data))
	b = append(b, byte(len(c.Version)))
	b = append(b, c.Version...)
	b = binary.BigEndian.AppendUint32(b, uint32(c.Index))
	return append(b, c.Data...), nil
}

// DecodeChunk parses the wire form of a chunk. Data aliases b. It checks
// the format only; Manifest.CheckChunk checks the content.
func DecodeChunk(b []byte) (Chunk, error) {
	if len(b) > MaxChunkPayload {
		return Chunk{}, fmt.Errorf("decode chunk: %w: %d bytes, limit %d", ErrTooLarge, len(b), MaxChunkPayload)
	}
	if len(b) < 1 {
		return Chunk{}, fmt.Errorf("decode chunk: %w: empty", ErrMalformed)
	}
	n := int(b[0])
	if len(b) < 1+n+4+1 {
		return Chunk{}, fmt.Errorf("decode chunk: %w: %d bytes, too short for a %d-byte version, index and data", ErrMalformed, len(b), n)
	}
	c := Chunk{Version: string(b[1 : 1+n])}
	if err := checkVersionString(c.Version); err != nil {
		return Chunk{}, fmt.Errorf("decode chunk: %w", err)
	}
	idx := binary.BigEndian.Uint32(b[1+n:])
	if idx >= MaxChunks {
		return Chunk{}, fmt.Errorf("decode chunk: %w: index %d, limit %d", ErrMalformed, idx, MaxChunks-1)
	}
	c.Index = int(idx)
	c.Data = b[1+n+4:]
	if len(c.Data) > MaxChunkSize {
		return Chunk{}, fmt.Errorf("decode chunk: %w: %d data bytes, limit %d", ErrTooLarge, len(c.Data), MaxChunkSize)
	}
	return c, nil
}
