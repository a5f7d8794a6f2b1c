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
	"crypto/aes"
	"crypto/cipher"
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
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func (k *Keys) mac(topic string, nonce uint64, tsMillis int64, encrypted bool, payload []byte) []byte {
	h := hmac.New(sha256.New, k.MAC[:])
	h.Write(Canonical(topic, nonce, tsMillis, encrypted, payload))
	return h.Sum(nil)
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
	payload := body
	if encrypt {
		ct, err := k.encrypt(topic, body, random)
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		payload = []byte(base64.StdEncoding.EncodeToString(ct))
	}
	ms := ts.UnixMilli()
	out := appendEnvelope(make([]byte, 0, len(payload)+len(payload)/8+180),
		nonce, ms, encrypt, payload, k.mac(topic, nonce, ms, encrypt, payload))
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
	if !hmac.Equal(got[:], k.mac(topic, env.nonce, env.ms, env.encrypted, payload)) {
		return Message{}, fmt.Errorf("open: %w", ErrMAC)
	}
	if !env.payloadCopied {
		payload = bytes.Clone(payload) // the body must not alias the caller's buffer
	}
	m := Message{Nonce: env.nonce, Timestamp: time.UnixMilli(env.ms), Encrypted: env.encrypted, Body: payload}
	if env.encrypted {
		ct, err := decodeBase64(payload)
		if err != nil {
			return Message{}, fmt.Errorf("open: %w: payload is not strict base64: %v", ErrMalformed, err)
		}
		if m.Body, err = k.decrypt(topic, ct); err != nil {
			return Message{}, fmt.Errorf("open: %w", err)
		}
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
	if i := bytes.IndexAny(s, "\r\n"); i >= 0 {
		return nil, fmt.Errorf("line break at offset %d", i)
	}
	return strictBase64.DecodeString(string(s))
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

// aad binds the ciphertext to its topic, so it cannot be moved even by a
// party that can compute MACs for another topic.
func aad(topic string) []byte { return append([]byte(Label+"\x00"), topic...) }

func (k *Keys) gcm() (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.Enc[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (k *Keys) encrypt(topic string, body []byte, random io.Reader) ([]byte, error) {
	if random == nil {
		return nil, errors.New("encrypt: no random source")
	}
	g, err := k.gcm()
	if err != nil {
		return nil, err
	}
	iv := make([]byte, g.NonceSize(), g.NonceSize()+len(body)+g.Overhead())
	if _, err := io.ReadFull(random, iv); err != nil {
		return nil, fmt.Errorf("encrypt: read iv: %w", err)
	}
	return g.Seal(iv, iv, body, aad(topic)), nil
}

func (k *Keys) decrypt(topic string, ct []byte) ([]byte, error) {
	g, err := k.gcm()
	if err != nil {
		return nil, err
	}
	if len(ct) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("%w: ciphertext too short", ErrDecrypt)
	}
	body, err := g.Open(nil, ct[:g.NonceSize()], ct[g.NonceSize():], aad(topic))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return body, nil
}
