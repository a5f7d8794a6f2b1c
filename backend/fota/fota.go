// Package fota is the backend side of firmware over the air (PROTOCOL.md
// section 12): a firmware store, per-device update tracking and staged
// rollouts.
//
//   - Firmware: an uploaded ESP32 app image is checked (app descriptor,
//     version), split into chunks and described by a manifest signed with
//     the server's Ed25519 key (or signed offline and verified against it).
//     Image and manifest live in Redis, so every replica serves chunks
//     (GETRANGE) without a shared disk.
//   - Devices: StartUpdate sends the signed manifest; the device pulls
//     chunks with fota_request and the service answers each request with
//     exactly the chunks named, never more. fota_status reports are stored
//     in the device hash (backend.DeviceFOTA) and emitted as events on
//     ecowatt/v1/events/{id}/fota at every state change and every 5 % of
//     progress. The manifest is sent again after a birth and when a device
//     shows no progress for ManifestResend; an update without progress for
//     UpdateTimeout is timed_out.
//   - Rollouts: canary first, then batch by batch while the failure rate
//     stays within the threshold; abort above it. See rollout.go.
//
// Work that must happen once (timeouts, manifest resends, rollout
// advancement) runs only in the replica holding a Redis lease (SET NX PX,
// renewed), so several replicas may run and a backend restart carries on
// from the state in Redis.
//
// Redis layout (prefix "ecowatt:"):
//
//	ecowatt:{fw:V}:meta          hash    firmware V: manifest JSON, size, chunk_size, project, uploaded_at, ...
//	ecowatt:{fw:V}:image         string  the image bytes (chunks are GETRANGE)
//	ecowatt:firmware             zset    versions, score = upload time (ms)
//	ecowatt:{dev:ID}:dev         hash    fota_* fields of backend.DeviceFOTA
//	ecowatt:fota:active          zset    devices with an active update, score = start (ms)
//	ecowatt:lease:fota           string  holder of the sweep/advance lease (backend/lease)
//	ecowatt:{ro:RID}:ro          hash    rollout spec and state
//	ecowatt:{ro:RID}:order       list    the rollout's devices in batch order
//	ecowatt:{ro:RID}:devs        hash    device -> state in the rollout
//	ecowatt:{ro:RID}:why         hash    device -> failure reason
//	ecowatt:rollouts             zset    rollout IDs, score = creation (ms)
//	ecowatt:rollouts:active      zset    rollouts still advancing or reconciling
package fota

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Defaults of Config.
const (
	DefaultUpdateTimeout  = 10 * time.Minute
	DefaultManifestResend = 30 * time.Second
	DefaultSweepInterval  = 2 * time.Second
	DefaultLeaseTTL       = 10 * time.Second
	// 1 MiB/s and 2 MiB of burst per device: ten times what an ESP32
	// pulls over MQTT, and a 1 MiB image never waits.
	DefaultChunkRate  = 1 << 20
	DefaultChunkBurst = 2 << 20
)

// Fleet is what the FOTA service needs from the backend; *backend.Service
// has it.
type Fleet interface {
	Device(ctx context.Context, id string) (backend.Device, error)
	Devices(ctx context.Context) ([]backend.Device, error)
	Send(ctx context.Context, dev, kind string, body any) error
	SendBinaryFrom(ctx context.Context, dev, kind string, first uint64, at time.Time, payloads ...[]byte) error
	Emit(ctx context.Context, dev, kind string, data any) error
	Handle(kind string, h backend.UplinkHandler)
	// HandleChecked and the nonce methods put the uplink replay check of
	// fota_request and fota_status in the script that serves or records
	// it (one round trip).
	HandleChecked(kind string, h backend.UplinkHandler)
	NonceKeys(dev string) []string
	NonceArgs(n uint64) ([]any, error)
	AcceptNonce(ctx context.Context, dev string, n uint64) error
	HandleLifecycle(h backend.LifecycleHandler)
}

var _ Fleet = (*backend.Service)(nil)

