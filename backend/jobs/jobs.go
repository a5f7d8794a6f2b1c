// Package jobs is the fleet job engine: one operation (a config change, a
// command or a firmware update) applied to the devices a selector or a
// list names, paced, canary first, with an abort rule, pausable and
// cancellable, surviving restarts.
//
// A job does not deliver anything itself. Each device's part is issued
// through the service that owns that action (backend/config Set,
// backend/commands Submit, backend/fota StartUpdate, backend
// StartRotation) and its outcome is read back from that service (config
// ack, command result, FOTA status, rotation state).
// Issuing is idempotent per job and device: the part is tagged with the
// job (config "by job:JID", command request_id "job-JID", FOTA rollout
// "job:JID", key rotation "by job:JID"), and before issuing the engine asks the service whether
// that tag is already there, so a part issued just before a crash is
// adopted, never issued again.
//
// Job states: scheduled -> running <-> paused -> completed | aborted |
// cancelled | expired. Device states: queued -> in_progress -> succeeded
// | failed; queued -> skipped (another job of the same kind holds the
// device, the device refused it, or it is disabled or decommissioned at
// its turn: reason "disabled" / "decommissioned") | not_run (the job
// ended first);
// in_progress -> abandoned (the job ended before the outcome was known).
//
// Only online devices are issued a part; an offline one stays queued and
// gets its part when it is back, until the job expires. A device is in at
// most one in-flight part per action kind: a part holds
// <prefix>{dev:ID}:jobpart:KIND while in flight, and a second job meeting
// the hold skips the device with a reason (docs/DECISIONS.md says why).
//
// Redis layout:
//
//	<prefix>{job:JID}:job     hash    spec (JSON), state, reason, timestamps, next_at, n_<state> counters
//	<prefix>{job:JID}:devs    hash    device -> state
//	<prefix>{job:JID}:why     hash    device -> reason of its state
//	<prefix>{job:JID}:at      hash    device -> when its part was issued (unix ms)
//	<prefix>{job:JID}:ref     hash    device -> the part's handle (config version, command ID, firmware version)
//	<prefix>{job:JID}:queue   zset    queued devices, score = order of joining
//	<prefix>{job:JID}:flight  set     devices whose part is in progress
//	<prefix>{dev:ID}:jobpart:KIND string the job whose part of KIND the device is in
//	<prefix>jobs              zset    job IDs, score = creation (unix ms)
//	<prefix>jobs:active       zset    jobs not final yet
//	<prefix>lease:jobs        string  holder of the engine lease (backend/lease)
//
// Every device transition is one Lua script on the job's slot that checks
// the current state and moves the counters with it, so counts never drift
// from the per-device states, also when two engines overlap.
package jobs

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Job states.
const (
	StateScheduled = "scheduled"
	StateRunning   = "running"
	StatePaused    = "paused"
	StateCompleted = "completed"
	StateAborted   = "aborted"
	StateCancelled = "cancelled"
	StateExpired   = "expired"
)

// JobFinal reports whether a job state is final.
func JobFinal(s string) bool {
	switch s {
	case StateCompleted, StateAborted, StateCancelled, StateExpired:
		return true
	}
	return false
}

// Device states within a job.
const (
	DevQueued     = "queued"
	DevInProgress = "in_progress"
	DevSucceeded  = "succeeded"
	DevFailed     = "failed"
	DevSkipped    = "skipped"
	DevNotRun     = "not_run"
	DevAbandoned  = "abandoned"
)

// DeviceStates lists every device state, in lifecycle order.
var DeviceStates = []string{DevQueued, DevInProgress, DevSucceeded, DevFailed, DevSkipped, DevNotRun, DevAbandoned}

// Action kinds.
const (
	KindConfig   = "config"
	KindCommand  = "command"
	KindFirmware = "firmware"
	// KindRotateKey parts are PSK rotations (backend StartRotation);
	// only an admin may create such a job (the HTTP API checks).
	KindRotateKey = "rotate_key"
)

// Defaults and limits.
const (
	DefaultTick      = time.Second
	DefaultExpiry    = 7 * 24 * time.Hour
	DefaultLeaseTTL  = 10 * time.Second
	MaxPerMinute     = 100_000
	MaxBatchSize     = 10_000
	MaxDevicesListed = 10_000
	DefaultPageSize  = 100
	MaxPageSize      = 1000
)

