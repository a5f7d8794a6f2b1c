// Package config is the backend side of remote configuration: a versioned
// desired config per device, set by operators over HTTP, the CLI or MQTT
// (ecowatt/v1/ops/{id}/config), validated with the rules the device also
// runs (topics.ApplyPatch), delivered signed on down/config until the
// device acknowledges that version, and recorded with the device's
// field-by-field acks, its reported config and a history stream.
//
// Only the latest desired version is ever delivered: every config_update
// carries the complete config, so a device that was offline across several
// changes receives just the last one. Redelivery happens when the device
// is born (its birth reports the version it runs) and on a periodic sweep
// of pending devices that are online.
//
// State, per device under its hash tag (store.Keys.Dev), so a device's
// multi-key updates are one MULTI on one Cluster slot:
//
//	<prefix>{dev:ID}:cfg      hash    version, desired (JSON), desired_at/_by/_via,
//	                                  pending (1/0), reported (JSON), reported_version,
//	                                  reported_at, last_ack (JSON), last_ack_at,
//	                                  sent_version, sent_at, sends
//	<prefix>{dev:ID}:cfghist  stream  history: desired versions (who, how, the diff)
//	                                  and acks; capped (HistoryMaxLen)
//	<prefix>cfgpending        zset    devices with an unacknowledged version,
//	                                  score = when it was created (unix ms); the
//	                                  sweep's work list, written after the device
//	<prefix>lease:config-sweep
//	                          string  holder of the sweep lease (backend/lease)
//
// With several replicas, only the one holding the lease:config-sweep lease
// sweeps; a dead holder's lease expires after LeaseTTL and another replica
// takes the sweep over. Deliveries at birth and at a change happen in
// whichever replica handles them.
package config

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Fleet is what the config service needs from the backend;
// *backend.Service has it.
type Fleet interface {
	Send(ctx context.Context, dev, kind string, body any) error
	Emit(ctx context.Context, dev, kind string, data any) error
	Handle(kind string, h backend.UplinkHandler)
	HandleOps(kind string, h backend.OpsHandler)
	HandleLifecycle(h backend.LifecycleHandler)
}

var _ Fleet = (*backend.Service)(nil)

// Defaults of Config.
const (
	DefaultSweepInterval = 30 * time.Second
	DefaultHistoryMaxLen = 1000
	DefaultSweepBatch    = 500
)

// Config holds a Service's dependencies. Redis and Fleet are required.
type Config struct {
	Redis      redis.UniversalClient
	Keys       store.Keys // zero value: store.DefaultPrefix
	Fleet      Fleet
	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now
	Registerer prometheus.Registerer // default: a private registry
	// SweepInterval is how often Run redelivers pending versions to online
	// devices, and how long a delivery is given before it is repeated.
	SweepInterval time.Duration
	HistoryMaxLen int64 // approximate cap of each device's history stream
	SweepBatch    int   // devices read per pipelined round trip in a sweep
	// Replica names this replica in the sweep lease; default lease.ReplicaID.
	Replica string
	// LeaseTTL is the sweep lease's lifetime: how long a dead replica's
	// sweep waits before another replica takes it; default 3 SweepIntervals.
	LeaseTTL time.Duration
}

// Service manages desired and reported configuration. Create it with New,
// wire it with Attach and run the redelivery sweep with Run.
type Service struct {
	b    Fleet
	rdb  redis.UniversalClient
	keys store.Keys
	log  zerolog.Logger
	now  func() time.Time
	cfg  Config
	m    metrics

	sweeper *lease.Lease // owns the redelivery sweep
	run     backend.RunGuard
}

type metrics struct {
	versions     prometheus.Counter
	acks         *prometheus.CounterVec
	redeliveries prometheus.Counter
}

// Ack results: the values of the result label of ecowatt_config_acks_total.
const (
	AckAccepted = "accepted" // no field rejected
	AckPartial  = "partial"  // some fields accepted, some rejected
	AckRejected = "rejected" // fields rejected, none accepted
	AckStale    = "stale"    // for a version older than the desired one
	AckUnknown  = "unknown"  // refused: for a version newer than the desired one (never issued)
)