// Config holds a Service's dependencies. Redis, Fleet and Key are required.
type Config struct {
	Redis      redis.UniversalClient
	Keys       store.Keys // zero value: store.DefaultPrefix
	Fleet      Fleet
	Key        ed25519.PrivateKey // firmware-signing key
	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now
	Random     io.Reader             // rollout IDs and the lease token; default crypto/rand.Reader
	Registerer prometheus.Registerer // default: a private registry
	// Replica names this replica in the lease; default lease.ReplicaID.
	Replica string

	ChunkSize      int           // default chunk size of uploads; default wire.DefaultChunkSize
	UpdateTimeout  time.Duration // no progress for this long: timed_out; default DefaultUpdateTimeout
	ManifestResend time.Duration // no progress for this long: send the manifest again; default DefaultManifestResend
	SweepInterval  time.Duration // how often the lease holder sweeps and advances; default DefaultSweepInterval
	LeaseTTL       time.Duration // lifetime of the lease, renewed every sweep; default DefaultLeaseTTL
	// ChunkRate and ChunkBurst bound the firmware bytes served to one
	// device: a token bucket (in the device hash, so shared by replicas)
	// refilled at ChunkRate bytes/s up to ChunkBurst; a request that would
	// overdraw it gets no chunk (the device asks again after its chunk
	// timeout). Defaults DefaultChunkRate and DefaultChunkBurst.
	ChunkRate, ChunkBurst int64
	// ImageCacheBytes bounds the in-memory cache of firmware images that
	// chunks are served from; default DefaultImageCacheBytes, negative:
	// no cache (every chunk is a GETRANGE).
	ImageCacheBytes int64
}

// Service stores firmware, drives device updates and advances rollouts.
// Create it with New, wire it with Attach and start it with Run.
type Service struct {
	rdb   redis.UniversalClient
	keys  store.Keys
	fleet Fleet
	key   ed25519.PrivateKey
	pub   ed25519.PublicKey
	log   zerolog.Logger
	now   func() time.Time
	cfg   Config
	m     *metrics
	lease *lease.Lease // owns sweeps and rollout advancement

	images *imageCache
	// wake asks Run to advance rollouts now rather than at the next
	// sweep: an update of a rollout ended, a rollout was created or resumed.
	wake chan struct{}

	randMu sync.Mutex // guards random
	random io.Reader

	run backend.RunGuard

	mu sync.Mutex           // guards fw
	fw map[string]*firmware // immutable once uploaded, so cached
}

// New checks cfg and builds a Service, registering its metrics.
func New(cfg Config) (*Service, error) {
	if cfg.Redis == nil || cfg.Fleet == nil {
		return nil, errors.New("new fota: Redis and Fleet are required")
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("new fota: an Ed25519 firmware-signing key is required")
	}
	cfg.Keys = cfg.Keys.OrDefault()
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = wire.DefaultChunkSize
	}
	if err := checkChunkSize(cfg.ChunkSize); err != nil {
		return nil, fmt.Errorf("new fota: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Random == nil {
		cfg.Random = rand.Reader
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.UpdateTimeout <= 0 {
		cfg.UpdateTimeout = DefaultUpdateTimeout
	}
	if cfg.ManifestResend <= 0 {
		cfg.ManifestResend = DefaultManifestResend
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.ChunkRate <= 0 {
		cfg.ChunkRate = DefaultChunkRate
	}
	if cfg.ChunkBurst <= 0 {
		cfg.ChunkBurst = DefaultChunkBurst
	}
	if cfg.ImageCacheBytes == 0 {
		cfg.ImageCacheBytes = DefaultImageCacheBytes
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new fota: %w", err)
	}
	s := &Service{
		rdb:    cfg.Redis,
		keys:   cfg.Keys,
		fleet:  cfg.Fleet,
		key:    cfg.Key,
		pub:    cfg.Key.Public().(ed25519.PublicKey),
		log:    cfg.Logger.With().Str("component", "fota").Logger(),
		now:    cfg.Now,
		cfg:    cfg,
		m:      m,
		random: cfg.Random,
		fw:     make(map[string]*firmware),
		images: newImageCache(max(cfg.ImageCacheBytes, 0)),
		wake:   make(chan struct{}, 1),
	}
	if cfg.Replica == "" {
		cfg.Replica = lease.ReplicaID(s.random)
	}
	s.lease, err = lease.New(lease.Config{
		Redis: cfg.Redis, Key: cfg.Keys.Global("lease:fota"), Replica: cfg.Replica, TTL: cfg.LeaseTTL,
		Random: s.random, Logger: s.log, // real time, not cfg.Now: the lease's expiry is Redis's
	})
	if err != nil {
		return nil, fmt.Errorf("new fota: %w", err)
	}
	return s, nil
}

// PublicKey returns the firmware-signing public key devices verify with.
func (s *Service) PublicKey() ed25519.PublicKey { return s.pub }

// Attach registers the device handlers: chunk requests, status reports and
// births (to resend the manifest of an interrupted update).
func (s *Service) Attach() {
	s.fleet.HandleChecked(topics.KindFOTARequest, s.handleRequestChecked)
	s.fleet.HandleChecked(topics.KindFOTAStatus, s.handleStatusChecked)
	s.fleet.Handle(topics.KindBirth, s.HandleBirth)
	s.fleet.HandleLifecycle(s.handleLifecycle)
}

// Run holds or waits for the lease (lease.Run) and, while holding it,
// sweeps device updates and advances rollouts at once and then every
// SweepInterval, until ctx is done. Between sweeps the holder also
// advances rollouts when woken by an event (an update of a rollout ended,
// a rollout was created or resumed), at most once per eventGap, so that a
// batch does not wait for the next sweep. It releases the lease on the
// way out. Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	if err := s.run.Start("fota run"); err != nil {
		return err
	}
	return lease.Run(ctx, s.lease, s.cfg.SweepInterval, s.whileHeld)
}

