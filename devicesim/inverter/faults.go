package inverter

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/modbus"
)

// FaultKind names a fault like the course simulator does.
type FaultKind string

// Fault kinds.
const (
	Exception FaultKind = "EXCEPTION"   // answer with exception 04 (slave device failure)
	CRCError  FaultKind = "CRC_ERROR"   // answer with a wrong CRC
	Corrupt   FaultKind = "CORRUPT"     // answer with one data byte altered
	Drop      FaultKind = "PACKET_DROP" // do not answer; the caller times out
	Delay     FaultKind = "DELAY"       // answer after Faults.DelayFor
)

// DefaultDelay is how late a DELAY fault answers unless Faults.DelayFor
// says otherwise: longer than the adapter's default 1 s timeout.
const DefaultDelay = 1500 * time.Millisecond

// Faults are per-request probabilities of each fault kind; their sum must
// not exceed 1.
type Faults struct {
	Exception float64
	CRC       float64
	Corrupt   float64
	Drop      float64
	Delay     float64
	DelayFor  time.Duration // default DefaultDelay
}

// ErrFaultSpec is wrapped by ParseFaults errors.
var ErrFaultSpec = errors.New("invalid inverter fault spec")

// faultKey maps a flag key to its kind and rate field.
type faultKey struct {
	key  string
	kind FaultKind
	rate func(*Faults) *float64
}

// faultKeys lists the flag keys in String and draw order.
func faultKeys() []faultKey {
	return []faultKey{
		{"crc", CRCError, func(f *Faults) *float64 { return &f.CRC }},
		{"drop", Drop, func(f *Faults) *float64 { return &f.Drop }},
		{"delay", Delay, func(f *Faults) *float64 { return &f.Delay }},
		{"exception", Exception, func(f *Faults) *float64 { return &f.Exception }},
		{"corrupt", Corrupt, func(f *Faults) *float64 { return &f.Corrupt }},
	}
}

// ParseFaults parses a flag value such as
// "crc=0.02,drop=0.01,delay=0.01,exception=0.01,corrupt=0.01,delay_for=2s".
// Keys may appear once; rates are in [0, 1] and sum to at most 1. The empty
// string means no faults.
func ParseFaults(spec string) (Faults, error) {
	var f Faults
	seen := map[string]bool{}
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		key, val, ok := strings.Cut(item, "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if !ok || key == "" || val == "" {
			return Faults{}, fmt.Errorf("%w: %q is not key=value", ErrFaultSpec, item)
		}
		if seen[key] {
			return Faults{}, fmt.Errorf("%w: %q given twice", ErrFaultSpec, key)
		}
		seen[key] = true
		if key == "delay_for" {
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 {
				return Faults{}, fmt.Errorf("%w: delay_for=%q is not a positive duration like 1500ms", ErrFaultSpec, val)
			}
			f.DelayFor = d
			continue
		}
		rate := faultRate(&f, key)
		if rate == nil {
			return Faults{}, fmt.Errorf("%w: unknown key %q (want crc, drop, delay, exception, corrupt or delay_for)", ErrFaultSpec, key)
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil || !(v >= 0 && v <= 1) {
			return Faults{}, fmt.Errorf("%w: %s=%q is not a probability in [0, 1]", ErrFaultSpec, key, val)
		}
		*rate = v
	}
	if sum := f.total(); sum > 1+1e-9 {
		return Faults{}, fmt.Errorf("%w: rates sum to %g, more than 1", ErrFaultSpec, sum)
	}
	return f, nil
}

func faultRate(f *Faults, key string) *float64 {
	for _, k := range faultKeys() {
		if k.key == key {
			return k.rate(f)
		}
	}
	return nil
}

func (f Faults) total() float64 { return f.Exception + f.CRC + f.Corrupt + f.Drop + f.Delay }

// String formats f in ParseFaults syntax, omitting zero rates.
func (f Faults) String() string {
	var parts []string
	for _, k := range faultKeys() {
		if v := *k.rate(&f); v != 0 {
			parts = append(parts, k.key+"="+strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	if f.DelayFor != 0 {
		parts = append(parts, "delay_for="+f.DelayFor.String())
	}
	return strings.Join(parts, ",")
}

// injector draws faults from a seeded generator.
type injector struct {
	cfg Faults

	mu  sync.Mutex // guards rng and n
	rng *rand.Rand
	n   map[FaultKind]uint64
}

func newInjector(cfg Faults, seed uint64) *injector {
	if cfg.DelayFor <= 0 {
		cfg.DelayFor = DefaultDelay
	}
	return &injector{cfg: cfg, rng: rand.New(rand.NewPCG(seed, 0x5EED)), n: map[FaultKind]uint64{}}
}

// fault is one draw: a kind ("" for none) and what it needs.
type fault struct {
	kind  FaultKind
	delay time.Duration
	pos   int  // CORRUPT: which byte, modulo the data length
	xor   byte // CORRUPT: non-zero mask
}

func (in *injector) draw() fault {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cfg.total() == 0 {
		return fault{}
	}
	x := in.rng.Float64()
	for _, k := range faultKeys() {
		p := *k.rate(&in.cfg)
		if x < p {
			in.n[k.kind]++
			return fault{kind: k.kind, delay: in.cfg.DelayFor, pos: in.rng.IntN(256), xor: byte(1 + in.rng.IntN(255))}
		}
		x -= p
	}
	return fault{}
}

func (in *injector) counts() map[FaultKind]uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[FaultKind]uint64, len(in.n))
	for k, v := range in.n {
		out[k] = v
	}
	return out
}

// apply alters a good response according to f.
func (f fault) apply(resp []byte, slave byte) []byte {
	switch f.kind {
	case Exception:
		return modbus.EncodeException(slave, resp[1]&0x7F, modbus.ExDeviceFailure)
	case CRCError:
		out := append([]byte(nil), resp...)
		out[len(out)-1] ^= 0xFF
		return out
	case Corrupt:
		// One altered byte between the slave address and the CRC: CRC-16
		// detects every such burst, as a real corrupted frame would be.
		out := append([]byte(nil), resp...)
		out[1+f.pos%(len(out)-3)] ^= f.xor
		return out
	}
	return resp
}