// Fleet is what the engine needs from the backend; *backend.Service has it.
type Fleet interface {
	Device(ctx context.Context, id string) (backend.Device, error)
	QueryDevices(ctx context.Context, q backend.FleetQuery) (backend.FleetPage, error)
}

// Configs issues and observes config parts; *config.Service has it.
type Configs interface {
	Set(ctx context.Context, dev string, patch []byte, who config.Who) (config.Result, error)
	Get(ctx context.Context, dev string) (config.State, error)
}

// Bus publishes job progress events.
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte) error
}

var (
	_ Fleet     = (*backend.Service)(nil)
	_ Configs   = (*config.Service)(nil)
	_ Rotations = (*backend.Service)(nil)
)

// Rotations issues and observes key rotation parts; *backend.Service has
// it.
type Rotations interface {
	StartRotation(ctx context.Context, id, by string) (backend.Rotation, error)
	Rotation(ctx context.Context, id string) (backend.Rotation, error)
}

// Config holds a Service's dependencies. Redis and Fleet are required;
// a nil Configs, Commands or FOTA refuses jobs of that kind.
type Config struct {
	Redis    redis.UniversalClient
	Keys     store.Keys
	Fleet    Fleet
	Configs  Configs
	Commands Commands
	FOTA     FOTA
	// Rotations issues and observes key rotation parts; nil refuses
	// rotate_key jobs.
	Rotations Rotations
	Bus       Bus // nil: no MQTT progress events
	Logger    zerolog.Logger
	Now       func() time.Time // the job clock (pacing, expiry); default time.Now
	Random    io.Reader        // job IDs; default crypto/rand.Reader
	// Tick is how often the lease holder advances the jobs.
	Tick       time.Duration
	Replica    string        // default lease.ReplicaID()
	LeaseTTL   time.Duration // default DefaultLeaseTTL
	Registerer prometheus.Registerer
}

// Service is the job engine. Create it with New and run it with Run.
type Service struct {
	cfg  Config
	rdb  redis.UniversalClient
	keys store.Keys
	log  zerolog.Logger
	now  func() time.Time
	m    metrics

	idMu   sync.Mutex // guards random (ulid entropy)
	random io.Reader

	lease *lease.Lease
}

type metrics struct {
	parts *prometheus.CounterVec // by kind and outcome
	jobs  *prometheus.CounterVec // jobs entering a final state, by state
}

// New checks cfg and builds a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Redis == nil || cfg.Fleet == nil {
		return nil, errors.New("new jobs: Redis and Fleet are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Random == nil {
		cfg.Random = rand.Reader
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Replica == "" {
		cfg.Replica = lease.ReplicaID(cfg.Random)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Keys == (store.Keys{}) {
		cfg.Keys, _ = store.NewKeys(store.DefaultPrefix)
	}
	s := &Service{cfg: cfg, rdb: cfg.Redis, keys: cfg.Keys, log: cfg.Logger.With().Str("component", "jobs").Logger(),
		now: cfg.Now, random: cfg.Random}
	s.m.parts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecowatt_job_parts_total",
		Help: "Per-device job parts by action kind and outcome (issued, succeeded, failed, skipped)."}, []string{"kind", "outcome"})
	s.m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ecowatt_jobs_finished_total",
		Help: "Jobs that reached a final state, by state."}, []string{"state"})
	for _, c := range []prometheus.Collector{s.m.parts, s.m.jobs} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, err
		}
	}
	l, err := lease.New(lease.Config{Redis: cfg.Redis, Key: cfg.Keys.Global("lease:jobs"), Replica: cfg.Replica,
		TTL: cfg.LeaseTTL, Logger: s.log})
	if err != nil {
		return nil, err
	}
	s.lease = l
	return s, nil
}

// Run advances the jobs while this replica holds the engine lease, until
// ctx ends.
func (s *Service) Run(ctx context.Context) error {
	return lease.Run(ctx, s.lease, s.cfg.Tick, func(held context.Context) error {
		_, err := s.Tick(held)
		return err
	})
}

// topic is where progress events of job jid are published.
func topic(jid string) string { return topics.Root + "/" + topics.ClassEvents + "/jobs/" + jid }

// Topic is the MQTT topic of job jid's progress events.
func Topic(jid string) string { return topic(jid) }
