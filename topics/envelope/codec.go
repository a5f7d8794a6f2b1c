package envelope

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// The JSON envelope has five fields of fixed types, so it is written and
// read by hand: encoding/json's reflection cost four times the HMAC itself
// (docs/BENCHMARKS.md). The reader is deliberately stricter than
// encoding/json: field names are matched exactly, each must appear once,
// and nothing else may appear. Any key order and JSON whitespace are fine.

// appendEnvelope appends the wire form of e, as encoding/json would write it
// with HTML escaping off.
func appendEnvelope(b []byte, nonce uint64, ms int64, encrypted bool, payload []byte, mac []byte) []byte {
	b = appendEnvelopeHead(b, nonce, ms, encrypted)
	b = appendString(b, payload)
	return appendEnvelopeTail(b, mac)
}

// appendEnvelopeHead appends everything before the payload string.
func appendEnvelopeHead(b []byte, nonce uint64, ms int64, encrypted bool) []byte {
	b = append(b, `{"nonce":`...)
	b = strconv.AppendUint(b, nonce, 10)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, `,"encrypted":`...)
	b = strconv.AppendBool(b, encrypted)
	return append(b, `,"payload":`...)
}

// appendEnvelopeTail appends everything after the payload string.
func appendEnvelopeTail(b []byte, mac []byte) []byte {
	b = append(b, `,"mac":"`...)
	b = hex.AppendEncode(b, mac)
	return append(b, `"}`...)
}

const hexDigits = "0123456789abcdef"

// SWAR constants: one in the low and one in the high bit of every byte.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// needsEscape reports whether any of the eight bytes in x is '"', '\\' or
// a control byte (< 0x20); the classic "has zero/less byte" bit tricks,
// exact for "any byte" (docs: Hacker's Delight 6-1).
func needsEscape(x uint64) bool {
	q, bs := x^(lsb*'"'), x^(lsb*'\\')
	return ((q-lsb)&^q|(bs-lsb)&^bs|(x-lsb*0x20)&^x)&msb != 0
}

