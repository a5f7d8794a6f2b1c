package fota

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Bitmap records which chunks of an image a device holds, so a download
// resumes after a disconnect or power cut without fetching them again. Bit
// i is set when chunk i has been verified and written. The zero value is an
// empty bitmap of length 0; use NewBitmap. A Bitmap is not safe for
// concurrent use.
type Bitmap struct {
	n    int
	bits []byte // bit i is bits[i/8] & (1 << (i%8))
}

// NewBitmap returns an empty bitmap for n chunks, 0 <= n <= MaxChunks.
func NewBitmap(n int) (*Bitmap, error) {
	if n < 0 || n > MaxChunks {
		return nil, fmt.Errorf("new bitmap: %w: %d chunks, limit %d", ErrTooLarge, n, MaxChunks)
	}
	return &Bitmap{n: n, bits: make([]byte, (n+7)/8)}, nil
}

// Len returns the number of chunks the bitmap covers.
func (b *Bitmap) Len() int { return b.n }

// Set marks chunk i as held.
func (b *Bitmap) Set(i int) error {
	if i < 0 || i >= b.n {
		return fmt.Errorf("bitmap set: index %d outside 0..%d", i, b.n-1)
	}
	b.bits[i/8] |= 1 << (i % 8)
	return nil
}

// Has reports whether chunk i is held; false for an index out of range.
func (b *Bitmap) Has(i int) bool {
	return i >= 0 && i < b.n && b.bits[i/8]&(1<<(i%8)) != 0
}

// Count returns the number of chunks held.
func (b *Bitmap) Count() int {
	c := 0
	for _, x := range b.bits {
		c += bits.OnesCount8(x)
	}
	return c
}

// Complete reports whether every chunk is held.
func (b *Bitmap) Complete() bool { return b.Count() == b.n }

// Reset clears every bit (the image must be fetched again).
func (b *Bitmap) Reset() { clear(b.bits) }

// Missing returns up to limit indices of chunks not held, lowest first.
func (b *Bitmap) Missing(limit int) []int {
	var out []int
	for i := 0; i < b.n && len(out) < limit; i++ {
		if i%8 == 0 && b.bits[i/8] == 0xFF {
			i += 7
			continue
		}
		if !b.Has(i) {
			out = append(out, i)
		}
	}
	return out
}

// MarshalBinary returns u32be(n) || ceil(n/8) bytes, bit i in byte i/8 at
// mask 1<<(i%8) (least significant bit first).
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b.bits)), uint32(b.n))
	return append(out, b.bits...), nil
}

// UnmarshalBinary restores a bitmap written by MarshalBinary. It refuses a
// wrong length, n above MaxChunks, or bits set beyond n.
func (b *Bitmap) UnmarshalBinary(data []byte) error {
	if len(data) < 4 {
		return fmt.Errorf("bitmap unmarshal: %w: %d bytes", ErrMalformed, len(data))
	}
	n := binary.BigEndian.Uint32(data)
	if n > MaxChunks {
		return fmt.Errorf("bitmap unmarshal: %w: %d chunks, limit %d", ErrMalformed, n, MaxChunks)
	}
	body := data[4:]
	if len(body) != (int(n)+7)/8 {
		return fmt.Errorf("bitmap unmarshal: %w: %d bitmap bytes for %d chunks", ErrMalformed, len(body), n)
	}
	if r := n % 8; r != 0 && body[len(body)-1]>>r != 0 {
		return fmt.Errorf("bitmap unmarshal: %w: bits set beyond chunk %d", ErrMalformed, n-1)
	}
	b.n = int(n)
	b.bits = append([]byte(nil), body...)
	return nil
}
