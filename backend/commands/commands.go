// Package commands is the backend side of command execution: operators
// queue commands for a device (HTTP API, CLI or ecowatt/v1/ops/{id}/command),
// the backend validates them, keeps them in a durable per-device queue in
// Redis, delivers them in order while the device is online, and records the
// device's receipt and result.
//
// Lifecycle (every transition is an atomic check-and-set in Lua on the
// device's keys, timestamped, appended to the device's audit stream by the
// same script and published on ecowatt/v1/events/{id}/command; a device's
// command_result has its replay check in that script too):
//
//	queued -> sent -> delivered -> succeeded | failed
//	queued -> cancelled            (operator, only while queued)
//	queued | sent -> expired       (TTL passed before a receipt or result)
//	delivered -> timed_out         (no result within Config.ResultTimeout)
//
// A device acknowledges a command with a non-final command_result of status
// "delivered" when it accepts it, before it executes it; a device that sends
// no receipt goes from sent to its final state in one step (delivered_at is
// then the result's arrival). A sent command without a receipt is sent
// again every Config.ResendAfter while the device is online, and at once
// when the device reconnects; a delivered command without a result is sent
// again every Config.ResultResend (its result may have been lost, e.g. in
// the queue of a replica that died). The device answers a repeated ID from
// its flash without executing again.
//
// Several replicas may run at once. Delivery runs only in the replica
// holding the Redis lease <prefix>lease:command-delivery, so one device's
// commands leave in order from one process; there a bounded pool of
// Config.DeliveryWorkers workers, sharded by device, delivers to several
// devices at once, each device always on the same worker. The expiry,
// timeout and resend sweep runs only in the holder of
// <prefix>lease:command-sweep (backend/lease).
// A lease outlives a dead holder by Config.LeaseTTL, then another replica
// takes it; a new delivery holder first sends every unfinished command
// again, in queue order (the last holder may have lost sends or results
// on the way), so a device's commands still arrive in order. Queueing a
// command or a device coming online on the delivery holder hands the
// device to its worker at once; on another replica it records the device
// in <prefix>cmdwake, which the holder reads at its next
// Config.DeliveryTick.
//
// Redis layout, per device under its hash tag (store.Keys.Dev):
//
//	<prefix>{dev:ID}:cmd:CID        hash    one command (fields below); PEXPIRE Retention once final
//	<prefix>{dev:ID}:cmdq           zset    non-final commands, score = per-device sequence (delivery order)
//	<prefix>{dev:ID}:cmds           zset    history, score = sequence (capped at MaxHistory)
//	<prefix>{dev:ID}:cmdseq         string  the device's command sequence
//	<prefix>{dev:ID}:cmdreq:REQID   string  request_id -> CID, for idempotent submission
//
// and fleet-wide:
//
//	<prefix>cmdidx:CID              string  CID -> device ID (expires with the command)
//	<prefix>cmdactive               zset    devices with non-final commands (for the sweep)
//	<prefix>cmdwake                 hash    devices to look at, for the delivery lease holder
//	                                        (value "1": resend everything unfinished)
//	<prefix>lease:command-delivery  string  holder of the delivery lease
//	<prefix>lease:command-sweep     string  holder of the sweep lease
//
// Nothing is held only in memory: Run's sweep finds every device with
// pending commands after a restart.
package commands

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// States of a command.
const (
	StateQueued    = "queued"
	StateSent      = "sent"
	StateDelivered = "delivered"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateExpired   = "expired"
	StateTimedOut  = "timed_out"
	StateCancelled = "cancelled"
)

// States lists every state, in lifecycle order.
var States = []string{StateQueued, StateSent, StateDelivered, StateSucceeded, StateFailed, StateExpired, StateTimedOut, StateCancelled}

// Final reports whether state is a final state.
func Final(state string) bool {
	switch state {
	case StateSucceeded, StateFailed, StateExpired, StateTimedOut, StateCancelled:
		return true
	}
	return false
}

