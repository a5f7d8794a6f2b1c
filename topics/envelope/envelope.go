// Package envelope seals and opens EcoWatt device messages: an HMAC-SHA256
// over a canonical byte string that binds the protocol label, the full topic,
// the nonce, the timestamp, the encrypted flag and the payload, with optional
// AES-256-GCM confidentiality. It also computes the MQTT password token and
// keeps the anti-replay window.
//
// It imports only the standard library so that firmware authors can port it;
// docs/PROTOCOL.md specifies every byte and testdata/vectors.json pins it.
package envelope

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// Label is the protocol label that starts every MAC input.
const Label = "ecowatt-v1"

// KeySize is the size of a device PSK and of every derived key.
const KeySize = 32

// MaxNonce is the largest nonce: 2^53-1, so that nonces survive JSON numbers
// and Lua doubles exactly.
const MaxNonce = 1<<53 - 1

// MaxSize bounds a sealed JSON envelope.
const MaxSize = 256 << 10

// HKDF info labels; each derived key has its own so that no key serves two
// purposes.
const (
	infoMAC      = "ecowatt-v1 mac"
	infoEnc      = "ecowatt-v1 enc"
	infoPassword = "ecowatt-v1 mqtt-password"
)

// Errors returned by Open; callers count them by kind.
var (
	ErrMalformed = errors.New("malformed envelope")
	ErrTooLarge  = errors.New("envelope too large")
	ErrMAC       = errors.New("bad mac")
	ErrDecrypt   = errors.New("decryption failed")
)

// Keys are the keys derived from one device PSK.
type Keys struct {
	MAC      [KeySize]byte
	Enc      [KeySize]byte
	Password [KeySize]byte

	// d holds the precomputed HMAC pads and the AEAD (hmac.go); nil for a
	// Keys not made by DeriveKeys, which then computes them per call.
	d *derived
}

// Equal reports whether k and o hold the same key material (their derived
// state is not compared: it follows from the keys).
func (k *Keys) Equal(o *Keys) bool {
	return k.MAC == o.MAC && k.Enc == o.Enc && k.Password == o.Password
}

// DeriveKeys derives the MAC, encryption and password keys from a PSK with
// HKDF-SHA256 (no salt) under distinct info labels.
func DeriveKeys(psk []byte) (Keys, error) {
	if len(psk) != KeySize {
		return Keys{}, fmt.Errorf("derive keys: psk is %d bytes, want %d", len(psk), KeySize)
	}
	var k Keys
	for _, d := range []struct {
		dst  *[KeySize]byte
		info string
	}{{&k.MAC, infoMAC}, {&k.Enc, infoEnc}, {&k.Password, infoPassword}} {
		b, err := hkdf.Key(sha256.New, psk, nil, d.info, KeySize)
		if err != nil {
			return Keys{}, fmt.Errorf("derive keys: %w", err)
		}
		copy(d.dst[:], b)
	}
	k.d = newDerived(&k)
	return k, nil
}

// Envelope is the JSON form on the wire.
type Envelope struct {
	Nonce     uint64 `json:"nonce"`
	Timestamp int64  `json:"timestamp"` // Unix milliseconds
	Encrypted bool   `json:"encrypted"`
	Payload   string `json:"payload"`
	MAC       string `json:"mac"` // lowercase hex HMAC-SHA256
}

// Message is an opened envelope.
type Message struct {
	Nonce     uint64
	Timestamp time.Time
	Encrypted bool
	Body      []byte // the inner JSON, decrypted
}

// Canonical returns the byte string the MAC covers:
//
//	Label 0x00 | u16 len(topic) | topic | u64 nonce | i64 timestamp_ms |
//	u8 encrypted | u32 len(payload) | payload
//
// All integers are big-endian.
func Canonical(topic string, nonce uint64, tsMillis int64, encrypted bool, payload []byte) []byte {
	b := make([]byte, 0, len(Label)+1+2+len(topic)+8+8+1+4+len(payload))
	return append(appendCanonicalHeader(b, topic, nonce, tsMillis, encrypted, len(payload)), payload...)
}

