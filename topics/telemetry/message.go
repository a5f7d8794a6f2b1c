package telemetry

import (
	"errors"
	"fmt"
	"math"
)

// MaxDataLen bounds the decoded size of Message.Data.
const MaxDataLen = 256 << 10

// Body is the uplink telemetry message:
// {"telemetry":{"seq":..,"format":"dz1","data":"<base64>",...}}.
type Body struct {
	Telemetry *Message `json:"telemetry"`
}

// Message is one telemetry batch on the wire. Data holds the dz1 encoding
// (base64 in JSON); the other fields are plain so operators can read them.
// Stats and Failures are derived from Data and informative: a receiver
// that stores samples should rely on Data.
type Message struct {
	Seq      uint64           `json:"seq"`
	Format   string           `json:"format"`
	Data     []byte           `json:"data"`
	Samples  int              `json:"samples"`  // sample slots in Data
	Dropped  uint64           `json:"dropped"`  // slots lost before this batch (buffer full or overrun)
	Failures uint64           `json:"failures"` // register reads missing in Data
	Stats    map[string]Stats `json:"stats"`    // per register name
	Adapter  Counters         `json:"adapter"`  // Modbus adapter counters since boot
}

// Stats summarises one register over a batch, in engineering units.
type Stats struct {
	Count    int     `json:"n"`
	Failures int     `json:"failures"`
	Min      float64 `json:"min"`
	Avg      float64 `json:"avg"`
	Max      float64 `json:"max"`
	Unit     string  `json:"unit"`
}

// Counters are the Modbus adapter's counters, cumulative since boot.
type Counters struct {
	Requests    uint64 `json:"requests"`     // read/write operations
	Retries     uint64 `json:"retries"`      // extra tries after a failed one
	CRCErrors   uint64 `json:"crc_errors"`   // responses with a bad CRC
	FrameErrors uint64 `json:"frame_errors"` // responses with a good CRC but wrong shape
	Exceptions  uint64 `json:"exceptions"`   // exception responses
	Timeouts    uint64 `json:"timeouts"`     // tries without an answer in time
	Failures    uint64 `json:"failures"`     // operations that failed after all tries
}

// ErrFormat means a Message names an unsupported format or is inconsistent
// with its data.
var ErrFormat = errors.New("telemetry: bad message")

// NewMessage encodes b and computes its summary.
func NewMessage(b Batch) (Message, error) {
	data, err := Encode(b)
	if err != nil {
		return Message{}, fmt.Errorf("telemetry: new message: %w", err)
	}
	m := Message{
		Seq:     b.Seq,
		Format:  Format,
		Data:    data,
		Samples: len(b.Samples),
		Dropped: b.Dropped,
		Stats:   Summarize(b),
		Adapter: b.Adapter,
	}
	for _, s := range m.Stats {
		m.Failures += uint64(s.Failures)
	}
	return m, nil
}

// Batch decodes and checks m: the format, the data size, the dz1 encoding
// under lim, and that Samples and Failures agree with the data.
func (m Message) Batch(lim Limits) (Batch, error) {
	if m.Format != Format {
		return Batch{}, fmt.Errorf("%w: format %q, want %q", ErrFormat, m.Format, Format)
	}
	if len(m.Data) > MaxDataLen {
		return Batch{}, fmt.Errorf("%w: %d bytes of data, limit %d", ErrTooLarge, len(m.Data), MaxDataLen)
	}
	b, err := Decode(m.Data, lim)
	if err != nil {
		return Batch{}, fmt.Errorf("telemetry: batch %d: %w", m.Seq, err)
	}
	if m.Samples != len(b.Samples) {
		return Batch{}, fmt.Errorf("%w: samples %d, data has %d", ErrFormat, m.Samples, len(b.Samples))
	}
	if f := b.Failures(); m.Failures != f {
		return Batch{}, fmt.Errorf("%w: failures %d, data has %d missing", ErrFormat, m.Failures, f)
	}
	b.Seq, b.Dropped, b.Adapter = m.Seq, m.Dropped, m.Adapter
	return b, nil
}

// Failures counts the missing register reads in b.
func (b Batch) Failures() uint64 {
	var n uint64
	for _, s := range b.Samples {
		for i := range b.Registers {
			if !s.Present(i) {
				n++
			}
		}
	}
	return n
}

// Summarize returns min/avg/max per register of b, keyed by register name.
func Summarize(b Batch) map[string]Stats {
	out := make(map[string]Stats, len(b.Registers))
	for j, code := range b.Registers {
		reg, ok := RegisterByCode(code)
		if !ok {
			continue
		}
		st := Stats{Unit: reg.Unit}
		lo, hi, sum := uint16(math.MaxUint16), uint16(0), 0.0
		for _, s := range b.Samples {
			if !s.Present(j) {
				st.Failures++
				continue
			}
			v := s.Values[j]
			st.Count++
			lo, hi, sum = min(lo, v), max(hi, v), sum+float64(v)
		}
		if st.Count > 0 {
			st.Min, st.Max = reg.Scale(lo), reg.Scale(hi)
			st.Avg = math.Round(sum/float64(st.Count)/reg.Gain*1000) / 1000
		}
		out[reg.Name] = st
	}
	return out
}
