// Package lease gives work that must run in one backend replica at a time
// (sweeps, rollout batch advancement) an owner, through a Redis lease that
// expires when its holder dies.
//
// A lease is one Redis string key whose value is the holder's token
// (replica ID plus a random suffix) and whose PX expiry is the lease's
// lifetime. Acquire is SET NX PX; Renew and Release are compare-and-set
// Lua scripts, so a replica never extends or deletes a lease another one
// took after its own expired. The key is a single key, so it lives in one
// Redis Cluster slot by construction.
//
// A lease is mutual exclusion only as long as the holder's pauses stay
// shorter than its TTL; work done under it must stay idempotent (the
// device dedupes, and Redis state transitions are check-and-set), so that
// the rare overlap after a long pause does no harm.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// ErrHeld is returned by Hold when another owner holds the lease.
var ErrHeld = errors.New("lease held by another owner")

// Config configures a Lease. Redis, Key and Replica are required.
type Config struct {
	Redis   redis.UniversalClient
	Key     string        // the full Redis key, e.g. store.Keys.Global("lease:config-sweep")
	Replica string        // this replica's identity (see ReplicaID)
	TTL     time.Duration // lifetime without renewal; default DefaultTTL
	Random  io.Reader     // token suffix; default crypto/rand.Reader
	Now     func() time.Time
	Logger  zerolog.Logger
}

// DefaultTTL is a lease's lifetime when Config.TTL is zero.
const DefaultTTL = 15 * time.Second

// Lease is one named lease as seen by one owner. Its methods are safe for
// concurrent use.
type Lease struct {
	rdb   redis.UniversalClient
	key   string
	token string
	ttl   time.Duration
	now   func() time.Time
	log   zerolog.Logger
}

// New builds a Lease; it touches no Redis state.
func New(cfg Config) (*Lease, error) {
	if cfg.Redis == nil || cfg.Key == "" || cfg.Replica == "" {
		return nil, errors.New("new lease: Redis, Key and Replica are required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 10*time.Millisecond {
		return nil, fmt.Errorf("new lease %s: ttl %s too short", cfg.Key, cfg.TTL)
	}
	if cfg.Random == nil {
		cfg.Random = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := make([]byte, 8)
	if _, err := io.ReadFull(cfg.Random, b); err != nil {
		return nil, fmt.Errorf("new lease %s: token: %w", cfg.Key, err)
	}
	return &Lease{
		rdb:   cfg.Redis,
		key:   cfg.Key,
		token: cfg.Replica + "/" + hex.EncodeToString(b),
		ttl:   cfg.TTL,
		now:   cfg.Now,
		log:   cfg.Logger.With().Str("lease", cfg.Key).Logger(),
	}, nil
}

// Token is this owner's token, the key's value while it holds the lease.
func (l *Lease) Token() string { return l.token }

// TTL is the lease's lifetime.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Acquire takes the lease when it is free (SET NX PX). It reports false
// when another owner holds it. Acquiring a lease this owner already holds
// renews it.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	ok, err := l.rdb.SetNX(ctx, l.key, l.token, l.ttl).Result()
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", l.key, err)
	}
	if ok {
		return true, nil
	}
	return l.Renew(ctx)
}

// renewScript extends the lease only while it is ours.
// KEYS: lease. ARGV: token, ttl ms.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lease only while it is ours. KEYS: lease. ARGV: token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Renew extends the lease by its TTL. It reports false when the lease is
// no longer this owner's (it expired, and perhaps another owner took it).
func (l *Lease) Renew(ctx context.Context) (bool, error) {
	n, err := renewScript.Run(ctx, l.rdb, []string{l.key}, l.token, l.ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("renew lease %s: %w", l.key, err)
	}
	return n == 1, nil
}

// Release gives the lease up when this owner holds it, and reports whether
// it did. Releasing a lease someone else holds changes nothing.
func (l *Lease) Release(ctx context.Context) (bool, error) {
	n, err := releaseScript.Run(ctx, l.rdb, []string{l.key}, l.token).Int()
	if err != nil {
		return false, fmt.Errorf("release lease %s: %w", l.key, err)
	}
	return n == 1, nil
}

// Holder returns the current holder's token, "" when the lease is free.
func (l *Lease) Holder(ctx context.Context) (string, error) {
	v, err := l.rdb.Get(ctx, l.key).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("lease %s holder: %w", l.key, err)
	}
	return v, nil
}

// ReplicaOf returns the replica part of a holder token.
func ReplicaOf(token string) string {
	if i := strings.LastIndexByte(token, '/'); i >= 0 {
		return token[:i]
	}
	return token
}

// Hold acquires the lease and keeps it renewed, every TTL/3, in a goroutine
// that lives until release is called or the lease is lost. The returned
// context is cancelled when the lease is lost (another owner has it, or
// renewals failed until the lease may have expired), when ctx ends, or at
// release; work done under the lease should run under it. release stops the
// renewals, waits for the goroutine, and deletes the lease if still ours;
// it is safe to call more than once. Hold returns ErrHeld when another
// owner holds the lease.
func (l *Lease) Hold(ctx context.Context) (held context.Context, release func(), err error) {
	start := l.now()
	ok, err := l.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, fmt.Errorf("hold lease %s: %w", l.key, ErrHeld)
	}
	held, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.keep(held, cancel, start)
	}()
	var once sync.Once
	release = func() {
		once.Do(func() {
			cancel()
			<-done
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer rcancel()
			if _, err := l.Release(rctx); err != nil {
				l.log.Warn().Err(err).Msg("release lease")
			}
		})
	}
	return held, release, nil
}

// keep renews until ctx ends or the lease is lost; then it cancels.
// Validity is measured from before the last successful renewal was sent,
// so the holder gives up before Redis could have expired the key.
func (l *Lease) keep(ctx context.Context, cancel context.CancelFunc, validFrom time.Time) {
	defer cancel()
	every := l.ttl / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := l.now()
		rctx, rcancel := context.WithTimeout(ctx, every)
		ok, err := l.Renew(rctx)
		rcancel()
		switch {
		case err == nil && !ok:
			l.log.Warn().Msg("lease lost to another owner")
			return
		case err == nil:
			validFrom = sent
		case ctx.Err() != nil:
			return
		default:
			l.log.Warn().Err(err).Msg("renew lease")
		}
		left := validFrom.Add(l.ttl).Sub(l.now())
		if left <= every/2 {
			l.log.Warn().Dur("ttl", l.ttl).Msg("lease may have expired: renewals failed; giving it up")
			return
		}
		t.Reset(min(every, left-every/2))
	}
}

// Do runs fn under the lease when it can be taken, releasing it after, and
// reports whether fn ran. fn's context ends if the lease is lost. A sweep
// that must run once per interval across replicas calls Do each tick.
func (l *Lease) Do(ctx context.Context, fn func(context.Context) error) (bool, error) {
	held, release, err := l.Hold(ctx)
	if errors.Is(err, ErrHeld) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer release()
	return true, fn(held)
}

// ReplicaID returns a default identity for this process: the host name and
// a short random suffix, e.g. "web-3-5f2a9c". Use a stable, meaningful one
// (--replica-id, e.g. the pod name) in production.
func ReplicaID(random io.Reader) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "ecowatt"
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(random, b); err != nil {
		return host
	}
	return host + "-" + hex.EncodeToString(b)
}