// Defaults of Config.
const (
	DefaultResultTimeout = 2 * time.Minute
	DefaultResendAfter   = 15 * time.Second
	DefaultSweepInterval = 5 * time.Second
	DefaultDeliveryTick  = 500 * time.Millisecond
	DefaultDeliveryWork  = 16
	DefaultRetention     = 30 * 24 * time.Hour
	DefaultMaxHistory    = 1000
	DefaultPageSize      = 50
	MaxPageSize          = 500
)

// Fleet is what the commands service needs from the backend;
// *backend.Service has it.
type Fleet interface {
	Device(ctx context.Context, id string) (backend.Device, error)
	Send(ctx context.Context, dev, kind string, body any) error
	Emit(ctx context.Context, dev, kind string, data any) error
	// PublishEvent publishes an event a script of ours appended to the
	// device's audit stream (capped at AuditMaxLen) with the change.
	PublishEvent(ctx context.Context, ev backend.Event) error
	AuditMaxLen() int64
	// NonceKeys, NonceArgs and AcceptNonce are the uplink replay check
	// for a HandleChecked handler (HandleResult runs it in its script).
	NonceKeys(dev string) []string
	NonceArgs(n uint64) ([]any, error)
	AcceptNonce(ctx context.Context, dev string, n uint64) error
	HandleChecked(kind string, h backend.UplinkHandler)
	Handle(kind string, h backend.UplinkHandler)
	HandleOps(kind string, h backend.OpsHandler)
	HandleLifecycle(h backend.LifecycleHandler)
}

var _ Fleet = (*backend.Service)(nil)

// Config holds a Service's dependencies. Redis and Fleet are required.
type Config struct {
	Redis      redis.UniversalClient
	Keys       store.Keys // zero value: store.DefaultPrefix
	Fleet      Fleet
	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now
	Random     io.Reader             // for command IDs; default crypto/rand.Reader
	Registerer prometheus.Registerer // default: a private registry

	// ResultTimeout is how long a delivered command may go without a
	// result before it is timed_out; default DefaultResultTimeout.
	ResultTimeout time.Duration
	// ResendAfter is how long a sent command waits for a receipt before
	// it is sent again (while the device is online); default DefaultResendAfter.
	ResendAfter time.Duration
	// SweepInterval is how often Run looks for expired, timed-out and
	// undelivered commands; default DefaultSweepInterval.
	SweepInterval time.Duration
	// ResultResend is how long a delivered command waits for its result
	// before it is sent again (the device answers from flash); default
	// ResultTimeout/2.
	ResultResend time.Duration
	// Retention is how long a final command is kept; default DefaultRetention.
	Retention time.Duration
	// MaxHistory caps each device's history index; default DefaultMaxHistory.
	MaxHistory int

	// Replica names this replica in the leases; default lease.ReplicaID.
	Replica string
	// LeaseTTL is the lifetime of the delivery and sweep leases: how long
	// a dead replica's work waits before another takes it over; default
	// the larger of lease.DefaultTTL and 3 SweepIntervals.
	LeaseTTL time.Duration
	// DeliveryTick is how often the delivery lease holder reads the
	// devices other replicas woke, and a replica without the lease tries
	// to take it; default DefaultDeliveryTick.
	DeliveryTick time.Duration
	// DeliveryWorkers is how many devices the delivery lease holder
	// delivers to at once (one worker per shard of devices); default
	// DefaultDeliveryWork.
	DeliveryWorkers int
}

// Service queues, delivers and tracks commands. Create it with New, wire
// it with Attach and start it with Run.
type Service struct {
	rdb   redis.UniversalClient
	keys  store.Keys
	fleet Fleet
	log   zerolog.Logger
	now   func() time.Time
	cfg   Config
	m     *metrics

	idMu   sync.Mutex // guards random (ULID entropy)
	random io.Reader

	delivery *lease.Lease // owns sending: one replica delivers at a time
	sweeper  *lease.Lease // owns the expiry, timeout and resend sweep

	run  backend.RunGuard
	wake chan struct{} // capacity 1: this replica's sender has work in cmdwake

	shardMu sync.Mutex // guards shards
	shards  shards     // the delivery workers' queues while this replica holds the delivery lease, else nil
}

