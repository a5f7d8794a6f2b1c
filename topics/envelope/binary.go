package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"
)

// BinaryMagic starts every binary envelope.
const BinaryMagic = "EWB1"

// binaryHeader is magic(4) nonce(8) timestamp(8) flags(1) length(4).
const binaryHeader = 4 + 8 + 8 + 1 + 4

// MaxBinaryPayload bounds the payload of a binary envelope (a FOTA chunk of
// up to 32 KiB plus its small header).
const MaxBinaryPayload = 33 << 10

// SealBinary wraps payload in the compact binary envelope used for FOTA
// chunks, where base64-in-JSON would cost a third more bytes:
//
//	"EWB1" | u64 nonce | i64 timestamp_ms | u8 flags (0) | u32 len | payload | mac[32]
//
// The MAC is the same HMAC-SHA256 over Canonical(topic, nonce, ts, false,
// payload) as the JSON envelope, so both forms share one verification.
func SealBinary(k *Keys, topic string, nonce uint64, ts time.Time, payload []byte) ([]byte, error) {
	if err := checkHeader(topic, nonce); err != nil {
		return nil, fmt.Errorf("seal binary: %w", err)
	}
	if len(payload) > MaxBinaryPayload {
		return nil, fmt.Errorf("seal binary: %w: payload %d bytes", ErrTooLarge, len(payload))
	}
	ms := ts.UnixMilli()
	b := make([]byte, 0, binaryHeader+len(payload)+sha256.Size)
	b = append(b, BinaryMagic...)
	b = binary.BigEndian.AppendUint64(b, nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(ms))
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	mac := k.mac(topic, nonce, ms, false, payload)
	return append(b, mac[:]...), nil
}

// OpenBinary verifies a binary envelope received on topic.
func OpenBinary(k *Keys, topic string, raw []byte) (Message, error) {
	if len(raw) < binaryHeader+sha256.Size || string(raw[:4]) != BinaryMagic {
		return Message{}, fmt.Errorf("open binary: %w: bad magic or short frame", ErrMalformed)
	}
	nonce := binary.BigEndian.Uint64(raw[4:])
	ms := int64(binary.BigEndian.Uint64(raw[12:]))
	flags := raw[20]
	n := binary.BigEndian.Uint32(raw[21:])
	if flags != 0 {
		return Message{}, fmt.Errorf("open binary: %w: unknown flags %#x", ErrMalformed, flags)
	}
	if n > MaxBinaryPayload || int(n) != len(raw)-binaryHeader-sha256.Size {
		return Message{}, fmt.Errorf("open binary: %w: length %d does not match frame", ErrMalformed, n)
	}
	if err := checkHeader(topic, nonce); err != nil {
		return Message{}, fmt.Errorf("open binary: %w", err)
	}
	payload := raw[binaryHeader : binaryHeader+int(n)]
	if want := k.mac(topic, nonce, ms, false, payload); !hmac.Equal(raw[binaryHeader+int(n):], want[:]) {
		return Message{}, fmt.Errorf("open binary: %w", ErrMAC)
	}
	return Message{Nonce: nonce, Timestamp: time.UnixMilli(ms), Body: payload}, nil
}

// IsBinary reports whether raw looks like a binary envelope.
func IsBinary(raw []byte) bool { return len(raw) >= 4 && string(raw[:4]) == BinaryMagic }
