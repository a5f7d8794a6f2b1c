package devicesim

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// Fleet defaults.
const (
	DefaultMaxConnecting    = 32
	DefaultProgressInterval = 500 * time.Millisecond
)

// FleetConfig describes a fleet of simulated devices.
type FleetConfig struct {
	Keys      map[string][]byte // device ID -> PSK
	StateRoot string            // each device's flash is StateDir(StateRoot, id)

	// Device is the template for every device: broker, TLS, firmware
	// version, clock, logger, timings. ID, Key, StateDir and Flash are set
	// per device; Rand, when set, seeds every device's own source and the
	// start jitter.
	Device Config

	MaxConnecting int           // concurrent connection attempts
	StartSpread   time.Duration // devices start at random offsets in [0, StartSpread)

	// Setup, when set, wires features (telemetry, config, commands, FOTA)
	// into each device before it runs.
	Setup func(d *Device) error

	// Progress, when set, is called every ProgressInterval while the fleet
	// runs, and once more when it has stopped.
	Progress         func(FleetStatus)
	ProgressInterval time.Duration
}

// FleetStatus sums the fleet's device counters.
type FleetStatus struct {
	Total  int
	Online int
	Stats  // summed; Online and BootCount are not meaningful here
}

// Fleet runs many devices in one process.
type Fleet struct {
	cfg     FleetConfig
	devices []*Device // sorted by ID
	offsets []time.Duration
	clk     clock.Clock
	gate    Gate

	mu   sync.Mutex // guards errs
	errs []error
}

// NewFleet creates (but does not start) one Device per key.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("new fleet: no devices")
	}
	if cfg.StateRoot == "" {
		return nil, errors.New("new fleet: no state root")
	}
	if cfg.MaxConnecting <= 0 {
		cfg.MaxConnecting = DefaultMaxConnecting
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	clk := cfg.Device.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	src := cfg.Device.Rand
	if src == nil {
		var seed [16]byte
		_, _ = crand.Read(seed[:])
		src = rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:]))
	}
	rnd := rand.New(src)
	f := &Fleet{cfg: cfg, clk: clk, gate: make(semaphore, cfg.MaxConnecting)}
	ids := make([]string, 0, len(cfg.Keys))
	for id := range cfg.Keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		dc := cfg.Device
		dc.ID, dc.Key, dc.Flash = id, cfg.Keys[id], nil
		dc.StateDir = StateDir(cfg.StateRoot, id)
		dc.Clock = clk
		dc.Rand = rand.NewPCG(rnd.Uint64(), rnd.Uint64())
		if dc.Gate == nil {
			dc.Gate = f.gate
		}
		d, err := New(dc)
		if err != nil {
			return nil, fmt.Errorf("new fleet: %w", err)
		}
		if cfg.Setup != nil {
			if err := cfg.Setup(d); err != nil {
				return nil, fmt.Errorf("new fleet: setup %s: %w", id, err)
			}
		}
		var off time.Duration
		if cfg.StartSpread > 0 {
			off = time.Duration(rnd.Int64N(int64(cfg.StartSpread)))
		}
		f.devices = append(f.devices, d)
		f.offsets = append(f.offsets, off)
	}
	return f, nil
}

// Run starts every device (after its start offset) and returns when ctx is
// done and all of them have stopped. A device that fails is logged and
// left stopped while the others go on; Run returns the devices' errors
// joined.
func (f *Fleet) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i, d := range f.devices {
		wg.Go(func() {
			if err := f.clk.Sleep(ctx, f.offsets[i]); err != nil {
				return
			}
			if err := d.Run(ctx); err != nil {
				d.log.Error().Err(err).Msg("device stopped")
				f.mu.Lock()
				f.errs = append(f.errs, err)
				f.mu.Unlock()
			}
		})
	}
	done := make(chan struct{})
	var pwg sync.WaitGroup
	if f.cfg.Progress != nil {
		pwg.Go(func() { f.progress(done) })
	}
	wg.Wait()
	close(done)
	pwg.Wait()
	if f.cfg.Progress != nil {
		f.cfg.Progress(f.Status())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

func (f *Fleet) progress(done <-chan struct{}) {
	for {
		t := f.clk.NewTimer(f.cfg.ProgressInterval)
		select {
		case <-done:
			t.Stop()
			return
		case <-t.C():
		}
		f.cfg.Progress(f.Status())
	}
}

// Status sums the devices' counters now.
func (f *Fleet) Status() FleetStatus {
	s := FleetStatus{Total: len(f.devices)}
	for _, d := range f.devices {
		ds := d.Stats()
		if ds.Online {
			s.Online++
		}
		s.Connects += ds.Connects
		s.Reconnects += ds.Reconnects
		s.ConnectFailures += ds.ConnectFailures
		s.Sent += ds.Sent
		s.PublishErrors += ds.PublishErrors
		s.Received += ds.Received
		s.Rejected += ds.Rejected
		s.Dropped += ds.Dropped
		s.HandlerErrors += ds.HandlerErrors
		s.Unhandled += ds.Unhandled
	}
	return s
}

// semaphore is a Gate backed by a buffered channel.
type semaphore chan struct{}

var _ Gate = semaphore(nil)

func (s semaphore) Acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s semaphore) Release() { <-s }

// LoadKeys reads a keys file, {"ID":"hex PSK",...}, as written by
// `ecowatt device add --keys-out`.
func LoadKeys(r io.Reader) (map[string][]byte, error) {
	var raw map[string]string
	dec := json.NewDecoder(r)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	keys := make(map[string][]byte, len(raw))
	for id, h := range raw {
		if err := topics.ValidateID(id); err != nil {
			return nil, fmt.Errorf("load keys: %w", err)
		}
		k, err := hex.DecodeString(h)
		if err != nil || len(k) != envelope.KeySize {
			return nil, fmt.Errorf("load keys: device %s: key must be %d hex-encoded bytes", id, envelope.KeySize)
		}
		keys[id] = k
	}
	if len(keys) == 0 {
		return nil, errors.New("load keys: no devices")
	}
	return keys, nil
}
