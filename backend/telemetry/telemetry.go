// Package telemetry is the backend's telemetry store: it verifies and
// decodes the devices' dz1 batches (topics/telemetry), keeps them in Redis
// for a retention period and answers time-range queries with scaled values,
// names and units, plus each device's latest values and counters.
//
// Per device, under the device's hash tag (store.Keys.Dev), there are three
// keys, written together by one Lua script per batch (one round trip, atomic,
// no per-sample work in Redis):
//
//	<prefix>{dev:ID}:tm       stream  one entry per batch, ID = first sample ms
//	                                  (later if out of order); fields d (dz1
//	                                  bytes), seq, f, l (first/last sample ms);
//	                                  trimmed by MINID now-retention, PEXPIRE retention
//	<prefix>{dev:ID}:tmseen   zset    (first sample ms, seq) of the last batches
//	                                  stored, for dedupe; PEXPIRE retention
//	<prefix>{dev:ID}:tmstate  hash    counters, last upload, latest value per
//	                                  register ("r:<name>" = "<ms>:<raw>"),
//	                                  adapter counters ("a:<name>"), span/lag
//
// Wire it as an uplink handler: svc.Handle(topics.KindTelemetry, st.Ingest).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/backend/store"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Defaults of Config.
const (
	DefaultRetention      = 7 * 24 * time.Hour
	DefaultMaxFuture      = 5 * time.Minute
	DefaultMaxQueryWindow = 24 * time.Hour
	DefaultMaxPoints      = 500_000
	DefaultDedupeWindow   = 64
)

// Config holds a Store's dependencies and limits. Redis is required; zero
// fields take defaults.
type Config struct {
	Redis      redis.UniversalClient
	Keys       store.Keys // zero value: store.DefaultPrefix
	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now
	Registerer prometheus.Registerer // default: a private registry

	Retention time.Duration // how long batches are kept; default DefaultRetention
	MaxFuture time.Duration // how far past now a sample may be; default DefaultMaxFuture
	// MaxSamples bounds the sample slots of one batch; default (and at
	// most) topics/telemetry.MaxSamples.
	MaxSamples     int
	MaxQueryWindow time.Duration // longest to-from of a Query; default DefaultMaxQueryWindow
	MaxPoints      int           // most points one Query returns; default DefaultMaxPoints
	// DedupeWindow is how many recent batches per device are remembered
	// to drop redeliveries; default DefaultDedupeWindow.
	DedupeWindow int
}

// Store ingests and serves telemetry. It is safe for concurrent use.
type Store struct {
	rdb  redis.UniversalClient
	keys store.Keys
	log  zerolog.Logger
	now  func() time.Time
	cfg  Config
	m    *metrics
}

// New checks cfg and builds a Store, registering its metrics with
// cfg.Registerer.
func New(cfg Config) (*Store, error) {
	if cfg.Redis == nil {
		return nil, errors.New("new telemetry store: Redis is required")
	}
	cfg.Keys = cfg.Keys.OrDefault()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxFuture <= 0 {
		cfg.MaxFuture = DefaultMaxFuture
	}
	if cfg.MaxSamples <= 0 || cfg.MaxSamples > wire.MaxSamples {
		cfg.MaxSamples = wire.MaxSamples
	}
	if cfg.MaxQueryWindow <= 0 {
		cfg.MaxQueryWindow = DefaultMaxQueryWindow
	}
	if cfg.MaxPoints <= 0 {
		cfg.MaxPoints = DefaultMaxPoints
	}
	if cfg.DedupeWindow <= 0 {
		cfg.DedupeWindow = DefaultDedupeWindow
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new telemetry store: %w", err)
	}
	return &Store{
		rdb:  cfg.Redis,
		keys: cfg.Keys,
		log:  cfg.Logger.With().Str("component", "telemetry").Logger(),
		now:  cfg.Now,
		cfg:  cfg,
		m:    m,
	}, nil
}

// Retention returns how long batches are kept.
func (s *Store) Retention() time.Duration { return s.cfg.Retention }

// Delete removes all telemetry of dev, e.g. when the device is deleted.
func (s *Store) Delete(ctx context.Context, dev string) error {
	k := s.keysOf(dev)
	if err := s.rdb.Del(ctx, k.stream, k.seen, k.state).Err(); err != nil {
		return fmt.Errorf("delete telemetry %s: %w", dev, err)
	}
	return nil
}

// devKeys are one device's telemetry keys.
type devKeys struct {
	stream, seen, state string
}

func (s *Store) keysOf(dev string) devKeys {
	return devKeys{
		stream: s.keys.Dev(dev, "tm"),
		seen:   s.keys.Dev(dev, "tmseen"),
		state:  s.keys.Dev(dev, "tmstate"),
	}
}

// Reasons a batch is not stored: the values of the reason label of
// ecowatt_telemetry_rejected_total. Duplicate and expired batches are not
// the device's fault and are not reported as bad input.
const (
	ReasonBadJSON         = "bad_json"         // body is not a telemetry JSON message
	ReasonBadMessage      = "bad_message"      // format, samples, failures or dropped inconsistent
	ReasonTruncated       = "truncated"        // dz1 data ends early
	ReasonCorrupt         = "corrupt"          // dz1 data malformed
	ReasonUnknownRegister = "unknown_register" // register code not in the map
	ReasonFuture          = "future"           // a sample after now + MaxFuture
	ReasonTooLarge        = "too_large"        // over MaxSamples or MaxDataLen
	ReasonDuplicate       = "duplicate"        // already stored (redelivery)
	ReasonExpired         = "expired"          // every sample older than the retention
)

var allReasons = []string{
	ReasonBadJSON, ReasonBadMessage, ReasonTruncated, ReasonCorrupt, ReasonUnknownRegister,
	ReasonFuture, ReasonTooLarge, ReasonDuplicate, ReasonExpired,
}

// Causes of missing samples: the values of the cause label of
// ecowatt_telemetry_missing_samples_total.
const (
	CauseDropped     = "dropped"      // sample slots the device lost (buffer full, overrun)
	CauseReadFailure = "read_failure" // register readings the device could not read
)

type metrics struct {
	batches  prometheus.Counter
	samples  prometheus.Counter
	rejected *prometheus.CounterVec
	missing  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_telemetry_batches_total",
			Help: "Telemetry batches stored.",
		}),
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_telemetry_samples_total",
			Help: "Sample slots (timestamps) in stored telemetry batches.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_telemetry_rejected_total",
			Help: "Telemetry batches not stored, by reason.",
		}, []string{"reason"}),
		missing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_telemetry_missing_samples_total",
			Help: "Samples reported missing by devices in stored batches: dropped slots and failed register reads.",
		}, []string{"cause"}),
	}
	for _, c := range []prometheus.Collector{m.batches, m.samples, m.rejected, m.missing} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, r := range allReasons {
		m.rejected.WithLabelValues(r)
	}
	m.missing.WithLabelValues(CauseDropped)
	m.missing.WithLabelValues(CauseReadFailure)
	return m, nil
}
