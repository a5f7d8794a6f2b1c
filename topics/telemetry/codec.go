// Package telemetry is the telemetry wire contract shared by devices and the
// backend: the inverter register map, the Batch of samples, its compact
// lossless binary encoding "dz1" (delta + zigzag varint per register) and
// the JSON body that carries it inside the security envelope.
//
// docs/PROTOCOL.md ("Telemetry batch") specifies every byte;
// testdata/golden_dz1.hex pins one small batch.
package telemetry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"
)

// Format is the name of the binary encoding in Message.Format.
const Format = "dz1"

// Version is the first byte of a dz1 encoding.
const Version = 1

// Limits of a batch.
const (
	MaxSamples  = 4096           // sample slots (timestamps) per batch
	MaxInterval = 24 * time.Hour // longest nominal sampling interval
	// maxTimeMS bounds timestamps (year 9999) so arithmetic cannot overflow.
	maxTimeMS = 253402300799999
)

// Header flags.
const (
	flagIrregular = 1 << 0 // per-sample timestamp deltas follow the register list
	flagMissing   = 1 << 1 // the presence bitmap follows
	knownFlags    = flagIrregular | flagMissing
)

// Decode errors; every Decode error wraps exactly one of them.
var (
	ErrTruncated       = errors.New("telemetry: truncated batch")
	ErrCorrupt         = errors.New("telemetry: corrupt batch")
	ErrUnknownRegister = errors.New("telemetry: unknown register code")
	ErrTooLarge        = errors.New("telemetry: batch over limit")
	ErrFuture          = errors.New("telemetry: timestamp in the future")
)

// ErrInvalid is wrapped by Encode errors: the Batch is not encodable.
var ErrInvalid = errors.New("telemetry: invalid batch")

// Batch is a run of samples of the same registers. Times are Unix
// milliseconds and strictly increasing.
type Batch struct {
	Seq       uint64        // per-device batch sequence number (JSON only)
	Interval  time.Duration // nominal sampling interval, whole milliseconds
	Registers []uint8       // register codes, unique, each < NumRegisters
	Samples   []Sample
	Dropped   uint64   // sample slots lost before this batch (JSON only)
	Adapter   Counters // Modbus adapter counters, cumulative (JSON only)
}

// Sample is the reading of every register of a Batch at one time.
type Sample struct {
	Time    int64    // Unix milliseconds
	Values  []uint16 // raw values, aligned with Batch.Registers
	Missing uint16   // bit i set: Registers[i] could not be read; Values[i] is 0
}

// Present reports whether register index i was read in s.
func (s Sample) Present(i int) bool { return s.Missing&(1<<i) == 0 }

// Limits bound what Decode accepts.
type Limits struct {
	MaxSamples int       // 0 means MaxSamples
	NotAfter   time.Time // latest acceptable timestamp; zero means no bound
}

// Encode returns the dz1 encoding of b's Interval, Registers and Samples.
// Values of missing samples are not encoded and decode as 0.
func Encode(b Batch) ([]byte, error) {
	if err := b.validate(); err != nil {
		return nil, err
	}
	nreg, n := len(b.Registers), len(b.Samples)
	intervalMS := b.Interval.Milliseconds()
	var flags byte
	for i, s := range b.Samples {
		if s.Missing != 0 {
			flags |= flagMissing
		}
		if i > 0 && s.Time-b.Samples[i-1].Time != intervalMS {
			flags |= flagIrregular
		}
	}
	out := make([]byte, 0, 16+nreg+n*nreg*2)
	out = append(out, Version, flags)
	var base int64
	if n > 0 {
		base = b.Samples[0].Time
	}
	out = binary.AppendUvarint(out, uint64(base))
	out = binary.AppendUvarint(out, uint64(intervalMS))
	out = binary.AppendUvarint(out, uint64(n))
	out = append(out, byte(nreg))
	out = append(out, b.Registers...)
	if flags&flagIrregular != 0 {
		for i := 1; i < n; i++ {
			out = binary.AppendUvarint(out, zigzag(b.Samples[i].Time-b.Samples[i-1].Time-intervalMS))
		}
	}
	if flags&flagMissing != 0 {
		bitmap := make([]byte, (n*nreg+7)/8)
		for i, s := range b.Samples {
			for j := range nreg {
				if !s.Present(j) {
					k := i*nreg + j
					bitmap[k/8] |= 1 << (k % 8)
				}
			}
		}
		out = append(out, bitmap...)
	}
	for j := range nreg {
		var prev int64
		for _, s := range b.Samples {
			if !s.Present(j) {
				continue
			}
			v := int64(s.Values[j])
			out = binary.AppendUvarint(out, zigzag(v-prev))
			prev = v
		}
	}
	return out, nil
}

