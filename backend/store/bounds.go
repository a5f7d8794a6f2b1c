package store

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Bounds on one Redis call while Redis is down, so that an API request
// answers 503 within about a second instead of hanging (go-redis's
// defaults, 5 s dial, 5 dial attempts 100 ms apart and 3 retries, held the
// first requests of an outage ~7 s). A URL option of the same name
// (dial_timeout=..., read_timeout=..., write_timeout=..., pool_timeout=...,
// max_retries=..., max_retry_backoff=...) overrides each.
const (
	DefaultDialTimeout = 500 * time.Millisecond
	DefaultIOTimeout   = time.Second // read and write
	DefaultPoolTimeout = time.Second
	DefaultMaxRetries  = 1
	defaultRetryMax    = 100 * time.Millisecond
)

// opts are the fields bound sets, common to go-redis's three option types.
type opts struct {
	dial, read, write, pool, retryMax *time.Duration
	retries, dialerRetries            *int
	dialerRetryTimeout                *time.Duration
}

// bound applies the defaults above to the fields whose option rawURL does
// not set.
func bound(rawURL string, o opts) {
	q := url.Values{}
	if _, query, ok := strings.Cut(rawURL, "?"); ok {
		q, _ = url.ParseQuery(query)
	}
	setDur := func(name string, p *time.Duration, v time.Duration) {
		if !q.Has(name) {
			*p = v
		}
	}
	setDur("dial_timeout", o.dial, DefaultDialTimeout)
	setDur("read_timeout", o.read, DefaultIOTimeout)
	setDur("write_timeout", o.write, DefaultIOTimeout)
	setDur("pool_timeout", o.pool, DefaultPoolTimeout)
	setDur("max_retry_backoff", o.retryMax, defaultRetryMax)
	if !q.Has("max_retries") {
		*o.retries = DefaultMaxRetries
	}
	if !q.Has("dialer_retries") {
		*o.dialerRetries = 1 // one dial per attempt; the command retry dials again
	}
	setDur("dialer_retry_timeout", o.dialerRetryTimeout, 50*time.Millisecond)
}

func boundClient(rawURL string, o *redis.Options) *redis.Options {
	bound(rawURL, opts{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetryBackoff,
		&o.MaxRetries, &o.DialerRetries, &o.DialerRetryTimeout})
	return o
}

func boundCluster(rawURL string, o *redis.ClusterOptions) *redis.ClusterOptions {
	bound(rawURL, opts{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetryBackoff,
		&o.MaxRetries, &o.DialerRetries, &o.DialerRetryTimeout})
	return o
}

func boundFailover(rawURL string, o *redis.FailoverOptions) *redis.FailoverOptions {
	bound(rawURL, opts{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetryBackoff,
		&o.MaxRetries, &o.DialerRetries, &o.DialerRetryTimeout})
	return o
}

// redisLogger routes go-redis's own messages (dial failures, bad pub/sub
// connections), which it otherwise prints as plain text on stderr, into
// zerolog. They repeat for every failed dial during an outage, so they are
// sampled: a burst of 5 a second.
type redisLogger struct{ log zerolog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn().Msg(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

// SetLogger sends go-redis's messages to log with component "redis".
// go-redis has one process-wide logger, so the last call wins.
func SetLogger(log zerolog.Logger) {
	redis.SetLogger(redisLogger{log: log.With().Str("component", "redis").Logger().
		Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second})})
}
