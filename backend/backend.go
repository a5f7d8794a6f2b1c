// Package backend is EcoWatt's domain service: the device registry and key
// lookup, operator accounts, the authenticated uplink pipeline (envelope,
// Redis-backed anti-replay, dispatch by kind), presence, audit events and
// signed downlink. State lives in Redis (see store.Keys for the layout), so
// any number of Service replicas can serve one fleet. It reaches the MQTT
// broker only through the Bus interface.
//
// Wiring order (cmd/ecowatt serve): Accounts (device keys and operators,
// what the broker needs) first, the broker on them, the Service on the
// broker as its Bus with the same Accounts, then the Service as the
// broker's presence and rejection observer (broker.Server.Observe), then
// the services below, then the listeners. docs/ARCHITECTURE.md walks it.
//
// The services built on it (backend/config, backend/commands,
// backend/fota) share one shape: New(Config) checks the config and
// registers metrics, Attach registers the uplink and ops handlers on the
// Fleet, Run(ctx) runs the work that needs a lease (backend/lease.Run)
// until ctx is done, once (RunGuard). Their Config names the dependencies
// alike: Redis, Keys (the *Service's Keys; the zero Keys mean
// store.DefaultPrefix), Fleet (what the service needs of *Service,
// declared in its package), Registerer, Logger, Now, Replica.
//
// Naming: Config is always a component's options (backend.Config,
// broker.Config, config.Config, fota.Config, ...), so config.Config is the
// options of the configuration service and nothing else. The device
// configuration that service manages is named by its parts, never
// "Config": config.State (Desired, Reported, LastAck, Delivery), Entry
// (history), Result (of a change), Who (by whom, via which channel).
package backend

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Message is one MQTT message delivered by the Bus. It is the broker's
// message type, so that broker.Server and mqttbus.Bus are Buses as they are.
type Message = topics.Message

// Bus is the backend's view of the MQTT broker: the embedded mochi server or
// an external broker's client.
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte) error
	// Subscribe calls h for every message matching filter. h may run in
	// the publisher's goroutine; the Service hands off at once.
	Subscribe(filter string, h func(Message)) error
}

// Config holds a Service's dependencies. Bus is required, and either
// Accounts or Redis and Vault (from which New builds the Accounts).
type Config struct {
	// Accounts are the device keys and operator accounts, built before
	// the broker (see Accounts); the Service uses their Redis, prefix and
	// vault. Without them, New builds them from Redis, Prefix, Vault,
	// KeyCacheSize, KeyCacheTTL and BcryptCost (which must then be unset
	// when Accounts is set).
	Accounts   *Accounts
	Redis      redis.UniversalClient
	Prefix     string // key prefix; default store.DefaultPrefix
	Vault      *keyvault.Vault
	Bus        Bus
	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now
	Random     io.Reader             // default crypto/rand.Reader
	Registerer prometheus.Registerer // default: a private registry

	Workers         int // uplink worker shards; default 16×GOMAXPROCS (they mostly wait on Redis)
	QueueSize       int // per-shard queue; default 256
	KeyCacheSize    int // see AccountsConfig
	KeyCacheTTL     time.Duration
	BcryptCost      int           // see AccountsConfig
	AuditMaxLen     int64         // approximate cap of each device's audit stream; default 1000
	SecurityMaxLen  int64         // approximate cap of the fleet-wide security stream; default 10000
	EncryptDownlink bool          // seal downlink bodies with AES-256-GCM as well as the MAC
	MessageTimeout  time.Duration // per attempt

	// Presence reconciliation (reconcile.go). Replica is this replica's
	// identity, recorded in the hash of each device it holds (default: a
	// random one); Connections, when set (the embedded broker), answers
	// which device connections this replica holds.
	Replica        string
	Connections    Connections
	PresenceSweep  time.Duration // sweep period; default 10 s
	PresenceExpiry time.Duration // last_seen bound for devices no replica holds; default DefaultPresenceExpiry
	PresenceBatch  int           // online devices checked per sweep; default 5000

	// Takeover, when set, is called when a device connects here while its
	// previous connection, still open, was recorded by another replica
	// (replica mode: backend/route asks that replica to close it). It
	// runs in the broker's CONNECT path and must not block.
	Takeover func(dev, replica string, gen uint64)

	// An uplink that fails on a store error is retried for RetryFor
	// (default 2 min); each worker holds at most RetryQueue such messages
	// (default 1024) and RetryBytes of payload (default 8 MiB) before it
	// stops reading its queue (retry.go).
	RetryFor   time.Duration
	RetryQueue int
	RetryBytes int

	// Key rotation (rotation.go): how long a new key stays pending
	// (default DefaultKeyOverlap) and how often rotate_key is sent again
	// while it is (default DefaultKeyResend).
	KeyOverlap time.Duration
	KeyResend  time.Duration
}

