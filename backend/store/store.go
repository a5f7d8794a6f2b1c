// Package store opens EcoWatt's Redis connection from a URL (standalone,
// TLS, Cluster, Sentinel, or an in-process miniredis for zero-setup runs) and
// names every key the backend uses, so that the key layout lives in one place.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Closer releases what Open started. It is safe to call more than once.
type Closer func() error

// Open connects to Redis at rawURL and checks the connection with PING.
//
// Accepted forms:
//
//	redis://[user:pass@]host:port[/db][?opts]       standalone
//	rediss://...                                    standalone over TLS
//	redis+cluster://[user:pass@]h1:p1,h2:p2[?opts]  Redis Cluster (rediss+cluster for TLS)
//	redis+sentinel://[user:pass@]master@h1:p1,h2:p2[/db][?opts]
//	                                                Sentinel; userinfo authenticates to the
//	                                                sentinels, ?password= to the master
//	                                                (rediss+sentinel for TLS)
//	h1:p1,h2:p2                                     Redis Cluster
//	host:port                                       standalone
//	""                                              in-process miniredis, NOT durable
//
// The query options are go-redis's (dial_timeout, pool_size, ...); the
// timeouts default to the bounds in bounds.go. Open also routes go-redis's
// own log lines into log (SetLogger).
func Open(ctx context.Context, rawURL string, log zerolog.Logger) (redis.UniversalClient, Closer, error) {
	SetLogger(log)
	if rawURL == "" {
		return openMemory(ctx, log)
	}
	c, err := newClient(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("open redis: %w", err)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("open redis: ping %s: %w", redact(rawURL), err)
	}
	log.Info().Str("redis", redact(rawURL)).Msg("connected to redis")
	var once sync.Once
	var cerr error
	return c, func() error { once.Do(func() { cerr = c.Close() }); return cerr }, nil
}

// DefaultPoolSize is the connection pool per Redis node when the URL sets
// no pool_size. go-redis's own default (10 per CPU) starved the command
// and uplink workers, which mostly wait on Redis: at 500 commands/s on two
// cores p99 fell from 3.0 s to 1.2 s with 80 connections (BENCHMARKS.md).
const DefaultPoolSize = 80

func newClient(rawURL string) (redis.UniversalClient, error) {
	if !strings.Contains(rawURL, "pool_size=") {
		sep := "?"
		if strings.Contains(rawURL, "?") {
			sep = "&"
		}
		rawURL += sep + "pool_size=" + strconv.Itoa(DefaultPoolSize)
	}
	scheme, rest, hasScheme := strings.Cut(rawURL, "://")
	if !hasScheme {
		if strings.Contains(rawURL, ",") {
			return newCluster("redis", rawURL)
		}
		opt, err := redis.ParseURL("redis://" + rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClient(boundClient(rawURL, opt)), nil
	}
	switch scheme {
	case "redis", "rediss":
		opt, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClient(boundClient(rawURL, opt)), nil
	case "redis+cluster", "rediss+cluster":
		return newCluster(strings.TrimSuffix(scheme, "+cluster"), rest)
	case "redis+sentinel", "rediss+sentinel":
		return newSentinel(strings.TrimSuffix(scheme, "+sentinel"), rest)
	}
	return nil, fmt.Errorf("unknown redis url scheme %q (want redis, rediss, redis+cluster, redis+sentinel)", scheme)
}

// splitHosts splits "[userinfo@]h1,h2[/path][?query]" into its parts.
func splitHosts(rest string) (userinfo string, hosts []string, path, query string) {
	rest, query, _ = strings.Cut(rest, "?")
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		userinfo, rest = rest[:i], rest[i+1:]
	}
	if i := strings.Index(rest, "/"); i >= 0 {
		rest, path = rest[:i], rest[i:]
	}
	for _, h := range strings.Split(rest, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	return userinfo, hosts, path, query
}

// goRedisURL rebuilds a URL in go-redis's own multi-address form: the first
// host in the authority, the others as addr= parameters.
func goRedisURL(scheme, userinfo string, hosts []string, path, query string, extra url.Values) (string, error) {
	if len(hosts) == 0 {
		return "", errors.New("no hosts")
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", fmt.Errorf("query: %w", err)
	}
	for _, h := range hosts[1:] {
		q.Add("addr", h)
	}
	for k, vs := range extra {
		q[k] = vs
	}
	s := scheme + "://"
	if userinfo != "" {
		s += userinfo + "@"
	}
	s += hosts[0] + path
	if enc := q.Encode(); enc != "" {
		s += "?" + enc
	}
	return s, nil
}

func newCluster(scheme, rest string) (redis.UniversalClient, error) {
	userinfo, hosts, path, query := splitHosts(rest)
	if path != "" && path != "/" {
		return nil, errors.New("redis cluster url: a database number is not allowed")
	}
	u, err := goRedisURL(scheme, userinfo, hosts, "", query, nil)
	if err != nil {
		return nil, fmt.Errorf("redis cluster url: %w", err)
	}
	opt, err := redis.ParseClusterURL(u)
	if err != nil {
		return nil, err
	}
	return redis.NewClusterClient(boundCluster(u, opt)), nil
}

func newSentinel(scheme, rest string) (redis.UniversalClient, error) {
	userinfo, hosts, path, query := splitHosts(rest)
	// userinfo is "[user:pass@]master" here.
	master := userinfo
	userinfo = ""
	if i := strings.LastIndex(master, "@"); i >= 0 {
		userinfo, master = master[:i], master[i+1:]
	}
	if master == "" {
		return nil, errors.New("redis sentinel url: want redis+sentinel://master@host1,host2")
	}
	u, err := goRedisURL(scheme, userinfo, hosts, path, query, url.Values{"master_name": {master}})
	if err != nil {
		return nil, fmt.Errorf("redis sentinel url: %w", err)
	}
	opt, err := redis.ParseFailoverURL(u)
	if err != nil {
		return nil, err
	}
	return redis.NewFailoverClient(boundFailover(u, opt)), nil
}

// redact hides the password in a URL for logs and errors. Userinfo ends at
// the first '@' (a literal '@' in a password must be percent-encoded).
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	auth, _, _ := strings.Cut(rest, "/")
	auth, _, _ = strings.Cut(auth, "?")
	i := strings.Index(auth, "@")
	if i < 0 {
		return raw
	}
	user, _, hasPass := strings.Cut(auth[:i], ":")
	if !hasPass {
		return raw
	}
	return scheme + "://" + user + ":xxxxx" + rest[i:]
}

// openMemory starts an in-process miniredis with a goroutine that keeps its
// clock and TTLs moving; the Closer stops both.
func openMemory(ctx context.Context, log zerolog.Logger) (redis.UniversalClient, Closer, error) {
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, nil, fmt.Errorf("open in-process redis: %w", err)
	}
	m.SetTime(time.Now())
	c := redis.NewClient(&redis.Options{Addr: m.Addr(), Protocol: 2})
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		m.Close()
		return nil, nil, fmt.Errorf("open in-process redis: ping: %w", err)
	}
	log.Warn().Str("redis", "in-process").
		Msg("NO REDIS CONFIGURED: using an in-process store; ALL STATE (devices, keys, nonces) IS LOST ON EXIT. Pass --redis for durable state.")

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				m.SetTime(now)
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	var once sync.Once
	var cerr error
	return c, func() error {
		once.Do(func() {
			close(stop)
			<-done
			cerr = c.Close()
			m.Close()
		})
		return cerr
	}, nil
}
