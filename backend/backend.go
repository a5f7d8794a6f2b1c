// Package backend is EcoWatt's domain service: the device registry and key
// lookup, operator accounts, the authenticated uplink pipeline (envelope,
// Redis-backed anti-replay, dispatch by kind), presence, audit events and
// signed downlink. State lives in Redis (see store.Keys for the layout), so
// any number of Service replicas can serve one fleet. It reaches the MQTT
// broker only through the Bus interface.
//
// The services built on it (backend/config, backend/commands,
// backend/fota) share one shape: New(Config) checks the config and
// registers metrics, Attach registers the uplink and ops handlers on the
// Fleet, Run(ctx) runs the work that needs a lease (backend/lease.Run)
// until ctx is done. Their Config names the dependencies alike: Redis,
// Keys (the *Service's Keys), Fleet (what the service needs of *Service,
// declared in its package), Registerer, Logger, Now, Replica.
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
	"golang.org/x/crypto/bcrypt"
)

// Message is one MQTT message delivered by the Bus. Username is the
// publishing client's account, empty when unknown.
type Message struct {
	Topic    string
	Payload  []byte
	Username string
}

// Bus is the backend's view of the MQTT broker: the embedded mochi server or
// an external broker's client.
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte) error
	// Subscribe calls h for every message matching filter. h may run in
	// the publisher's goroutine; the Service hands off at once.
	Subscribe(filter string, h func(Message)) error
}

// Config holds a Service's dependencies. Redis, Vault and Bus are required.
type Config struct {
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
	KeyCacheSize    int // derived keys kept in memory; default 65536
	KeyCacheTTL     time.Duration
	BcryptCost      int   // default bcrypt.DefaultCost
	AuditMaxLen     int64 // approximate cap of each device's audit stream; default 1000
	SecurityMaxLen  int64 // approximate cap of the fleet-wide security stream; default 10000
	EncryptDownlink bool  // seal downlink bodies with AES-256-GCM as well as the MAC
	MessageTimeout  time.Duration
}

// Service is the backend. Create it with New and start it with Run.
type Service struct {
	rdb    redis.UniversalClient
	keys   store.Keys
	vault  *keyvault.Vault
	bus    Bus
	log    zerolog.Logger
	now    func() time.Time
	random io.Reader // safe for concurrent use
	cfg    Config
	m      *metrics
	cache  *keyCache
	hub    *hub
	shards []chan job

	verified verifiedPasswords

	brokerSamples *sampler // which broker rejections become events

	stopped chan struct{} // closed when Run returns; enqueue stops blocking
	tracked atomic.Bool   // the broker reports connections: presence follows generations (presence.go)

	mu        sync.RWMutex // guards uplink, ops, lifecycle and running
	uplink    map[string][]UplinkHandler
	ops       map[string]OpsHandler
	lifecycle []LifecycleHandler
	running   bool
}

// job is one message waiting for a worker. Oversized payloads are not
// copied; size records how big they were.
type job struct {
	msg  Message
	size int
}

// New checks cfg and builds a Service. It registers its metrics with
// cfg.Registerer.
func New(cfg Config) (*Service, error) {
	if cfg.Redis == nil || cfg.Vault == nil || cfg.Bus == nil {
		return nil, errors.New("new backend: Redis, Vault and Bus are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = store.DefaultPrefix
	}
	keys, err := store.NewKeys(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
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
	if cfg.Workers <= 0 {
		cfg.Workers = 16 * runtime.GOMAXPROCS(0)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	if cfg.KeyCacheSize <= 0 {
		cfg.KeyCacheSize = 65536
	}
	if cfg.KeyCacheTTL <= 0 {
		cfg.KeyCacheTTL = 5 * time.Minute
	}
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
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
	s := &Service{
		rdb:    cfg.Redis,
		keys:   keys,
		vault:  cfg.Vault,
		bus:    cfg.Bus,
		log:    cfg.Logger.With().Str("component", "backend").Logger(),
		now:    cfg.Now,
		random: &lockedReader{r: cfg.Random},
		cfg:    cfg,
		cache:  newKeyCache(cfg.KeyCacheSize, cfg.KeyCacheTTL),
		hub:    newHub(),

		brokerSamples: newSampler(brokerSampleEvery, brokerSamplesPerWindow, brokerSampleNames),
		stopped:       make(chan struct{}),
		uplink:        make(map[string][]UplinkHandler),
		ops:           make(map[string]OpsHandler),
	}
	if s.m, err = newMetrics(cfg.Registerer, s.onlineCount); err != nil {
		return nil, fmt.Errorf("new backend: %w", err)
	}
	s.shards = make([]chan job, cfg.Workers)
	for i := range s.shards {
		s.shards[i] = make(chan job, cfg.QueueSize)
	}
	s.Handle(topics.KindBirth, s.handleBirth)
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
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("backend run: already running")
	}
	s.running = true
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(s.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	for _, q := range s.shards {
		wg.Go(func() { s.worker(ctx, q) })
	}
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

func (s *Service) worker(ctx context.Context, q <-chan job) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-q:
			s.process(ctx, j)
		}
	}
}

func (s *Service) process(ctx context.Context, j job) {
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
		return
	}
	switch {
	case t.Class == topics.ClassDevice && t.Dir == topics.Up:
		s.processUplink(ctx, t, j)
	case t.Class == topics.ClassOps:
		s.processOps(ctx, t, j)
	default:
		s.SecurityEvent(ctx, t.Device, ReasonBadTopic, "not an uplink or operator topic: "+j.msg.Topic)
	}
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