// Service is the backend. Create it with New and start it with Run.
type Service struct {
	*Accounts // device keys and operators: DeviceKeys, EnsureOperator, ...

	rdb    redis.UniversalClient
	keys   store.Keys
	vault  *keyvault.Vault
	bus    Bus
	log    zerolog.Logger
	now    func() time.Time
	random io.Reader // safe for concurrent use
	cfg    Config
	m      *metrics
	hub    *hub
	shards []chan job

	brokerSamples *sampler // which broker rejections become events

	stopped chan struct{} // closed when Run returns; enqueue stops blocking
	tracked atomic.Bool   // the broker reports connections: presence follows generations (presence.go)
	pres    presence      // reconciliation state (reconcile.go)

	run RunGuard

	mu        sync.RWMutex // guards uplink, checked, ops and lifecycle
	uplink    map[string][]UplinkHandler
	checked   map[string]bool // kinds whose first handler checks the nonce (HandleChecked)
	ops       map[string]OpsHandler
	lifecycle []LifecycleHandler
}

// job is one message waiting for a worker. Oversized payloads are not
// copied; size records how big they were. The other fields carry a
// message that failed on the store to its next attempt (retry.go).
type job struct {
	msg  Message
	size int

	since   time.Time        // first failed attempt; zero if never tried
	lastErr error            // the store error of the last attempt
	opened  bool             // MAC verified and nonce accepted: only handlers remain
	env     envelope.Message // the opened message, when opened
	next    int              // index of the first handler still to run
}

// New checks cfg and builds a Service. It registers its metrics with
// cfg.Registerer.
func New(cfg Config) (*Service, error) {
	if cfg.Bus == nil {
		return nil, errors.New("new backend: Bus is required")
	}
	if cfg.Accounts == nil && (cfg.Redis == nil || cfg.Vault == nil) {
		return nil, errors.New("new backend: Accounts, or Redis and Vault, are required")
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
	acc, err := accountsOf(cfg)
	if err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16 * runtime.GOMAXPROCS(0)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	if cfg.AuditMaxLen <= 0 {
		cfg.AuditMaxLen = 1000
	}
	if cfg.SecurityMaxLen <= 0 {
		cfg.SecurityMaxLen = 10000
	}
	if cfg.MessageTimeout <= 0 {
		cfg.MessageTimeout = 10 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 2 * time.Minute
	}
	if cfg.RetryQueue <= 0 {
		cfg.RetryQueue = 1024
	}
	if cfg.RetryBytes <= 0 {
		cfg.RetryBytes = 8 << 20
	}
	if cfg.KeyOverlap <= 0 {
		cfg.KeyOverlap = DefaultKeyOverlap
	}
	if cfg.KeyResend <= 0 {
		cfg.KeyResend = DefaultKeyResend
	}
	if err := presenceDefaults(&cfg); err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
	}
	s := &Service{
		Accounts: acc,

		rdb:    acc.rdb,
		keys:   acc.keys,
		vault:  acc.vault,
		bus:    cfg.Bus,
		log:    cfg.Logger.With().Str("component", "backend").Logger(),
		now:    cfg.Now,
		random: &lockedReader{r: cfg.Random},
		cfg:    cfg,
		hub:    newHub(),

		brokerSamples: newSampler(brokerSampleEvery, brokerSamplesPerWindow, brokerSampleNames),
		stopped:       make(chan struct{}),
		uplink:        make(map[string][]UplinkHandler),
		ops:           make(map[string]OpsHandler),
	}
	if s.m, err = newMetrics(cfg.Registerer, s.onlineCount); err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
	}
	if s.pres.m, err = newPresenceMetrics(cfg.Registerer, s.pres.queued); err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
	}
	s.shards = make([]chan job, cfg.Workers)
	for i := range s.shards {
		s.shards[i] = make(chan job, cfg.QueueSize)
	}
	s.Handle(topics.KindBirth, s.handleBirth)
	s.Handle(topics.KindBirth, s.rotationOnBirth)
	s.Handle(topics.KindKeyAck, s.handleKeyAck)
	return s, nil
}

