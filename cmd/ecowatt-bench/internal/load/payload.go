package load

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderSize is the smallest payload: the header every message starts with.
//
//	bytes 0-7    run ID (big endian), so stray messages of other runs are ignored
//	bytes 8-11   publisher index
//	bytes 12-15  sequence number within the publisher, from 0
//	bytes 16-23  send time, Unix nanoseconds
//
// The rest of the payload is padding up to Config.Size.
const HeaderSize = 24

// header is what a payload carries.
type header struct {
	run  uint64
	pub  uint32
	seq  uint32
	sent int64 // Unix ns
}

var errShortPayload = errors.New("payload shorter than the bench header")

// encode returns a size-byte payload carrying h; size >= HeaderSize.
func encode(h header, size int) []byte {
	p := make([]byte, size)
	binary.BigEndian.PutUint64(p, h.run)
	binary.BigEndian.PutUint32(p[8:], h.pub)
	binary.BigEndian.PutUint32(p[12:], h.seq)
	binary.BigEndian.PutUint64(p[16:], uint64(h.sent))
	for i := HeaderSize; i < size; i++ {
		p[i] = 'x'
	}
	return p
}

// decode reads the header of a payload.
func decode(p []byte) (header, error) {
	if len(p) < HeaderSize {
		return header{}, fmt.Errorf("decode %d bytes: %w", len(p), errShortPayload)
	}
	return header{
		run:  binary.BigEndian.Uint64(p),
		pub:  binary.BigEndian.Uint32(p[8:]),
		seq:  binary.BigEndian.Uint32(p[12:]),
		sent: int64(binary.BigEndian.Uint64(p[16:])),
	}, nil
}