// New checks cfg and builds a Service, registering its metrics.
func New(cfg Config) (*Service, error) {
	if cfg.Redis == nil || cfg.Fleet == nil {
		return nil, errors.New("new config service: Redis and Fleet are required")
	}
	cfg.Keys = cfg.Keys.OrDefault()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.HistoryMaxLen <= 0 {
		cfg.HistoryMaxLen = DefaultHistoryMaxLen
	}
	if cfg.SweepBatch <= 0 {
		cfg.SweepBatch = DefaultSweepBatch
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 3 * cfg.SweepInterval
	}
	if cfg.Replica == "" {
		cfg.Replica = lease.ReplicaID(rand.Reader)
	}
	s := &Service{
		b:    cfg.Fleet,
		rdb:  cfg.Redis,
		keys: cfg.Keys,
		log:  cfg.Logger.With().Str("component", "config").Logger(),
		now:  cfg.Now,
		cfg:  cfg,
		m: metrics{
			versions: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "ecowatt_config_versions_total",
				Help: "Desired config versions created.",
			}),
			acks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ecowatt_config_acks_total",
				Help: "Config acks received from devices, by result.",
			}, []string{"result"}),
			redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "ecowatt_config_redeliveries_total",
				Help: "Config versions sent again (at birth or by the sweep) because they were not acknowledged.",
			}),
		},
	}
	// Real time, not cfg.Now: the lease's expiry is Redis's.
	sweeper, err := lease.New(lease.Config{
		Redis: s.rdb, Key: s.keys.Global("lease:config-sweep"), Replica: cfg.Replica, TTL: cfg.LeaseTTL, Logger: s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("new config service: %w", err)
	}
	s.sweeper = sweeper
	for _, c := range []prometheus.Collector{s.m.versions, s.m.acks, s.m.redeliveries} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("new config service: %w", err)
		}
	}
	for _, r := range []string{AckAccepted, AckPartial, AckRejected, AckStale, AckUnknown} {
		s.m.acks.WithLabelValues(r)
	}
	return s, nil
}

// Attach registers the service's handlers on the fleet: config acks
// (topics.KindConfigAck), births (reconciliation) and operator config
// messages (ecowatt/v1/ops/{id}/config).
func (s *Service) Attach() {
	s.b.Handle(topics.KindConfigAck, s.handleAck)
	s.b.Handle(topics.KindBirth, s.handleBirth)
	s.b.HandleOps(topics.KindConfig, s.handleOps)
	s.b.HandleLifecycle(s.handleLifecycle)
}

// Fields of the cfg hash.
const (
	fVersion         = "version"
	fDesired         = "desired"
	fDesiredAt       = "desired_at"
	fDesiredBy       = "desired_by"
	fDesiredVia      = "desired_via"
	fPending         = "pending"
	fReported        = "reported"
	fReportedVersion = "reported_version"
	fReportedAt      = "reported_at"
	fLastAck         = "last_ack"
	fLastAckAt       = "last_ack_at"
	fSentVersion     = "sent_version"
	fSentAt          = "sent_at"
	fSends           = "sends"
)

func (s *Service) cfgKey(dev string) string  { return s.keys.Dev(dev, "cfg") }
func (s *Service) histKey(dev string) string { return s.keys.Dev(dev, "cfghist") }
func (s *Service) pendingKey() string        { return s.keys.Global("cfgpending") }

// Who says who changed a config and through which channel.
type Who struct {
	By  string `json:"by"`  // operator name, or "admin" for the API token
	Via string `json:"via"` // ViaHTTP or ViaMQTT
}

// Channels of Who.Via.
const (
	ViaHTTP = "http"
	ViaMQTT = "mqtt"
)

// Run redelivers pending versions to online devices while this replica
// holds the sweep lease: at once, then every SweepInterval; while another
// replica holds it, Run tries to take it every SweepInterval. It returns
// once ctx is done and the lease is released. Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	if err := s.run.Start("config run"); err != nil {
		return err
	}
	return lease.Run(ctx, s.sweeper, s.cfg.SweepInterval, func(held context.Context) error {
		_, err := s.Sweep(held)
		return err
	})
}

// notFound is the error for an unknown device.
func notFound(dev string) error {
	return backend.Errorf(backend.CodeNotFound, "id", "no device %q", dev)
}