// whileHeld is Run's work under the lease; it returns when held ends.
func (s *Service) whileHeld(held context.Context) error {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		if err := errors.Join(s.sweepUpdates(held), s.advanceRollouts(held)); err != nil && held.Err() == nil {
			s.log.Error().Err(err).Msg("fota sweep")
		}
	events:
		for {
			select {
			case <-held.Done():
				return nil
			case <-t.C:
				break events
			case <-s.wake:
				if err := s.advanceRollouts(held); err != nil && held.Err() == nil {
					s.log.Error().Err(err).Msg("fota advance")
				}
				select { // coalesce a burst of events into one advance per gap
				case <-held.Done():
					return nil
				case <-time.After(eventGap):
				}
			}
		}
	}
}

// eventGap is the least time between two event-driven advances.
const eventGap = 100 * time.Millisecond

// poke asks Run to advance rollouts soon; it never blocks.
func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Tick takes or renews the lease and, when this replica holds it, sweeps
// active updates and advances every active rollout once. It reports
// whether the lease is held. It is one step of Run's work, for tests and
// tools that drive the service by hand; it does not keep the lease
// renewed (Run does, through lease.Run).
func (s *Service) Tick(ctx context.Context) (bool, error) {
	ok, err := s.lease.Acquire(ctx) // renews when already ours
	if err != nil || !ok {
		return false, err
	}
	return true, errors.Join(s.sweepUpdates(ctx), s.advanceRollouts(ctx))
}

func (s *Service) randomHex(n int) (string, error) {
	b := make([]byte, n)
	s.randMu.Lock()
	_, err := io.ReadFull(s.random, b)
	s.randMu.Unlock()
	if err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Results of ecowatt_fota_updates_total and ecowatt_rollouts_total.
const (
	ResultSucceeded  = "succeeded"
	ResultFailed     = "failed"
	ResultRolledBack = "rolled_back"
	ResultTimedOut   = "timed_out"
	ResultCompleted  = "completed"
	ResultAborted    = "aborted"
	// ResultCancelled ends a device's update when the device is
	// decommissioned (not counted in ecowatt_fota_updates_total).
	ResultCancelled = "cancelled"
)

// metrics are the service's Prometheus collectors.
type metrics struct {
	chunks   prometheus.Counter
	limited  prometheus.Counter
	updates  *prometheus.CounterVec
	rollouts *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		chunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_fota_chunks_sent_total",
			Help: "Firmware chunks sent to devices, each in answer to a request naming it.",
		}),
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_fota_requests_limited_total",
			Help: "fota_request messages answered with no chunk because the device's byte budget (ChunkRate, ChunkBurst) was spent.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_fota_updates_total",
			Help: "Device firmware updates ended, by result (succeeded, failed, rolled_back, timed_out).",
		}, []string{"result"}),
		rollouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_rollouts_total",
			Help: "Rollouts ended, by result (completed, aborted).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.chunks, m.limited, m.updates, m.rollouts} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{ResultSucceeded, ResultFailed, ResultRolledBack, ResultTimedOut} {
		m.updates.WithLabelValues(r)
	}
	for _, r := range []string{ResultCompleted, ResultAborted} {
		m.rollouts.WithLabelValues(r)
	}
	return m, nil
}
