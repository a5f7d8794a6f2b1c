package telemetry

import (
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// t0 is 2025-06-01T12:00:00Z, the test clock's start.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// env bundles a Store under test with its Redis, key prefix and clock.
type env struct {
	st     *Store
	rdb    redis.UniversalClient
	prefix string
	clock  *clock.Fake
	reg    *prometheus.Registry
}

// newEnv starts a Store on the test Redis with a fake clock at t0 + 1 min.
func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	keys, err := store.NewKeys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{rdb: rdb, prefix: prefix, clock: clock.NewFake(t0.Add(time.Minute)), reg: prometheus.NewRegistry()}
	cfg := Config{
		Redis: rdb, Keys: keys, Now: e.clock.Now, Registerer: e.reg,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if mod != nil {
		mod(&cfg)
	}
	if e.st, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

// keys lists every key the test wrote.
func (e *env) keys(t testing.TB) []string {
	t.Helper()
	return redistest.Keys(t, e.rdb, e.prefix)
}

// mkBatch builds a regular batch of n samples every 5 s from start with
// deterministic raw values: register code c at sample i reads base(c)+i.
func mkBatch(seq uint64, start time.Time, n int, codes ...uint8) wire.Batch {
	if len(codes) == 0 {
		codes = []uint8{wire.CodeVoltage, wire.CodeFrequency, wire.CodeOutputPower}
	}
	b := wire.Batch{Seq: seq, Interval: 5 * time.Second, Registers: codes,
		Adapter: wire.Counters{Requests: seq * uint64(n)}}
	for i := range n {
		s := wire.Sample{Time: start.Add(time.Duration(i) * 5 * time.Second).UnixMilli(), Values: make([]uint16, len(codes))}
		for j, c := range codes {
			s.Values[j] = rawBase(c) + uint16(i)
		}
		b.Samples = append(b.Samples, s)
	}
	return b
}

// rawBase is a plausible raw reading per register code.
func rawBase(c uint8) uint16 {
	return [wire.NumRegisters]uint16{2301, 52, 5000, 3100, 3050, 61, 60, 415, 100, 1200}[c]
}

// message builds the wire message of b.
func message(t testing.TB, b wire.Batch) wire.Message {
	t.Helper()
	m, err := wire.NewMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// body marshals m as an uplink telemetry body in an envelope.Message.
func body(t testing.TB, m wire.Message) envelope.Message {
	t.Helper()
	raw, err := json.Marshal(wire.Body{Telemetry: &m})
	if err != nil {
		t.Fatal(err)
	}
	return envelope.Message{Nonce: 1, Timestamp: t0, Body: raw}
}

// codesOffset is the offset of the register codes in a dz1 encoding.
func codesOffset(data []byte) int {
	off := 2
	for range 3 { // base, interval, count
		_, n := binary.Uvarint(data[off:])
		off += n
	}
	return off + 1 // nreg
}
