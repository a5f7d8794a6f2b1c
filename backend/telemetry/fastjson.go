package telemetry

import (
	"encoding/base64"
	"math"
	"strconv"
	"unicode/utf8"
	"unsafe"

	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// parseBody decodes the uplink telemetry body as encoding/json would
// decode it into wire.Body, for the plain shape devices send: the known
// keys spelt exactly, each at most once, strings in UTF-8 with no
// escapes, no nulls, integers without fraction or exponent. On
// anything else it reports false and the caller runs encoding/json, so
// that no input is accepted, refused or read differently
// (FuzzParseBody checks it against encoding/json). It exists because
// reflection-driven decoding was a fifth of the server's CPU per batch.
func parseBody(raw []byte) (wire.Message, bool) {
	p := jsonScanner{b: raw}
	var m wire.Message
	var seen uint16
	ok := p.object(func(key []byte) bool {
		return string(key) == "telemetry" && once(&seen, 0) && p.message(&m)
	})
	p.ws()
	// {} decodes to a nil Telemetry, which the caller refuses.
	return m, ok && seen == 1 && p.i == len(p.b)
}

// jsonScanner reads a narrow subset of JSON from b at i; every method
// reports false on what it does not handle.
type jsonScanner struct {
	b []byte
	i int
}

func (p *jsonScanner) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonScanner) byte(c byte) bool {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// object reads {"key": value, ...}, calling field for each key with the
// scanner before the value. field refuses a key seen twice (once).
func (p *jsonScanner) object(field func(key []byte) bool) bool {
	if !p.byte('{') {
		return false
	}
	if p.byte('}') {
		return true
	}
	for {
		k, ok := p.rawString()
		if !ok || !p.byte(':') || !field(k) {
			return false
		}
		if p.byte('}') {
			return true
		}
		if !p.byte(',') {
			return false
		}
	}
}

// once marks bit in *seen and reports whether it was clear.
func once(seen *uint16, bit uint) bool {
	if *seen&(1<<bit) != 0 {
		return false
	}
	*seen |= 1 << bit
	return true
}

// rawString reads a string without escapes or control characters, in
// valid UTF-8 (encoding/json would replace invalid bytes).
func (p *jsonScanner) rawString() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// number reads a JSON number token; integer says it had no fraction or
// exponent.
func (p *jsonScanner) number() (tok []byte, integer, ok bool) {
	p.ws()
	start, b := p.i, p.b
	digits := func() int {
		n := 0
		for p.i < len(b) && b[p.i] >= '0' && b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.i < len(b) && b[p.i] == '-' {
		p.i++
	}
	d0 := p.i
	if n := digits(); n == 0 || n > 1 && b[d0] == '0' {
		return nil, false, false
	}
	integer = true
	if p.i < len(b) && b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return nil, false, false
		}
		integer = false
	}
	if p.i < len(b) && (b[p.i] == 'e' || b[p.i] == 'E') {
		p.i++
		if p.i < len(b) && (b[p.i] == '+' || b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return nil, false, false
		}
		integer = false
	}
	return b[start:p.i], integer, true
}

// uint reads a non-negative integer that fits in a uint64.
func (p *jsonScanner) uint(v *uint64) bool {
	tok, integer, ok := p.number()
	if !ok || !integer || tok[0] == '-' {
		return false
	}
	var n uint64
	for _, c := range tok {
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return false // out of range: encoding/json refuses it
		}
		n = n*10 + d
	}
	*v = n
	return true
}

// int reads an integer that fits in an int64.
func (p *jsonScanner) int(v *int) bool {
	tok, integer, ok := p.number()
	if !ok || !integer {
		return false
	}
	neg := tok[0] == '-'
	if neg {
		tok = tok[1:]
	}
	var n uint64
	for _, c := range tok {
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return false
		}
		n = n*10 + d
	}
	switch {
	case !neg && n <= math.MaxInt64:
		*v = int(n)
	case neg && n <= 1<<63:
		*v = -int(n) // two's complement: 1<<63 negates to math.MinInt64
	default:
		return false
	}
	return true
}

func (p *jsonScanner) float(v *float64) bool {
	tok, _, ok := p.number()
	if !ok {
		return false
	}
	// The token is a valid JSON number, so ParseFloat reads it as
	// encoding/json does; viewing it in place avoids a copy per value
	// (the error, which would keep the view, is dropped).
	f, err := strconv.ParseFloat(unsafe.String(&tok[0], len(tok)), 64)
	*v = f
	return err == nil
}

func (p *jsonScanner) str(v *string) bool {
	s, ok := p.rawString()
	*v = string(s)
	return ok
}

func (p *jsonScanner) message(m *wire.Message) bool {
	var seen uint16
	return p.object(func(key []byte) bool {
		switch string(key) {
		case "seq":
			return once(&seen, 0) && p.uint(&m.Seq)
		case "format":
			return once(&seen, 1) && p.str(&m.Format)
		case "data":
			s, ok := p.rawString()
			if !ok || !once(&seen, 2) {
				return false
			}
			// As encoding/json decodes a []byte: an empty string is an
			// empty, non-nil slice.
			d := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
			n, err := base64.StdEncoding.Decode(d, s)
			m.Data = d[:n]
			return err == nil
		case "samples":
			return once(&seen, 3) && p.int(&m.Samples)
		case "dropped":
			return once(&seen, 4) && p.uint(&m.Dropped)
		case "failures":
			return once(&seen, 5) && p.uint(&m.Failures)
		case "stats":
			if !once(&seen, 6) {
				return false
			}
			m.Stats = make(map[string]wire.Stats, wire.NumRegisters)
			return p.object(func(name []byte) bool {
				if _, dup := m.Stats[string(name)]; dup {
					return false
				}
				var st wire.Stats
				if !p.stats(&st) {
					return false
				}
				m.Stats[string(name)] = st
				return true
			})
		case "adapter":
			return once(&seen, 7) && p.adapter(&m.Adapter)
		}
		return false
	})
}

func (p *jsonScanner) stats(s *wire.Stats) bool {
	var seen uint16
	return p.object(func(key []byte) bool {
		switch string(key) {
		case "n":
			return once(&seen, 0) && p.int(&s.Count)
		case "failures":
			return once(&seen, 1) && p.int(&s.Failures)
		case "min":
			return once(&seen, 2) && p.float(&s.Min)
		case "avg":
			return once(&seen, 3) && p.float(&s.Avg)
		case "max":
			return once(&seen, 4) && p.float(&s.Max)
		case "unit":
			return once(&seen, 5) && p.str(&s.Unit)
		}
		return false
	})
}

func (p *jsonScanner) adapter(a *wire.Counters) bool {
	var seen uint16
	return p.object(func(key []byte) bool {
		switch string(key) {
		case "requests":
			return once(&seen, 0) && p.uint(&a.Requests)
		case "retries":
			return once(&seen, 1) && p.uint(&a.Retries)
		case "crc_errors":
			return once(&seen, 2) && p.uint(&a.CRCErrors)
		case "frame_errors":
			return once(&seen, 3) && p.uint(&a.FrameErrors)
		case "exceptions":
			return once(&seen, 4) && p.uint(&a.Exceptions)
		case "timeouts":
			return once(&seen, 5) && p.uint(&a.Timeouts)
		case "failures":
			return once(&seen, 6) && p.uint(&a.Failures)
		}
		return false
	})
}
