// Package inverter simulates the solar inverter an EcoWatt gateway polls: a
// Modbus RTU slave (address 0x11) serving the register map of
// docs/PROTOCOL.md §11.1
// with plausible, seed-deterministic values driven by an injected clock,
// and the course simulator's fault injection (exception, CRC error,
// corruption, packet drop, delay).
package inverter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// Register is an entry of the register map; the map itself is part of the
// wire contract and lives in package telemetry.
type Register = telemetry.Register

// ByAddr looks a register up by its address.
func ByAddr(addr uint16) (Register, bool) {
	if addr >= telemetry.NumRegisters {
		return Register{}, false
	}
	return telemetry.RegisterByCode(uint8(addr))
}

// Config configures a SIM. Zero fields take the defaults.
type Config struct {
	Slave     byte        // default modbus.DefaultSlave (0x11)
	Seed      uint64      // drives the weather and the measurement noise
	Clock     clock.Clock // default clock.Real
	RatedW    float64     // AC rating in W; default 5000
	Faults    Faults      // fault injection; zero means none
	FaultSeed uint64      // seeds fault draws; default Seed
}

// SIM is a simulated inverter. It is safe for concurrent use.
type SIM struct {
	slave  byte
	clock  clock.Clock
	model  model
	faults *injector

	mu     sync.Mutex // guards export
	export uint16     // export power limit, percent
}

var _ modbus.Transport = (*SIM)(nil)

// New returns a SIM with export power at 100 %.
func New(cfg Config) *SIM {
	if cfg.Slave == 0 {
		cfg.Slave = modbus.DefaultSlave
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.RatedW <= 0 {
		cfg.RatedW = 5000
	}
	if cfg.FaultSeed == 0 {
		cfg.FaultSeed = cfg.Seed
	}
	return &SIM{
		slave:  cfg.Slave,
		clock:  cfg.Clock,
		model:  model{seed: cfg.Seed, ratedW: cfg.RatedW},
		faults: newInjector(cfg.Faults, cfg.FaultSeed),
		export: 100,
	}
}

// Handle answers one request frame without fault injection, as a perfect
// link would. A frame the slave must ignore (bad CRC, wrong length, another
// slave address) returns a nil response and an error saying why; a real
// slave stays silent then.
func (s *SIM) Handle(req []byte) ([]byte, error) {
	r, err := modbus.DecodeRequest(req)
	if err != nil {
		return nil, fmt.Errorf("inverter: ignoring request: %w", err)
	}
	if r.Slave != s.slave {
		return nil, fmt.Errorf("inverter: ignoring request for slave %02X", r.Slave)
	}
	switch r.Func {
	case modbus.FuncReadHolding:
		return s.read(r), nil
	case modbus.FuncWriteSingle:
		return s.write(r, req), nil
	}
	return modbus.EncodeException(s.slave, r.Func, modbus.ExIllegalFunction), nil
}

func (s *SIM) read(r modbus.Request) []byte {
	if r.Value == 0 || r.Value > modbus.MaxReadCount {
		return modbus.EncodeException(s.slave, r.Func, modbus.ExIllegalValue)
	}
	if int(r.Addr)+int(r.Value) > telemetry.NumRegisters {
		return modbus.EncodeException(s.slave, r.Func, modbus.ExIllegalAddress)
	}
	all := s.Values()
	return modbus.EncodeReadResponse(s.slave, all[r.Addr:r.Addr+r.Value])
}

func (s *SIM) write(r modbus.Request, req []byte) []byte {
	reg, ok := ByAddr(r.Addr)
	if !ok || !reg.Writable {
		return modbus.EncodeException(s.slave, r.Func, modbus.ExIllegalAddress)
	}
	if r.Value < reg.Min || r.Value > reg.Max {
		return modbus.EncodeException(s.slave, r.Func, modbus.ExIllegalValue)
	}
	s.mu.Lock()
	s.export = r.Value
	s.mu.Unlock()
	return append([]byte(nil), req...)
}

// Values returns the raw value of every register now, indexed by address.
func (s *SIM) Values() [telemetry.NumRegisters]uint16 {
	s.mu.Lock()
	export := s.export
	s.mu.Unlock()
	return s.model.values(s.clock.Now(), export)
}

// dropWait bounds how long a dropped request keeps the caller waiting when
// its context has no deadline.
const dropWait = time.Hour

// Transact answers req like Handle, through the fault injector: it may
// answer with an exception (04), a bad CRC or a corrupted byte, answer
// late, or not at all. Without an answer it waits until ctx is done.
func (s *SIM) Transact(ctx context.Context, req []byte) ([]byte, error) {
	f := s.faults.draw()
	if f.kind == Delay {
		if err := s.clock.Sleep(ctx, f.delay); err != nil {
			return nil, err
		}
	}
	resp, err := s.Handle(req)
	if err != nil || f.kind == Drop {
		if err := s.clock.Sleep(ctx, dropWait); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("inverter: no response after %v", dropWait)
	}
	return f.apply(resp, s.slave), nil
}

// FaultCounts returns how many faults of each kind were injected.
func (s *SIM) FaultCounts() map[FaultKind]uint64 { return s.faults.counts() }
