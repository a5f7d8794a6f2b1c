package backend

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Presence reconciliation (docs/OPERATIONS.md, "Presence"). Disconnect
// reports are lost when the server crashes or Redis is down as they
// arrive, so presence is also checked against what the brokers hold:
//
//   - DeviceConnected records in the device hash the replica that holds
//     the connection (field replica);
//   - every replica keeps a heartbeat key (store.Keys.Replica) with a TTL
//     of 3 sweep periods;
//   - one goroutine per replica sweeps the online index (ZSCAN, at most
//     PresenceBatch devices per period, pipelined) and marks offline a
//     device held by this replica whose connection the broker no longer
//     holds (not_held), held by a replica whose heartbeat has expired
//     (replica_gone), or, when no replica records it (an external
//     broker), whose last_seen is older than PresenceExpiry (expired);
//   - a disconnect report that failed on Redis is queued (bounded) and
//     retried every second.
//
// Every offline is a script that checks conn_gen and last_seen are still
// what the sweep read, so a device that connected or spoke since is left
// alone; it also sets conn_down, so a late birth of the dead connection
// does not revive it.

// Connections is what the sweep needs of the embedded broker
// (broker.Server.HeldGeneration).
type Connections interface {
	// HeldGeneration returns the newest generation of device id's
	// connections on this replica's broker, 0 for none, and a value above
	// any generation while a connect is being recorded.
	HeldGeneration(id string) uint64
}

// DefaultPresenceExpiry is 1.5 × a 60 s keepalive plus the longest upload
// interval: a device that keeps its connection sends a telemetry uplink
// (which updates last_seen) at least that often.
const DefaultPresenceExpiry = 90*time.Second + topics.MaxUploadInterval*time.Second

// Reasons a sweep marks a device offline (the "via" of its presence event
// and the cause label of ecowatt_presence_reconciled_total).
const (
	ViaNotHeld     = "not_held"     // this replica's broker no longer holds the connection
	ViaReplicaGone = "replica_gone" // the holding replica's heartbeat expired
	ViaExpired     = "expired"      // no replica holds it and last_seen is older than PresenceExpiry
	viaStaleIndex  = "stale_index"  // the online index named a device that is offline or gone
)

const (
	maxPendingDisconnects = 10000 // beyond, the oldest is dropped; the sweep still catches it
	retryEvery            = time.Second
	sweepScanCount        = 500 // ZSCAN COUNT and pipeline size
)

// presence is a Service's reconciliation state.
type presence struct {
	m *presenceMetrics

	beating      atomic.Bool  // the heartbeat has been written since the last failure
	beatingSince atomic.Int64 // unix ms of that write
	cursor       uint64       // ZSCAN position in the online index; reconcile goroutine only

	mu      sync.Mutex // guards pending
	pending []pendingDisconnect
}

type pendingDisconnect struct {
	id, cause string
	gen       uint64
	at        time.Time
}

// enqueue keeps p for a retry, dropping the oldest report when full.
func (p *presence) enqueue(d pendingDisconnect) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) >= maxPendingDisconnects {
		p.pending = p.pending[1:]
		p.m.dropped.Inc()
	}
	p.pending = append(p.pending, d)
	return true
}

func (p *presence) queued() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return float64(len(p.pending))
}

type presenceMetrics struct {
	reconciled  *prometheus.CounterVec
	dropped     prometheus.Counter
	sweepErrors prometheus.Counter
}

func newPresenceMetrics(reg prometheus.Registerer, queued func() float64) (*presenceMetrics, error) {
	m := &presenceMetrics{
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_presence_reconciled_total",
			Help: "Devices the presence sweep marked offline or dropped from the online index, by cause.",
		}, []string{"cause"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_presence_retries_dropped_total",
			Help: "Disconnect reports dropped from the full retry queue (the sweep still ends them).",
		}),
		sweepErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_presence_sweep_errors_total",
			Help: "Presence sweep or heartbeat steps that failed on Redis.",
		}),
	}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ecowatt_presence_retries_queued",
		Help: "Disconnect reports waiting to be retried on Redis.",
	}, queued)
	for _, c := range []prometheus.Collector{m.reconciled, m.dropped, m.sweepErrors, pending} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, c := range []string{ViaNotHeld, ViaReplicaGone, ViaExpired, viaStaleIndex} {
		m.reconciled.WithLabelValues(c)
	}
	return m, nil
}

// presenceDefaults fills and checks the presence fields of cfg.
func presenceDefaults(cfg *Config) error {
	if cfg.PresenceSweep <= 0 {
		cfg.PresenceSweep = 10 * time.Second
	}
	if cfg.PresenceExpiry <= 0 {
		cfg.PresenceExpiry = DefaultPresenceExpiry
	}
	if cfg.PresenceBatch <= 0 {
		cfg.PresenceBatch = 5000
	}
	if cfg.Replica == "" {
		b := make([]byte, 6)
		if _, err := io.ReadFull(cfg.Random, b); err != nil {
			return fmt.Errorf("replica id: %w", err)
		}
		cfg.Replica = "backend-" + hex.EncodeToString(b)
	}
	return nil
}