// New checks cfg and builds a Service, registering its metrics.
func New(cfg Config) (*Service, error) {
	if cfg.Redis == nil || cfg.Fleet == nil {
		return nil, errors.New("new commands: Redis and Fleet are required")
	}
	cfg.Keys = cfg.Keys.OrDefault()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Random == nil {
		cfg.Random = rand.Reader
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.ResultTimeout <= 0 {
		cfg.ResultTimeout = DefaultResultTimeout
	}
	if cfg.ResendAfter <= 0 {
		cfg.ResendAfter = DefaultResendAfter
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.ResultResend <= 0 {
		cfg.ResultResend = cfg.ResultTimeout / 2
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxHistory <= 0 {
		cfg.MaxHistory = DefaultMaxHistory
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = max(lease.DefaultTTL, 3*cfg.SweepInterval)
	}
	if cfg.DeliveryTick <= 0 {
		cfg.DeliveryTick = DefaultDeliveryTick
	}
	if cfg.DeliveryWorkers <= 0 {
		cfg.DeliveryWorkers = DefaultDeliveryWork
	}
	if cfg.Replica == "" {
		cfg.Replica = lease.ReplicaID(cfg.Random)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new commands: %w", err)
	}
	s := &Service{
		rdb:    cfg.Redis,
		keys:   cfg.Keys,
		fleet:  cfg.Fleet,
		log:    cfg.Logger.With().Str("component", "commands").Logger(),
		now:    cfg.Now,
		cfg:    cfg,
		m:      m,
		random: cfg.Random,
		wake:   make(chan struct{}, 1),
	}
	// The leases run on real time, not on cfg.Now: their expiry is Redis's.
	for _, l := range []struct {
		to   **lease.Lease
		name string
	}{{&s.delivery, "lease:command-delivery"}, {&s.sweeper, "lease:command-sweep"}} {
		*l.to, err = lease.New(lease.Config{
			Redis: cfg.Redis, Key: cfg.Keys.Global(l.name), Replica: cfg.Replica, TTL: cfg.LeaseTTL,
			Random: cfg.Random, Logger: s.log,
		})
		if err != nil {
			return nil, fmt.Errorf("new commands: %w", err)
		}
	}
	return s, nil
}

// Attach registers the service's handlers on the fleet: device results
// (topics.KindCommandResult), reconnects (topics.KindBirth) and operator
// commands (ecowatt/v1/ops/{id}/command).
func (s *Service) Attach() {
	s.fleet.HandleChecked(topics.KindCommandResult, s.handleResultChecked) // the replay check runs in the transition's script
	s.fleet.Handle(topics.KindBirth, s.HandleBirth)
	s.fleet.HandleOps(topics.KindCommand, s.HandleOps)
	s.fleet.HandleLifecycle(s.handleLifecycle)
}

// Run drives delivery and the sweep until ctx is done: one goroutine sends
// queued commands to online devices (in order, per device) while this
// replica holds the delivery lease, another expires and times out commands
// and finds undelivered ones (at once, then every SweepInterval) while it
// holds the sweep lease. Each tries to take its lease at start and again
// while another replica holds it. Run releases the leases and returns
// after both have exited. Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	if err := s.run.Start("commands run"); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.sendLoop(ctx) })
	wg.Go(func() { s.sweepLoop(ctx) })
	<-ctx.Done()
	return nil
}

// metrics are the service's Prometheus collectors.
type metrics struct {
	total   *prometheus.CounterVec
	latency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_commands_total",
			Help: "Command state transitions, by the state entered (\"rejected\": refused before queueing).",
		}, []string{"state"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ecowatt_command_latency_seconds",
			Help:    "Time from queueing a command to its final state.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 14),
		}),
	}
	for _, c := range []prometheus.Collector{m.total, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, st := range append([]string{"rejected"}, States...) {
		m.total.WithLabelValues(st)
	}
	return m, nil
}