// Seal wraps body for topic. When encrypt is true the body is encrypted with
// AES-256-GCM under a random 12-byte IV read from random (which must then be
// non-nil), and the payload is base64(IV | ciphertext | tag). A plain body
// travels as a JSON string, so it must be valid UTF-8 (any JSON is).
func Seal(k *Keys, topic string, nonce uint64, ts time.Time, body []byte, encrypt bool, random io.Reader) ([]byte, error) {
	if err := checkHeader(topic, nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if !encrypt && !utf8.Valid(body) {
		// encoding/json would replace the bad bytes with U+FFFD and the
		// receiver's MAC would no longer match.
		return nil, fmt.Errorf("seal: %w: plain body is not valid UTF-8", ErrMalformed)
	}
	ms := ts.UnixMilli()
	if !encrypt {
		mac := k.mac(topic, nonce, ms, false, body)
		out := appendEnvelope(make([]byte, 0, len(body)+len(body)/8+180), nonce, ms, false, body, mac[:])
		if len(out) > MaxSize {
			return nil, fmt.Errorf("seal: %w: %d bytes", ErrTooLarge, len(out))
		}
		return out, nil
	}
	ct, err := k.encrypt(topic, body, random)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	// The base64 text needs no JSON escapes: write it straight into the
	// envelope and MAC it there.
	n := base64.StdEncoding.EncodedLen(len(ct))
	out := appendEnvelopeHead(make([]byte, 0, n+180), nonce, ms, true)
	start := len(out) + 1
	out = append(out, '"')
	out = out[:start+n]
	base64.StdEncoding.Encode(out[start:], ct)
	mac := k.mac(topic, nonce, ms, true, out[start:])
	out = appendEnvelopeTail(append(out, '"'), mac[:])
	if len(out) > MaxSize {
		return nil, fmt.Errorf("seal: %w: %d bytes", ErrTooLarge, len(out))
	}
	return out, nil
}

// Open verifies raw as received on topic and returns its body. It checks
// only authenticity; replay is the caller's job (see Window), because the
// window state lives with the receiver.
func Open(k *Keys, topic string, raw []byte) (Message, error) {
	if len(raw) > MaxSize {
		return Message{}, fmt.Errorf("open: %w: %d bytes", ErrTooLarge, len(raw))
	}
	if !utf8.Valid(raw) {
		// encoding/json would silently replace invalid bytes inside the
		// payload string; reject them instead of failing later as ErrMAC.
		return Message{}, fmt.Errorf("open: %w: not valid UTF-8", ErrMalformed)
	}
	env, err := parseEnvelope(raw)
	if err != nil {
		return Message{}, fmt.Errorf("open: %w: %v", ErrMalformed, err)
	}
	if err := checkHeader(topic, env.nonce); err != nil {
		return Message{}, fmt.Errorf("open: %w", err)
	}
	var got [sha256.Size]byte
	if len(env.mac) != 2*sha256.Size {
		return Message{}, fmt.Errorf("open: %w: mac must be 64 hex digits", ErrMalformed)
	}
	if _, err := hex.Decode(got[:], env.mac); err != nil {
		return Message{}, fmt.Errorf("open: %w: mac must be 64 hex digits", ErrMalformed)
	}
	payload := env.payload
	if want := k.mac(topic, env.nonce, env.ms, env.encrypted, payload); !hmac.Equal(got[:], want[:]) {
		return Message{}, fmt.Errorf("open: %w", ErrMAC)
	}
	m := Message{Nonce: env.nonce, Timestamp: time.UnixMilli(env.ms), Encrypted: env.encrypted}
	switch {
	case env.encrypted:
		ct, err := decodeBase64(payload)
		if err != nil {
			return Message{}, fmt.Errorf("open: %w: payload is not strict base64: %v", ErrMalformed, err)
		}
		if m.Body, err = k.decrypt(topic, ct); err != nil {
			return Message{}, fmt.Errorf("open: %w", err)
		}
	case env.payloadCopied:
		m.Body = payload
	default:
		m.Body = bytes.Clone(payload) // the body must not alias the caller's buffer
	}
	return m, nil
}

// strictBase64 is the one base64 text form a payload may take: standard
// alphabet, "=" padding, unused bits zero.
var strictBase64 = base64.StdEncoding.Strict()

// decodeBase64 decodes s in the strict form of PROTOCOL.md section 4. Go's
// decoder skips '\r' and '\n' even in strict mode, so they are refused
// here: a port with a strict decoder must reach the same verdict.
func decodeBase64(s []byte) ([]byte, error) {
	for _, c := range []byte{'\r', '\n'} {
		if i := bytes.IndexByte(s, c); i >= 0 {
			return nil, fmt.Errorf("line break at offset %d", i)
		}
	}
	ct := make([]byte, strictBase64.DecodedLen(len(s)))
	n, err := strictBase64.Decode(ct, s)
	if err != nil {
		return nil, err
	}
	return ct[:n], nil
}

func checkHeader(topic string, nonce uint64) error {
	if nonce == 0 || nonce > MaxNonce {
		return fmt.Errorf("%w: nonce %d outside 1..2^53-1", ErrMalformed, nonce)
	}
	if len(topic) == 0 || len(topic) > 0xffff {
		return fmt.Errorf("%w: topic length %d", ErrMalformed, len(topic))
	}
	return nil
}

// appendAAD appends the additional data that binds a ciphertext to its
// topic, so it cannot be moved even by a party that can compute MACs for
// another topic.
func appendAAD(b []byte, topic string) []byte { return append(append(b, Label+"\x00"...), topic...) }

// aad is appendAAD on a fresh slice.
func aad(topic string) []byte { return appendAAD(nil, topic) }

// encrypt returns IV | ciphertext | tag.
func (k *Keys) encrypt(topic string, body []byte, random io.Reader) ([]byte, error) {
	if random == nil {
		return nil, errors.New("encrypt: no random source")
	}
	g, err := k.gcm()
	if err != nil {
		return nil, err
	}
	ns, n := g.NonceSize(), g.NonceSize()+len(body)+g.Overhead()
	iv := make([]byte, ns, n)
	if _, err := io.ReadFull(random, iv); err != nil {
		return nil, fmt.Errorf("encrypt: read iv: %w", err)
	}
	s := scratchPool.Get().(*macScratch)
	s.buf = appendAAD(s.buf[:0], topic)
	ct := g.Seal(iv, iv, body, s.buf)
	scratchPool.Put(s)
	return ct, nil
}

// decrypt opens ct (IV | ciphertext | tag) in place; ct must be the
// caller's own buffer.
func (k *Keys) decrypt(topic string, ct []byte) ([]byte, error) {
	g, err := k.gcm()
	if err != nil {
		return nil, err
	}
	if len(ct) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("%w: ciphertext too short", ErrDecrypt)
	}
	s := scratchPool.Get().(*macScratch)
	s.buf = appendAAD(s.buf[:0], topic)
	body, err := g.Open(ct[g.NonceSize():g.NonceSize()], ct[:g.NonceSize()], ct[g.NonceSize():], s.buf)
	scratchPool.Put(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return body, nil
}

// appendCanonicalHeader appends everything of Canonical before the payload:
// Canonical and the MAC (hmac.go) both build on it, so the two cannot drift.
func appendCanonicalHeader(b []byte, topic string, nonce uint64, tsMillis int64, encrypted bool, payloadLen int) []byte {
	b = append(b, Label...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(topic)))
	b = append(b, topic...)
	b = binary.BigEndian.AppendUint64(b, nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(tsMillis))
	if encrypted {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return binary.BigEndian.AppendUint32(b, uint32(payloadLen))
}
