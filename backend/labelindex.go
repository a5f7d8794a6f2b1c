package backend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/backend/lease"

	"github.com/redis/go-redis/v9"
)

// The label indexes (store.Keys.LabelIndex, LabelKeyIndex) live in the
// {idx} slot, apart from the device, so they are written after the device
// hash and cannot be in its script. Queries recheck every candidate
// against the hash (QueryDevices), so an index with extra members is only
// slower; the rules below keep it from missing one:
//
//   - indexLabels removes the memberships the writer's own change ended,
//     then reads the labels back from the hash and adds all of them. Any
//     later hash write does the same after it, so the last writer's
//     additions come after every earlier writer's removals.
//   - a write lost between the hash and the index (a crash, a failover)
//     is put right by RepairIndexes, which is idempotent.

// indexLabels moves id's label-index memberships from old to the labels
// the hash holds now.
func (s *Service) indexLabels(ctx context.Context, id string, old, next map[string]string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for k, v := range old {
			nv, ok := next[k]
			if !ok || nv != v {
				p.SRem(ctx, s.keys.LabelIndex(k, v), id)
			}
			if !ok {
				p.SRem(ctx, s.keys.LabelKeyIndex(k), id)
			}
		}
		return nil
	})
	if err != nil {
		return Unavailable("label index "+id, err)
	}
	raw, err := s.rdb.HGet(ctx, s.keys.Device(id), fLabels).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Unavailable("label index "+id, err)
	}
	_, err = s.addLabelIndex(ctx, id, decodeLabels(raw))
	return err
}

// addLabelIndex adds id to the indexes of labels and returns how many
// memberships were missing.
func (s *Service) addLabelIndex(ctx context.Context, id string, labels map[string]string) (int, error) {
	if len(labels) == 0 {
		return 0, nil
	}
	var adds []*redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for k, v := range labels {
			adds = append(adds, p.SAdd(ctx, s.keys.LabelIndex(k, v), id), p.SAdd(ctx, s.keys.LabelKeyIndex(k), id))
			p.SAdd(ctx, s.keys.IndexKeys(), s.keys.LabelIndex(k, v), s.keys.LabelKeyIndex(k))
		}
		return nil
	})
	if err != nil {
		return 0, Unavailable("label index "+id, err)
	}
	n := 0
	for _, a := range adds {
		n += int(a.Val())
	}
	return n, nil
}

// RepairIndexes makes the label indexes and the online index agree with
// the device hashes: it adds every missing membership and removes every
// stale one, and returns how many it fixed. It is idempotent and safe
// beside live writes (a removal is rechecked against the hash first); run
// it on one replica at a time (under a lease) after a failover, and
// periodically.
func (s *Service) RepairIndexes(ctx context.Context) (int, error) {
	ids, err := s.rdb.ZRange(ctx, s.keys.Devices(), 0, -1).Result()
	if err != nil {
		return 0, Unavailable("repair indexes", err)
	}
	want := map[string]map[string]bool{} // index key -> member IDs
	online := map[string]bool{}
	fixed := 0
	for len(ids) > 0 {
		n := min(500, len(ids))
		cmds := make([]*redis.SliceCmd, n)
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids[:n] {
				cmds[i] = p.HMGet(ctx, s.keys.Device(id), fLabels, fOnline, fBirthAt)
			}
			return nil
		})
		if err != nil {
			return fixed, Unavailable("repair indexes", err)
		}
		for i, id := range ids[:n] {
			v := cmds[i].Val()
			raw, _ := v[0].(string)
			labels := decodeLabels(raw)
			for k, val := range labels {
				for _, key := range []string{s.keys.LabelIndex(k, val), s.keys.LabelKeyIndex(k)} {
					if want[key] == nil {
						want[key] = map[string]bool{}
					}
					want[key][id] = true
				}
			}
			if on, _ := v[1].(string); on == "1" {
				online[id] = true
				birth, _ := v[2].(string)
				added, err := s.rdb.ZAddNX(ctx, s.keys.Online(), redis.Z{Score: float64(atoi(birth)), Member: id}).Result()
				if err != nil {
					return fixed, Unavailable("repair indexes", err)
				}
				fixed += int(added)
			}
			added, err := s.addLabelIndex(ctx, id, labels)
			if err != nil {
				return fixed, err
			}
			fixed += added
		}
		ids = ids[n:]
	}
	// Stale members: recheck each against its hash before removing it.
	keys, err := s.rdb.SMembers(ctx, s.keys.IndexKeys()).Result()
	if err != nil {
		return fixed, Unavailable("repair indexes", err)
	}
	for _, key := range keys {
		members, err := s.rdb.SMembers(ctx, key).Result()
		if err != nil {
			return fixed, Unavailable("repair indexes", err)
		}
		for _, id := range members {
			if want[key][id] {
				continue
			}
			raw, err := s.rdb.HGet(ctx, s.keys.Device(id), fLabels).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fixed, Unavailable("repair indexes", err)
			}
			if s.hasIndexEntry(key, decodeLabels(raw)) {
				continue // changed since the scan; its writer indexed it
			}
			if err := s.rdb.SRem(ctx, key, id).Err(); err != nil {
				return fixed, Unavailable("repair indexes", err)
			}
			fixed++
		}
	}
	members, err := s.rdb.ZRange(ctx, s.keys.Online(), 0, -1).Result()
	if err != nil {
		return fixed, Unavailable("repair indexes", err)
	}
	for _, id := range members {
		if online[id] {
			continue
		}
		if on, _ := s.rdb.HGet(ctx, s.keys.Device(id), fOnline).Result(); on == "1" {
			continue
		}
		if err := s.rdb.ZRem(ctx, s.keys.Online(), id).Err(); err != nil {
			return fixed, Unavailable("repair indexes", err)
		}
		fixed++
	}
	if fixed > 0 {
		s.log.Warn().Int("fixed", fixed).Msg("index repair fixed entries")
	}
	return fixed, nil
}

// hasIndexEntry reports whether labels put a device in index key.
func (s *Service) hasIndexEntry(key string, labels map[string]string) bool {
	for k, v := range labels {
		if key == s.keys.LabelIndex(k, v) || key == s.keys.LabelKeyIndex(k) {
			return true
		}
	}
	return false
}

// RunIndexRepair runs RepairIndexes at once and then every interval, on
// whichever replica holds the index-repair lease (one at a time), until
// ctx ends. replica names this replica in the lease (lease.ReplicaID).
// Errors of one pass are logged; the next pass tries again.
func (s *Service) RunIndexRepair(ctx context.Context, replica string, every time.Duration) error {
	l, err := lease.New(lease.Config{Redis: s.rdb, Key: s.keys.Global("lease:index-repair"), Replica: replica,
		Random: s.random, Now: s.now, Logger: s.log})
	if err != nil {
		return fmt.Errorf("index repair: %w", err)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		_, err := l.Do(ctx, func(ctx context.Context) error {
			_, err := s.RepairIndexes(ctx)
			return err
		})
		if err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Msg("index repair")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