func (b Batch) validate() error {
	nreg := len(b.Registers)
	if nreg == 0 || nreg > NumRegisters {
		return fmt.Errorf("%w: %d registers, want 1-%d", ErrInvalid, nreg, NumRegisters)
	}
	var seen uint16
	for _, c := range b.Registers {
		if c >= NumRegisters {
			return fmt.Errorf("%w: register code %d", ErrInvalid, c)
		}
		if seen&(1<<c) != 0 {
			return fmt.Errorf("%w: register code %d twice", ErrInvalid, c)
		}
		seen |= 1 << c
	}
	if b.Interval < 0 || b.Interval > MaxInterval || b.Interval%time.Millisecond != 0 {
		return fmt.Errorf("%w: interval %v, want whole milliseconds up to %v", ErrInvalid, b.Interval, MaxInterval)
	}
	if len(b.Samples) > MaxSamples {
		return fmt.Errorf("%w: %d samples, limit %d", ErrInvalid, len(b.Samples), MaxSamples)
	}
	for i, s := range b.Samples {
		if len(s.Values) != nreg {
			return fmt.Errorf("%w: sample %d has %d values for %d registers", ErrInvalid, i, len(s.Values), nreg)
		}
		if s.Missing>>nreg != 0 {
			return fmt.Errorf("%w: sample %d missing bits %#x beyond %d registers", ErrInvalid, i, s.Missing, nreg)
		}
		if s.Time < 0 || s.Time > maxTimeMS {
			return fmt.Errorf("%w: sample %d time %d out of range", ErrInvalid, i, s.Time)
		}
		if i > 0 && s.Time <= b.Samples[i-1].Time {
			return fmt.Errorf("%w: sample %d time %d not after %d", ErrInvalid, i, s.Time, b.Samples[i-1].Time)
		}
	}
	return nil
}

// Decode parses a dz1 encoding into a Batch (Interval, Registers and
// Samples set). It rejects truncated or corrupt input, unknown register
// codes, more than lim.MaxSamples samples and timestamps after lim.NotAfter.
func Decode(data []byte, lim Limits) (Batch, error) {
	maxSamples := lim.MaxSamples
	if maxSamples <= 0 || maxSamples > MaxSamples {
		maxSamples = MaxSamples
	}
	r := reader{buf: data}
	version, flags := r.byte(), r.byte()
	if r.err != nil {
		return Batch{}, r.err
	}
	if version != Version {
		return Batch{}, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, version, Version)
	}
	if flags&^knownFlags != 0 {
		return Batch{}, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, flags)
	}
	base, intervalMS, count := r.uvarint("base time"), r.uvarint("interval"), r.uvarint("count")
	nreg := int(r.byte())
	if r.err != nil {
		return Batch{}, r.err
	}
	switch {
	case base > maxTimeMS:
		return Batch{}, fmt.Errorf("%w: base time %d out of range", ErrCorrupt, base)
	case intervalMS > uint64(MaxInterval.Milliseconds()):
		return Batch{}, fmt.Errorf("%w: interval %d ms over %v", ErrCorrupt, intervalMS, MaxInterval)
	case count > uint64(maxSamples):
		return Batch{}, fmt.Errorf("%w: %d samples, limit %d", ErrTooLarge, count, maxSamples)
	case nreg == 0 || nreg > NumRegisters:
		return Batch{}, fmt.Errorf("%w: %d registers, want 1-%d", ErrCorrupt, nreg, NumRegisters)
	}
	n := int(count)
	b := Batch{Interval: time.Duration(intervalMS) * time.Millisecond, Registers: make([]uint8, nreg)}
	var seen uint16
	for j := range b.Registers {
		c := r.byte()
		if r.err != nil {
			return Batch{}, r.err
		}
		if c >= NumRegisters {
			return Batch{}, fmt.Errorf("%w: %d", ErrUnknownRegister, c)
		}
		if seen&(1<<c) != 0 {
			return Batch{}, fmt.Errorf("%w: register code %d twice", ErrCorrupt, c)
		}
		seen |= 1 << c
		b.Registers[j] = c
	}
	if n == 0 {
		if flags != 0 || base != 0 {
			return Batch{}, fmt.Errorf("%w: empty batch with flags %#x base %d", ErrCorrupt, flags, base)
		}
		return b, r.end()
	}
	if err := b.decodeTimes(&r, flags, int64(base), int64(intervalMS), n, lim.NotAfter); err != nil {
		return Batch{}, err
	}
	if err := b.decodeValues(&r, flags, n); err != nil {
		return Batch{}, err
	}
	return b, r.end()
}

