package config

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ecowatt/ecowatt/backend"
	"strconv"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
)

// deliver sends dev's latest desired version, complete, as a signed
// down/config message, and records when. Versions never set by an operator
// (0) are not sent.
func (s *Service) deliver(ctx context.Context, dev string, redelivery bool) error {
	r, err := s.read(ctx, s.rdb, dev)
	if err != nil {
		return err
	}
	if r.version == 0 {
		return nil
	}
	u := r.desired.Update(r.version)
	if err := s.b.Send(ctx, dev, topics.KindConfig, topics.ConfigBody{ConfigUpdate: &u}); err != nil {
		return fmt.Errorf("deliver config v%d to %s: %w", r.version, dev, err)
	}
	if redelivery {
		s.m.redeliveries.Inc()
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.cfgKey(dev), fSentVersion, r.version, fSentAt, s.now().UnixMilli())
		p.HIncrBy(ctx, s.cfgKey(dev), fSends, 1)
		return nil
	})
	if err != nil {
		return backend.Unavailable("deliver config "+dev+": record", err)
	}
	s.log.Debug().Str("device", dev).Int64("version", r.version).Bool("redelivery", redelivery).Msg("config sent")
	return nil
}

// birthScript records the config a device reports at birth, only when the
// device exists, and returns the desired version and pending flag.
// KEYS: dev hash, cfg hash. ARGV: reported JSON ("" when not reported),
// reported version, now (unix ms).
var birthScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[2], 'reported', ARGV[1], 'reported_version', ARGV[2], 'reported_at', ARGV[3])
end
return redis.call('HMGET', KEYS[2], 'version', 'pending', 'desired_at')
`)

// handleBirth reconciles a device that has just come online: it records
// the config the device reports and, when the device runs an older
// version than the desired one (or has not acknowledged it), sends the
// latest. It runs after the backend's own presence handler, which has
// already refused a malformed birth.
func (s *Service) handleBirth(ctx context.Context, dev string, m envelope.Message) error {
	var b topics.Birth
	if err := json.Unmarshal(m.Body, &b); err != nil || !b.Online {
		return nil
	}
	reported := ""
	if b.Config != nil {
		raw, err := json.Marshal(b.Config)
		if err != nil {
			return fmt.Errorf("config birth %s: %w", dev, err)
		}
		reported = string(raw)
	}
	res, err := birthScript.Run(ctx, s.rdb, []string{s.keys.Device(dev), s.cfgKey(dev)},
		reported, b.ConfigVersion, s.now().UnixMilli()).Slice()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return backend.Unavailable("config birth "+dev, err)
	}
	version := atoi(str(res[0]))
	pending := str(res[1]) == "1"
	switch {
	case version == 0:
		return nil
	case b.ConfigVersion > version:
		s.log.Warn().Str("device", dev).Int64("device_version", b.ConfigVersion).Int64("desired_version", version).
			Msg("device runs a config version the backend never created; the next change will be numbered above it")
		return nil
	case b.ConfigVersion == version && !pending:
		return nil
	}
	if !pending {
		// Acknowledged once, but the device has lost it (a reset flash):
		// pending again until it acknowledges.
		if err := s.rdb.HSet(ctx, s.cfgKey(dev), fPending, "1").Err(); err != nil {
			return backend.Unavailable("config birth "+dev, err)
		}
		score, _ := strconv.ParseFloat(str(res[2]), 64)
		if err := s.rdb.ZAdd(ctx, s.pendingKey(), redis.Z{Score: score, Member: dev}).Err(); err != nil {
			return backend.Unavailable("config birth "+dev+": pending index", err)
		}
	}
	s.log.Info().Str("device", dev).Int64("device_version", b.ConfigVersion).Int64("desired_version", version).
		Msg("device is behind its desired config: sending the latest version")
	return s.deliver(ctx, dev, true)
}

// unpendScript removes a device from the pending index unless a newer
// version put it back (with a newer score) meanwhile.
// KEYS: pending zset. ARGV: device, score it had.
var unpendScript = redis.NewScript(`
local sc = redis.call('ZSCORE', KEYS[1], ARGV[1])
if sc and tonumber(sc) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)

func (s *Service) unpend(ctx context.Context, dev, score string) {
	if score == "" {
		score = "0"
	}
	if err := unpendScript.Run(ctx, s.rdb, []string{s.pendingKey()}, dev, score).Err(); err != nil {
		s.log.Warn().Err(err).Str("device", dev).Msg("config pending index")
	}
}

// Sweep sends the desired version again to every online device that has
// not acknowledged it within SweepInterval of the last delivery, and drops
// devices that are no longer pending from the index. It returns how many
// versions it sent. Run calls it periodically.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, s.pendingKey(), 0, -1).Result()
	if err != nil {
		return 0, backend.Unavailable("config sweep", err)
	}
	now := s.now().UnixMilli()
	every := s.cfg.SweepInterval.Milliseconds()
	sent := 0
	for len(zs) > 0 {
		batch := zs[:min(len(zs), s.cfg.SweepBatch)]
		zs = zs[len(batch):]
		devs := make([]*redis.SliceCmd, len(batch))
		cfgs := make([]*redis.SliceCmd, len(batch))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, z := range batch {
				id, _ := z.Member.(string)
				devs[i] = p.HMGet(ctx, s.keys.Device(id), "online")
				cfgs[i] = p.HMGet(ctx, s.cfgKey(id), fPending, fSentAt, fSentVersion, fVersion)
			}
			return nil
		})
		if err != nil {
			return sent, backend.Unavailable("config sweep", err)
		}
		for i, z := range batch {
			id, _ := z.Member.(string)
			online, c := devs[i].Val(), cfgs[i].Val()
			score := strconv.FormatFloat(z.Score, 'f', -1, 64)
			if len(online) == 0 || online[0] == nil || len(c) < 4 || str(c[0]) != "1" {
				s.unpend(ctx, id, score) // removed device, or acknowledged
				continue
			}
			if str(online[0]) != "1" {
				continue // birth delivers it
			}
			if str(c[2]) == str(c[3]) && now-atoi(str(c[1])) < every {
				continue // the latest version was sent recently
			}
			if err := s.deliver(ctx, id, true); err != nil {
				if ctx.Err() != nil {
					return sent, ctx.Err()
				}
				s.log.Warn().Err(err).Str("device", id).Msg("config redelivery failed")
				continue
			}
			sent++
		}
	}
	if sent > 0 {
		s.log.Info().Int("redelivered", sent).Msg("config sweep")
	}
	return sent, nil
}

// str returns a Redis reply value as a string ("" for nil).
func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	}
	return ""
}