// ReplicaID is this replica's identity, as recorded in the hash of each
// device it holds and in its heartbeat key.
func (s *Service) ReplicaID() string { return s.cfg.Replica }

// heartbeatTTL is how long a replica counts as alive after its last
// heartbeat.
func (s *Service) heartbeatTTL() time.Duration { return 3 * s.cfg.PresenceSweep }

// heartbeat renews this replica's heartbeat key.
func (s *Service) heartbeat(ctx context.Context) error {
	now := s.now()
	if err := s.rdb.Set(ctx, s.keys.Replica(s.cfg.Replica), now.UnixMilli(), s.heartbeatTTL()).Err(); err != nil {
		s.pres.beating.Store(false)
		return err
	}
	if !s.pres.beating.Load() {
		s.pres.beatingSince.Store(now.UnixMilli())
		s.pres.beating.Store(true)
	}
	return nil
}

// ensureHeartbeat writes the heartbeat unless it is being kept.
func (s *Service) ensureHeartbeat(ctx context.Context) error {
	if s.pres.beating.Load() {
		return nil
	}
	return s.heartbeat(ctx)
}

// reconcileLoop runs the start-up reconciliation (a full pass), then one
// bounded sweep per PresenceSweep and the disconnect retries, until ctx
// ends; then it drops the heartbeat so that other replicas end this one's
// devices at once.
func (s *Service) reconcileLoop(ctx context.Context) {
	for done := false; !done && ctx.Err() == nil; {
		done = s.sweep(ctx)
	}
	sweep := time.NewTicker(s.cfg.PresenceSweep)
	defer sweep.Stop()
	retry := time.NewTicker(retryEvery)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = s.rdb.Del(dctx, s.keys.Replica(s.cfg.Replica)).Err()
			cancel()
			return
		case <-sweep.C:
			s.sweep(ctx)
		case <-retry.C:
			s.retryDisconnects(ctx)
		}
	}
}

// retryDisconnects applies queued disconnect reports in order, stopping
// at the first that Redis still refuses.
func (s *Service) retryDisconnects(ctx context.Context) {
	for ctx.Err() == nil {
		s.pres.mu.Lock()
		if len(s.pres.pending) == 0 {
			s.pres.mu.Unlock()
			return
		}
		p := s.pres.pending[0]
		s.pres.pending = s.pres.pending[1:]
		s.pres.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, s.cfg.MessageTimeout)
		recorded, err := s.disconnect(rctx, p)
		cancel()
		if !recorded {
			s.pres.mu.Lock()
			s.pres.pending = append([]pendingDisconnect{p}, s.pres.pending...)
			s.pres.mu.Unlock()
			return
		}
		if err != nil {
			s.log.Error().Err(err).Str("device", p.id).Msg("presence: retried disconnect")
			continue
		}
		s.log.Info().Str("device", p.id).Uint64("gen", p.gen).Str("cause", p.cause).Msg("presence: queued disconnect recorded")
	}
}

// sweep checks up to PresenceBatch devices of the online index, from
// where the last sweep stopped, and reports whether it finished a pass.
func (s *Service) sweep(ctx context.Context) bool {
	if err := s.heartbeat(ctx); err != nil {
		s.pres.m.sweepErrors.Inc()
		s.log.Warn().Err(err).Msg("presence: heartbeat failed")
		return true // Redis is down: nothing to sweep against
	}
	s.retryDisconnects(ctx)
	for budget := s.cfg.PresenceBatch; budget > 0 && ctx.Err() == nil; {
		kv, cursor, err := s.rdb.ZScan(ctx, s.keys.Online(), s.pres.cursor, "", int64(min(budget, sweepScanCount))).Result()
		if err != nil {
			s.pres.m.sweepErrors.Inc()
			s.log.Warn().Err(err).Msg("presence: sweep failed")
			return true
		}
		for len(kv) >= 2 {
			n := min(len(kv)/2, sweepScanCount)
			if err := s.checkOnline(ctx, kv[:2*n]); err != nil {
				s.pres.m.sweepErrors.Inc()
				s.log.Warn().Err(err).Msg("presence: sweep failed")
				return true
			}
			kv = kv[2*n:]
			budget -= n
		}
		s.pres.cursor = cursor
		if cursor == 0 {
			return true
		}
	}
	return false
}

