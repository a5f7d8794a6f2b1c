package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding"
	"hash"
	"sync"
)

// HMAC-SHA256 without allocations and without re-hashing the key pads.
//
// hmac.New costs five allocations and two SHA-256 blocks (the inner and
// outer key pads) before it reads a byte of the message; for a 256-byte
// body that is a fifth of the work, paid twice per seal+open
// (docs/BENCHMARKS.md, issue 14). DeriveKeys therefore hashes the pads once
// and keeps the two SHA-256 states with the keys; each MAC then starts from
// them in a pooled hash. The output is HMAC-SHA256 exactly (RFC 2104): the
// golden vectors and the differential fuzz target check it against
// crypto/hmac.

// shaStateSize is the length of crypto/sha256's marshaled state.
const shaStateSize = 108

// hmacPads are the SHA-256 states after the inner (key^0x36) and outer
// (key^0x5c) pad blocks of one key, kept inline (one allocation per
// DeriveKeys: the backend's key cache holds one per device).
type hmacPads struct {
	key          [KeySize]byte // the key they were computed from
	ok           bool
	inner, outer [shaStateSize]byte // encoding.BinaryMarshaler states
}

// derived is what DeriveKeys computes beyond the three keys. It is
// immutable once built (the AEAD is built once, on first use), so copies
// of Keys share it safely across goroutines. Only the MAC key has pads:
// the password key serves one check per CONNECT.
type derived struct {
	mac hmacPads

	aeadOnce sync.Once
	encKey   [KeySize]byte
	aead     cipher.AEAD // AES-256-GCM; Go's implementation keeps no per-call state
	aeadErr  error
}

func newDerived(k *Keys) *derived {
	d := &derived{encKey: k.Enc}
	d.mac.set(&k.MAC)
	return d
}

func (p *hmacPads) set(key *[KeySize]byte) {
	p.key = *key
	var pad [sha256.BlockSize]byte
	for _, side := range []struct {
		dst *[shaStateSize]byte
		x   byte
	}{{&p.inner, 0x36}, {&p.outer, 0x5c}} {
		fillPad(&pad, key, side.x)
		h := sha256.New()
		h.Write(pad[:])
		st, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil || len(st) != shaStateSize {
			return // not for this crypto/sha256; the MAC then hashes the pads itself
		}
		copy(side.dst[:], st)
	}
	p.ok = true
}

func fillPad(pad *[sha256.BlockSize]byte, key *[KeySize]byte, x byte) {
	for i := range pad {
		pad[i] = x
	}
	for i, c := range key {
		pad[i] = c ^ x
	}
}

// macScratch is one pooled SHA-256 and the buffers a MAC needs, so that
// nothing escapes per call.
type macScratch struct {
	h   hash.Hash
	um  encoding.BinaryUnmarshaler
	pad [sha256.BlockSize]byte
	buf []byte // canonical header and topic; also the AEAD's additional data
	sum [sha256.Size]byte
}

var scratchPool = sync.Pool{New: func() any {
	h := sha256.New()
	um, _ := h.(encoding.BinaryUnmarshaler)
	return &macScratch{h: h, um: um, buf: make([]byte, 0, 128)}
}}

// begin puts s.h in the state after key's inner or outer pad block.
func (s *macScratch) begin(p *hmacPads, key *[KeySize]byte, outer bool) {
	x := byte(0x36)
	if outer {
		x = 0x5c
	}
	// The pads are used only while they still match the key, so that a
	// Keys whose fields were set by hand, or changed, still MACs right.
	if p != nil && p.ok && s.um != nil && p.key == *key {
		st := &p.inner
		if outer {
			st = &p.outer
		}
		if s.um.UnmarshalBinary(st[:]) == nil {
			return
		}
	}
	s.h.Reset()
	fillPad(&s.pad, key, x)
	s.h.Write(s.pad[:])
}

// hmacSum is HMAC-SHA256(key, a | b) with the pads in p when they fit key.
// a is s.buf, b the caller's bytes.
func (s *macScratch) hmacSum(p *hmacPads, key *[KeySize]byte, b []byte) [sha256.Size]byte {
	s.begin(p, key, false)
	s.h.Write(s.buf)
	s.h.Write(b)
	inner := s.h.Sum(s.sum[:0])
	s.begin(p, key, true)
	s.h.Write(inner)
	var out [sha256.Size]byte
	s.h.Sum(s.sum[:0])
	copy(out[:], s.sum[:])
	return out
}

// macPads returns the MAC key's pads, or nil for a Keys not made by
// DeriveKeys.
func (k *Keys) macPads() *hmacPads {
	if k.d == nil {
		return nil
	}
	return &k.d.mac
}

// mac is HMAC-SHA256(K_mac, Canonical(topic, nonce, tsMillis, encrypted,
// payload)), without building the canonical string.
func (k *Keys) mac(topic string, nonce uint64, tsMillis int64, encrypted bool, payload []byte) [sha256.Size]byte {
	s := scratchPool.Get().(*macScratch)
	s.buf = appendCanonicalHeader(s.buf[:0], topic, nonce, tsMillis, encrypted, len(payload))
	sum := s.hmacSum(k.macPads(), &k.MAC, payload)
	scratchPool.Put(s)
	return sum
}

// passwordMAC is HMAC-SHA256(K_password, Label " mqtt\x00" id "\x00" sec).
func passwordMAC(k *Keys, id, sec string) [sha256.Size]byte {
	s := scratchPool.Get().(*macScratch)
	b := append(s.buf[:0], Label+" mqtt\x00"...)
	b = append(b, id...)
	b = append(b, 0)
	s.buf = append(b, sec...)
	sum := s.hmacSum(nil, &k.Password, nil)
	scratchPool.Put(s)
	return sum
}

// gcm returns the AES-256-GCM AEAD of k.Enc, built once per DeriveKeys.
func (k *Keys) gcm() (cipher.AEAD, error) {
	if d := k.d; d != nil && d.encKey == k.Enc {
		d.aeadOnce.Do(func() { d.aead, d.aeadErr = newGCM(&d.encKey) })
		return d.aead, d.aeadErr
	}
	return newGCM(&k.Enc)
}

func newGCM(key *[KeySize]byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
