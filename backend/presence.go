package backend

import (
	"context"
	"fmt"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// Presence is ordered by connection generation (docs/DECISIONS.md,
// "Presence follows the broker's connections"). When the broker reports
// connections (broker.Config.Presence, the embedded broker), the device
// hash carries conn_gen, the generation of the device's newest accepted
// connection (HINCRBY at CONNECT, so above every earlier one, on any
// replica), and conn_down, the newest generation that has ended:
//
//   - a disconnect of generation g marks the device offline only while
//     g == conn_gen: a report about a connection that was taken over, or
//     that arrives after the device reconnected, changes nothing;
//   - a birth is recorded only while conn_down < conn_gen: a birth that
//     sits in a queue while its connection ends does not revive the device;
//   - the unsigned will is ignored: the disconnect report covers it.
//
// Without such reports (an external broker) births and wills apply as
// they come, and a clean DISCONNECT is not seen. The two fields are
// written only by the Lua scripts below, the birth script and the sweep.
// The connect script also records the holding replica (field replica),
// which the presence sweep reconciles against (reconcile.go).

// connectScript starts a connection generation of an existing device and
// records the replica that holds it (reconcile.go).
// KEYS: dev hash. ARGV: replica. Returns {generation, previous holder}:
// generation 0 for an unknown device; the previous holder is the replica
// that recorded the device's newest connection when that connection has
// not ended yet, else "". A device hash always has its id field
// (provisionScript); two calls.
var connectScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'id', 'replica', 'conn_gen', 'conn_down')
if not v[1] then return {0, ''} end
local gen = tonumber(v[3] or '0')
local prev = v[2] or ''
if tonumber(v[4] or '0') >= gen then prev = '' end
redis.call('HSET', KEYS[1], 'replica', ARGV[1], 'conn_gen', gen + 1)
return {gen + 1, prev}
`)

// DeviceConnected records that the broker accepted a new connection of
// device id and returns its generation (see broker.Presence). From the
// first call on, this Service orders presence by generation.
func (s *Service) DeviceConnected(ctx context.Context, id string) (uint64, error) {
	// Other replicas must see this one alive before they see a device it
	// holds, or their sweep would take the device for orphaned.
	if err := s.ensureHeartbeat(ctx); err != nil {
		return 0, Unavailable("connect "+id, err)
	}
	res, err := connectScript.Run(ctx, s.rdb, []string{s.keys.Device(id)}, s.cfg.Replica).Slice()
	if err != nil {
		return 0, Unavailable("connect "+id, err)
	}
	gen, _ := res[0].(int64)
	if gen <= 0 {
		return 0, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	s.tracked.Store(true)
	if prev, _ := res[1].(string); prev != "" && prev != s.cfg.Replica && s.cfg.Takeover != nil {
		s.cfg.Takeover(id, prev, uint64(gen))
	}
	return uint64(gen), nil
}

// disconnectScript ends connection generation ARGV[1]; it marks the
// device offline when that is still its newest connection.
// KEYS: dev hash. ARGV: gen, now (unix ms).
// Returns 1 marked offline, 2 already offline, -1 a newer connection
// exists, 0 unknown device.
var disconnectScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'conn_gen') or '0')
if tonumber(ARGV[1]) ~= cur then return -1 end
redis.call('HSET', KEYS[1], 'conn_down', ARGV[1])
if redis.call('HGET', KEYS[1], 'online') ~= '1' then return 2 end
redis.call('HSET', KEYS[1], 'online', '0', 'offline_at', ARGV[2])
return 1
`)

// DeviceDisconnected records the end of connection gen of device id, for
// cause (one of broker.Cause*), and marks the device offline unless it
// has connected again since. When Redis fails the report is queued and
// retried (reconcile.go): it returns nil then.
func (s *Service) DeviceDisconnected(ctx context.Context, id string, gen uint64, cause string) error {
	p := pendingDisconnect{id: id, gen: gen, cause: cause, at: s.now()}
	recorded, err := s.disconnect(ctx, p)
	if !recorded && s.pres.enqueue(p) {
		s.log.Warn().Err(err).Str("device", id).Uint64("gen", gen).Str("cause", cause).
			Msg("presence: disconnect not recorded; queued for retry")
		return nil
	}
	return err
}

// disconnect applies a disconnect report; recorded is false when the
// script did not run (Redis failed), so the report may be retried.
func (s *Service) disconnect(ctx context.Context, p pendingDisconnect) (recorded bool, _ error) {
	id, gen, cause := p.id, p.gen, p.cause
	res, err := disconnectScript.Run(ctx, s.rdb, []string{s.keys.Device(id)}, gen, p.at.UnixMilli()).Int()
	if err != nil {
		return false, Unavailable("disconnect "+id, err)
	}
	s.m.disconnects.WithLabelValues(cause).Inc()
	switch res {
	case -1:
		s.log.Debug().Str("device", id).Uint64("gen", gen).Str("cause", cause).Msg("disconnect of a superseded connection: ignored")
		return true, nil
	case 1:
	default:
		return true, nil
	}
	// A failure from here on leaves the device offline; the sweep drops a
	// stale index entry (reconcile.go).
	if err := s.rdb.ZRem(ctx, s.keys.Online(), id).Err(); err != nil {
		return true, fmt.Errorf("disconnect %s: online index: %w", id, err)
	}
	s.log.Info().Str("device", id).Str("via", cause).Uint64("gen", gen).Msg("device offline")
	return true, s.Emit(ctx, id, topics.EventPresence, map[string]any{"online": false, "via": cause})
}