// appendString appends s (valid UTF-8) as a JSON string.
func appendString(b []byte, s []byte) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain ASCII bytes at a time: a body is mostly those.
		for i+8 <= len(s) {
			x := binary.LittleEndian.Uint64(s[i:])
			if x&msb != 0 || needsEscape(x) {
				break
			}
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(s[i:])
			if r == '\u2028' || r == '\u2029' {
				b = append(b, s[start:i]...)
				b = append(b, `\u202`...)
				b = append(b, hexDigits[r&0xF])
				start = i + size
			}
			i += size
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// wireEnvelope is a decoded envelope; payload aliases the input when the
// string had no escapes.
type wireEnvelope struct {
	nonce     uint64
	ms        int64
	encrypted bool
	payload   []byte
	mac       []byte
	// payloadCopied is true when payload is its own buffer, not a slice of
	// the input.
	payloadCopied bool
}

var errSyntax = errors.New("json syntax")

// parseEnvelope reads exactly one JSON object with the five envelope fields.
func parseEnvelope(raw []byte) (wireEnvelope, error) {
	p := parser{b: raw}
	var e wireEnvelope
	var seen [5]bool
	p.ws()
	if !p.eat('{') {
		return e, errors.New("not a JSON object")
	}
	for first := true; ; first = false {
		p.ws()
		if p.eat('}') {
			if first {
				return e, errors.New("empty object")
			}
			break
		}
		if !first {
			if !p.eat(',') {
				return e, errSyntax
			}
			p.ws()
		}
		key, err := p.str()
		if err != nil {
			return e, err
		}
		p.ws()
		if !p.eat(':') {
			return e, errSyntax
		}
		p.ws()
		idx := -1
		switch string(key) {
		case "nonce":
			idx = 0
			var n uint64
			n, err = p.uint()
			e.nonce = n
		case "timestamp":
			idx = 1
			e.ms, err = p.int()
		case "encrypted":
			idx = 2
			e.encrypted, err = p.bool()
		case "payload":
			idx = 3
			e.payload, err = p.str()
			e.payloadCopied = p.copied
		case "mac":
			idx = 4
			e.mac, err = p.str()
		default:
			return e, errors.New("unknown field " + strconv.Quote(string(key)))
		}
		if err != nil {
			return e, errors.New("field " + string(key) + ": " + err.Error())
		}
		if seen[idx] {
			return e, errors.New("duplicate field " + string(key))
		}
		seen[idx] = true
	}
	for i, name := range [...]string{"nonce", "timestamp", "encrypted", "payload", "mac"} {
		if !seen[i] {
			return e, errors.New("missing field " + name)
		}
	}
	p.ws()
	if p.i != len(p.b) {
		return e, errors.New("trailing data")
	}
	return e, nil
}

type parser struct {
	b []byte
	i int
	// copied reports whether the last string read had escapes, and so is
	// a fresh buffer rather than a slice of b.
	copied bool
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) digits() []byte {
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	d := p.b[start:p.i]
	if len(d) == 0 || len(d) > 1 && d[0] == '0' {
		return nil
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return nil // integers only
	}
	return d
}

func (p *parser) uint() (uint64, error) {
	d := p.digits()
	if d == nil {
		return 0, errors.New("want a non-negative integer")
	}
	return strconv.ParseUint(string(d), 10, 64)
}

func (p *parser) int() (int64, error) {
	neg := p.eat('-')
	d := p.digits()
	if d == nil {
		return 0, errors.New("want an integer")
	}
	s := string(d)
	if neg {
		s = "-" + s
	}
	return strconv.ParseInt(s, 10, 64)
}

func (p *parser) bool() (bool, error) {
	rest := p.b[p.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		p.i += 4
		return true, nil
	case len(rest) >= 5 && string(rest[:5]) == "false":
		p.i += 5
		return false, nil
	}
	return false, errors.New("want true or false")
}

// str reads a JSON string. Lone surrogates are refused rather than replaced
// (encoding/json would turn them into U+FFFD and break the MAC silently).
func (p *parser) str() ([]byte, error) {
	if !p.eat('"') {
		return nil, errors.New("want a string")
	}
	p.copied = false
	start := p.i
	for p.i < len(p.b) {
		for p.i+8 <= len(p.b) && !needsEscape(binary.LittleEndian.Uint64(p.b[p.i:])) {
			p.i += 8
		}
		if p.i >= len(p.b) {
			break
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, nil
		case c == '\\':
			return p.strEscaped(start)
		case c < 0x20:
			return nil, errors.New("control character in string")
		}
		p.i++
	}
	return nil, errors.New("unterminated string")
}

func (p *parser) strEscaped(start int) ([]byte, error) {
	p.copied = true
	out := make([]byte, 0, len(p.b)-start)
	out = append(out, p.b[start:p.i]...)
	for p.i < len(p.b) {
		// Copy the run up to the next quote, backslash or control byte at
		// once: an escaped JSON body is mostly such runs.
		j := p.i
		for j < len(p.b) && p.b[j] != '"' && p.b[j] != '\\' && p.b[j] >= 0x20 {
			j++
		}
		out = append(out, p.b[p.i:j]...)
		p.i = j
		if p.i >= len(p.b) {
			break
		}
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return out, nil
		case c < 0x20:
			return nil, errors.New("control character in string")
		}
		if p.i+1 >= len(p.b) {
			break
		}
		esc := p.b[p.i+1]
		p.i += 2
		switch esc {
		case '"', '\\', '/':
			out = append(out, esc)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return nil, errors.New("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				if r >= 0xDC00 || !p.eat('\\') || !p.eat('u') {
					return nil, errors.New("lone surrogate")
				}
				r2, ok := p.hex4()
				if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
					return nil, errors.New("lone surrogate")
				}
				r = utf16.DecodeRune(r, r2)
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, errors.New("bad escape")
		}
	}
	return nil, errors.New("unterminated string")
}

func (p *parser) hex4() (rune, bool) {
	if p.i+4 > len(p.b) {
		return 0, false
	}
	var r rune
	for _, c := range p.b[p.i : p.i+4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	p.i += 4
	return r, true
}