// sweepOfflineScript marks a device offline if nothing changed since the
// sweep read it. KEYS: dev hash. ARGV: conn_gen read, last_seen read (""
// for none), now (unix ms). Returns 1 marked offline, 0 not online, -1
// changed since.
var sweepOfflineScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'online') ~= '1' then return 0 end
local h = redis.call('HMGET', KEYS[1], 'conn_gen', 'last_seen')
if (h[1] or '') ~= ARGV[1] or (h[2] or '') ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], 'online', '0', 'offline_at', ARGV[3])
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'conn_down', ARGV[1]) end
return 1
`)

// zremIfScore removes a member of the online index unless a birth has
// re-added it since (a new score). KEYS: index. ARGV: member, score.
var zremIfScore = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)

// checkOnline judges one batch of the online index (member, score pairs).
func (s *Service) checkOnline(ctx context.Context, kv []string) error {
	n := len(kv) / 2
	cmds := make([]*redis.SliceCmd, n)
	if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			cmds[i] = p.HMGet(ctx, s.keys.Device(kv[2*i]), fOnline, "conn_gen", "replica", fLastSeen)
		}
		return nil
	}); err != nil {
		return err
	}
	type row struct{ id, score, online, gen, replica, seen string }
	rows := make([]row, n)
	others := map[string]bool{} // other replicas named in this batch: alive?
	for i, c := range cmds {
		v := c.Val()
		str := func(j int) string { x, _ := v[j].(string); return x }
		rows[i] = row{kv[2*i], kv[2*i+1], str(0), str(1), str(2), str(3)}
		if r := rows[i].replica; r != "" && r != s.cfg.Replica {
			others[r] = false
		}
	}
	// Judge other replicas only after holding a heartbeat for a TTL, so a
	// Redis restart (every heartbeat expired) does not end their devices.
	judge := s.now().UnixMilli()-s.pres.beatingSince.Load() >= s.heartbeatTTL().Milliseconds()
	if len(others) > 0 && judge {
		alive := map[string]*redis.IntCmd{}
		if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for r := range others {
				alive[r] = p.Exists(ctx, s.keys.Replica(r))
			}
			return nil
		}); err != nil {
			return err
		}
		for r, c := range alive {
			others[r] = c.Val() > 0
		}
	}
	now := s.now()
	for _, r := range rows {
		var via string
		switch {
		case r.online != "1":
			if err := s.dropIndexEntry(ctx, r.id, r.score); err != nil {
				return err
			}
			continue
		case r.replica == s.cfg.Replica && s.cfg.Connections != nil:
			gen, _ := strconv.ParseUint(r.gen, 10, 64)
			if s.cfg.Connections.HeldGeneration(r.id) >= gen {
				continue
			}
			via = ViaNotHeld
		case r.replica != "" && r.replica != s.cfg.Replica:
			if !judge || others[r.replica] {
				continue
			}
			via = ViaReplicaGone
		default:
			seen := msTime(r.seen)
			if seen == nil {
				f, _ := strconv.ParseFloat(r.score, 64)
				t := time.UnixMilli(int64(f))
				seen = &t
			}
			if now.Sub(*seen) <= s.cfg.PresenceExpiry {
				continue
			}
			via = ViaExpired
		}
		if err := s.sweepOffline(ctx, r.id, r.score, r.gen, r.seen, via); err != nil {
			return err
		}
	}
	return nil
}

// sweepOffline marks one device offline for reason via.
func (s *Service) sweepOffline(ctx context.Context, id, score, gen, seen, via string) error {
	res, err := sweepOfflineScript.Run(ctx, s.rdb, []string{s.keys.Device(id)}, gen, seen, s.now().UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("sweep %s: %w", id, err)
	}
	if res != 1 {
		return nil
	}
	if err := zremIfScore.Run(ctx, s.rdb, []string{s.keys.Online()}, id, score).Err(); err != nil {
		return fmt.Errorf("sweep %s: online index: %w", id, err)
	}
	s.pres.m.reconciled.WithLabelValues(via).Inc()
	s.log.Info().Str("device", id).Str("via", via).Str("gen", gen).Msg("device offline")
	if err := s.Emit(ctx, id, topics.EventPresence, map[string]any{"online": false, "via": via}); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn().Err(err).Str("device", id).Msg("presence: offline event")
	}
	return nil
}

// dropIndexEntry removes an online-index entry of a device that is not
// online (a disconnect whose index write failed, a deleted device).
func (s *Service) dropIndexEntry(ctx context.Context, id, score string) error {
	n, err := zremIfScore.Run(ctx, s.rdb, []string{s.keys.Online()}, id, score).Int()
	if err != nil {
		return fmt.Errorf("sweep %s: online index: %w", id, err)
	}
	if n > 0 {
		s.pres.m.reconciled.WithLabelValues(viaStaleIndex).Inc()
	}
	return nil
}