func (b *Batch) decodeTimes(r *reader, flags byte, base, interval int64, n int, notAfter time.Time) error {
	b.Samples = make([]Sample, n)
	limit := int64(maxTimeMS)
	if !notAfter.IsZero() {
		limit = min(limit, notAfter.UnixMilli())
	}
	t := base
	for i := range b.Samples {
		if i > 0 {
			step := interval
			if flags&flagIrregular != 0 {
				d := unzigzag(r.uvarint("time delta"))
				if r.err != nil {
					return r.err
				}
				if d < -maxTimeMS || d > maxTimeMS {
					return fmt.Errorf("%w: sample %d time delta %d out of range", ErrCorrupt, i, d)
				}
				step += d
			}
			if step <= 0 {
				return fmt.Errorf("%w: sample %d time does not increase", ErrCorrupt, i)
			}
			t += step
		}
		if t > limit {
			if t <= maxTimeMS {
				return fmt.Errorf("%w: sample %d at %s, after %s", ErrFuture, i,
					time.UnixMilli(t).UTC().Format(time.RFC3339Nano), notAfter.UTC().Format(time.RFC3339Nano))
			}
			return fmt.Errorf("%w: sample %d time %d out of range", ErrCorrupt, i, t)
		}
		b.Samples[i].Time = t
	}
	return nil
}

func (b *Batch) decodeValues(r *reader, flags byte, n int) error {
	nreg := len(b.Registers)
	slots := n * nreg
	present := slots
	var bitmap []byte
	if flags&flagMissing != 0 {
		bitmap = r.bytes((slots+7)/8, "presence bitmap")
		if r.err != nil {
			return r.err
		}
		if pad := slots % 8; pad != 0 && bitmap[len(bitmap)-1]>>pad != 0 {
			return fmt.Errorf("%w: presence bitmap padding bits set", ErrCorrupt)
		}
		for _, x := range bitmap {
			present -= bits.OnesCount8(x)
		}
	}
	if present > r.remaining() { // every present value takes at least one byte
		return fmt.Errorf("%w: %d values need at least %d bytes, %d left", ErrTruncated, present, present, r.remaining())
	}
	values := make([]uint16, slots)
	for i := range b.Samples {
		b.Samples[i].Values = values[i*nreg : (i+1)*nreg : (i+1)*nreg]
	}
	for k := 0; bitmap != nil && k < slots; k++ {
		if bitmap[k/8]&(1<<(k%8)) != 0 {
			b.Samples[k/nreg].Missing |= 1 << (k % nreg)
		}
	}
	for j := range nreg {
		var prev int64
		for i := range b.Samples {
			if !b.Samples[i].Present(j) {
				continue
			}
			v := prev + unzigzag(r.uvarint("value"))
			if r.err != nil {
				return r.err
			}
			if v < 0 || v > 0xFFFF {
				return fmt.Errorf("%w: register %d sample %d value %d out of range", ErrCorrupt, b.Registers[j], i, v)
			}
			b.Samples[i].Values[j] = uint16(v)
			prev = v
		}
	}
	return nil
}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

// reader reads a dz1 encoding; the first error sticks.
type reader struct {
	buf []byte
	off int
	err error
}

func (r *reader) remaining() int { return len(r.buf) - r.off }

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.buf) {
		r.err = fmt.Errorf("%w: %d bytes", ErrTruncated, len(r.buf))
		return 0
	}
	r.off++
	return r.buf[r.off-1]
}

func (r *reader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > r.remaining() {
		r.err = fmt.Errorf("%w: %s needs %d bytes at offset %d, %d left", ErrTruncated, what, n, r.off, r.remaining())
		return nil
	}
	r.off += n
	return r.buf[r.off-n : r.off]
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.buf[r.off:])
	switch {
	case n == 0:
		r.err = fmt.Errorf("%w: %s varint at offset %d", ErrTruncated, what, r.off)
		return 0
	case n < 0:
		r.err = fmt.Errorf("%w: %s varint at offset %d overflows", ErrCorrupt, what, r.off)
		return 0
	}
	r.off += n
	return v
}

func (r *reader) end() error {
	if r.remaining() != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, r.remaining())
	}
	return nil
}