// Keys returns the Redis key builder, for packages that add per-device state.
func (s *Service) Keys() store.Keys { return s.keys }

// Redis returns the Redis client.
func (s *Service) Redis() redis.UniversalClient { return s.rdb }

// Ping checks that Redis answers.
func (s *Service) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return &Error{Code: CodeUnavailable, Message: "redis unreachable", Err: fmt.Errorf("ping redis: %w", err)}
	}
	return nil
}

// Run subscribes to device uplinks and operator topics and processes them
// until ctx is done. It returns after every goroutine it started has
// exited. Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	if err := s.run.Start("backend run"); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(s.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	for _, q := range s.shards {
		wg.Go(func() { s.worker(ctx, q) })
	}
	wg.Go(func() { s.reconcileLoop(ctx) })
	wg.Go(func() { s.rotationLoop(ctx) })
	for _, f := range []string{topics.FilterAllUp, topics.FilterAllOps} {
		if err := s.bus.Subscribe(f, s.enqueue); err != nil {
			return fmt.Errorf("backend run: subscribe %s: %w", f, err)
		}
	}
	s.log.Info().Int("workers", len(s.shards)).Msg("backend running")
	<-ctx.Done()
	return nil
}

// enqueue hands m to the worker owning its device, so that one device's
// messages are processed in order. It blocks while that queue is full
// (backpressure) and drops only once Run has ended.
func (s *Service) enqueue(m Message) {
	j := job{msg: Message{Topic: m.Topic, Username: m.Username}, size: len(m.Payload)}
	if len(m.Payload) <= envelope.MaxSize {
		j.msg.Payload = append([]byte(nil), m.Payload...)
	}
	q := s.shards[shardOf(m.Topic, len(s.shards))]
	select {
	case q <- j:
	case <-s.stopped:
		s.dropUplink(j, DropShutdown, nil)
	}
}

// shardOf hashes the device ID (the fourth topic level).
func shardOf(topic string, n int) int {
	parts := strings.SplitN(topic, "/", 5)
	key := topic
	if len(parts) >= 4 {
		key = parts[3]
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// process handles j once. It reports true when j failed on the store and
// should be tried again (its fields then say where to resume).
func (s *Service) process(ctx context.Context, j *job) (retry bool) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.MessageTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error().Str("topic", j.msg.Topic).Interface("panic", p).Msg("message handler panicked")
		}
	}()
	t, err := topics.Parse(j.msg.Topic)
	if err != nil {
		s.SecurityEvent(ctx, deviceOf(j.msg.Topic), ReasonBadTopic, err.Error())
		return false
	}
	switch {
	case t.Class == topics.ClassDevice && t.Dir == topics.Up:
		return s.processUplink(ctx, t, j)
	case t.Class == topics.ClassOps:
		s.processOps(ctx, t, *j)
	default:
		s.SecurityEvent(ctx, t.Device, ReasonBadTopic, "not an uplink or operator topic: "+j.msg.Topic)
	}
	return false
}

// deviceOf returns the device level of a topic when it is a valid ID.
func deviceOf(topic string) string {
	parts := strings.SplitN(topic, "/", 5)
	if len(parts) >= 4 && topics.ValidateID(parts[3]) == nil {
		return parts[3]
	}
	return ""
}

// lockedReader makes an io.Reader safe for concurrent use.
type lockedReader struct {
	mu sync.Mutex // guards r
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}
