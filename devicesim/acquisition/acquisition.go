// Package acquisition is the device's sampling scheduler: every sampling
// interval it reads the configured inverter registers through the Modbus
// adapter, keeps the samples in a bounded buffer, and every upload
// interval hands one telemetry.Batch to an upload function, keeping a
// backlog in order while uploads fail. Time comes from an injected clock.
package acquisition

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// Reader reads inverter registers; *modbus.Client implements it.
type Reader interface {
	ReadRegisters(ctx context.Context, addr, count uint16) ([]uint16, error)
	Stats() modbus.Stats
}

var _ Reader = (*modbus.Client)(nil)

// Config is what remote configuration controls.
type Config struct {
	SamplingInterval time.Duration
	UploadInterval   time.Duration
	Registers        []string // register names, e.g. "voltage"; unique
}

// Limits on Config.
const (
	MinSamplingInterval = 100 * time.Millisecond
	MaxUploadInterval   = 24 * time.Hour
)

// DefaultConfig is the simulator's default: every register every 5 s,
// uploaded every 15 s. (The field default uploads every 15 min.)
func DefaultConfig() Config {
	cfg := Config{SamplingInterval: 5 * time.Second, UploadInterval: 15 * time.Second}
	for _, r := range telemetry.Registers() {
		cfg.Registers = append(cfg.Registers, r.Name)
	}
	return cfg
}

// ErrConfig is wrapped by Validate errors.
var ErrConfig = errors.New("invalid acquisition config")

// Validate checks cfg: sampling at least MinSamplingInterval in whole
// milliseconds, upload a multiple of sampling of at most MaxUploadInterval
// and telemetry.MaxSamples samples, 1-10 known registers without repeats.
func Validate(cfg Config) error {
	s, u := cfg.SamplingInterval, cfg.UploadInterval
	switch {
	case s < MinSamplingInterval || s%time.Millisecond != 0:
		return fmt.Errorf("%w: sampling_interval %v: want whole milliseconds, at least %v", ErrConfig, s, MinSamplingInterval)
	case u < s || u > MaxUploadInterval || u%s != 0:
		return fmt.Errorf("%w: upload_interval %v: want a multiple of sampling_interval %v, at most %v", ErrConfig, u, s, MaxUploadInterval)
	case u/s > telemetry.MaxSamples:
		return fmt.Errorf("%w: upload_interval %v holds %d samples of %v, limit %d", ErrConfig, u, u/s, s, telemetry.MaxSamples)
	case len(cfg.Registers) == 0 || len(cfg.Registers) > telemetry.NumRegisters:
		return fmt.Errorf("%w: registers: want 1-%d, got %d", ErrConfig, telemetry.NumRegisters, len(cfg.Registers))
	}
	for i, name := range cfg.Registers {
		if _, ok := telemetry.RegisterByName(name); !ok {
			return fmt.Errorf("%w: unknown register %q", ErrConfig, name)
		}
		if slices.Contains(cfg.Registers[:i], name) {
			return fmt.Errorf("%w: register %q listed twice", ErrConfig, name)
		}
	}
	return nil
}

func (c Config) codes() []uint8 {
	out := make([]uint8, len(c.Registers))
	for i, name := range c.Registers {
		r, _ := telemetry.RegisterByName(name)
		out[i] = r.Code
	}
	return out
}

func (c Config) clone() Config {
	c.Registers = slices.Clone(c.Registers)
	return c
}

// UploadFunc publishes one batch; an error keeps the batch for a retry at
// the next upload boundary.
type UploadFunc func(ctx context.Context, b telemetry.Batch) error

// Options are a Scheduler's dependencies.
type Options struct {
	Clock      clock.Clock // default clock.Real
	Reader     Reader      // required
	Upload     UploadFunc  // required
	Config     Config      // initial config; zero means DefaultConfig
	BufferSize int         // sample slots held, backlog included; default 1024
	Seq        uint64      // sequence number of the first batch; default 1
	// OnApplied, if set, is called in Run's goroutine when a config given
	// to Apply takes effect.
	OnApplied func(Config)
}

// DefaultBufferSize is the default Options.BufferSize.
const DefaultBufferSize = 1024

// Stats are a Scheduler's counters since it was made.
type Stats struct {
	Slots        uint64                         // sampling slots that came due
	Samples      uint64                         // slots sampled into the buffer
	Reads        uint64                         // register values read
	Failures     [telemetry.NumRegisters]uint64 // failed reads by register code
	Dropped      uint64                         // slots lost: buffer full or overrun
	Overruns     uint64                         // slots skipped because sampling ran late
	Batches      uint64                         // batches built
	Uploaded     uint64                         // batches uploaded
	UploadErrors uint64                         // failed upload attempts
	Backlog      int                            // batches waiting for upload
	Buffered     int                            // sample slots held
	Adapter      modbus.Stats                   // the reader's counters
}

// Scheduler samples and uploads. Make one with New and call Run once.
type Scheduler struct {
	clk       clock.Clock
	reader    Reader
	upload    UploadFunc
	size      int
	onApplied func(Config)

	// Owned by Run's goroutine.
	cfg     Config
	codes   []uint8
	pending []telemetry.Sample // samples of the batch being filled
	backlog []telemetry.Batch  // built batches not yet uploaded, oldest first
	dropped uint64             // slots lost not yet reported in a batch
	seq     uint64             // next batch's sequence number

	kickMu sync.Mutex         // guards kicked and wake
	kicked bool               // Reconnected was called: upload the backlog now
	wake   context.CancelFunc // ends Run's current wait; nil when not waiting

	mu    sync.Mutex // guards next and stats
	next  *Config    // config waiting for the next boundary
	stats Stats
}

// New checks opt and returns a Scheduler.
func New(opt Options) (*Scheduler, error) {
	if opt.Reader == nil || opt.Upload == nil {
		return nil, errors.New("acquisition: Reader and Upload are required")
	}
	if opt.Clock == nil {
		opt.Clock = clock.Real{}
	}
	if opt.Config.SamplingInterval == 0 && opt.Config.UploadInterval == 0 && opt.Config.Registers == nil {
		opt.Config = DefaultConfig()
	}
	if err := Validate(opt.Config); err != nil {
		return nil, fmt.Errorf("acquisition: %w", err)
	}
	if opt.BufferSize <= 0 {
		opt.BufferSize = DefaultBufferSize
	}
	if opt.Seq == 0 {
		opt.Seq = 1
	}
	s := &Scheduler{
		clk: opt.Clock, reader: opt.Reader, upload: opt.Upload, size: opt.BufferSize,
		onApplied: opt.OnApplied, seq: opt.Seq,
	}
	s.setConfig(opt.Config.clone())
	return s, nil
}

// Reconnected tells Run that the uplink is back, so that a backlog held
// through an outage goes out at once rather than at the next upload
// boundary. It never blocks.
func (s *Scheduler) Reconnected() {
	s.kickMu.Lock()
	defer s.kickMu.Unlock()
	s.kicked = true
	if s.wake != nil {
		s.wake()
	}
}

func (s *Scheduler) setConfig(cfg Config) {
	s.cfg, s.codes = cfg, cfg.codes()
}

// Apply validates cfg and schedules it for the next upload boundary, after
// that boundary's upload; a later Apply before then replaces it.
func (s *Scheduler) Apply(cfg Config) error {
	if err := Validate(cfg); err != nil {
		return fmt.Errorf("acquisition: apply: %w", err)
	}
	cfg = cfg.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = &cfg
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Scheduler) Stats() Stats {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	st.Adapter = s.reader.Stats()
	return st
}

func (s *Scheduler) count(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}
