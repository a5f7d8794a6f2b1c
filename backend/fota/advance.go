package fota

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// The rollout algorithm, run by the lease holder at every tick for every
// rollout in rollouts:active:
//
//  1. Reconcile: every device the rollout is updating whose update has
//     ended (its device hash is no longer active, or a newer update
//     replaced it) becomes succeeded or failed (failed, rolled_back,
//     timed_out, superseded). Devices of started batches still pending
//     (a crash between starting a batch and its devices) are started.
//  2. Threshold: when failed / (updating + succeeded + failed) exceeds
//     max_failure_percent, the rollout aborts: every device whose batch has
//     not started is cancelled and stays on its firmware.
//  3. Advance: a running rollout whose started batches have all finished
//     starts the next batch. The batch number moves by compare-and-set in
//     Redis, so even without the lease two replicas could not start the
//     same batch twice. After the last batch it is completed.
//  4. An aborted or completed rollout leaves rollouts:active once none of
//     its devices is updating.

// batchScript moves a running rollout from batch ARGV[1] to the next.
// KEYS: ro hash. ARGV: expected batch, now ms. Returns 1 when moved.
var batchScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'batch') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'batch', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
return 1
`)

// advanceRollouts advances every active rollout once.
func (s *Service) advanceRollouts(ctx context.Context) error {
	rids, err := s.rdb.ZRange(ctx, s.roActive(), 0, -1).Result()
	if err != nil {
		return backend.Unavailable("advance rollouts", err)
	}
	var errs []error
	for _, rid := range rids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.advance(ctx, rid); err != nil {
			errs = append(errs, fmt.Errorf("advance rollout %s: %w", rid, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) advance(ctx context.Context, rid string) error {
	r, err := s.loadRollout(ctx, rid)
	if errors.Is(err, backend.ErrNotFound) {
		return s.rdb.ZRem(ctx, s.roActive(), rid).Err()
	}
	if err != nil {
		return err
	}
	if err := s.reconcile(ctx, r); err != nil {
		return err
	}
	if r.State == RolloutRunning || r.State == RolloutPaused {
		if r.overThreshold() {
			reason := fmt.Sprintf("failure rate %.1f%% above %.4g%% (%d of %d devices failed)",
				r.FailurePercent, r.MaxFailurePercent, r.Counts[DevFailed],
				r.Counts[DevUpdating]+r.Counts[DevSucceeded]+r.Counts[DevFailed])
			ok, err := s.setState(ctx, rid, RolloutAborted, reason, RolloutRunning, RolloutPaused)
			if err != nil {
				return err
			}
			if ok {
				s.m.rollouts.WithLabelValues(ResultAborted).Inc()
				s.log.Warn().Str("rollout", rid).Str("reason", reason).Msg("rollout aborted automatically")
				return s.cancelPending(ctx, rid)
			}
			return nil
		}
	}
	if r.State == RolloutRunning && r.Counts[DevUpdating] == 0 && !r.pendingStarted() {
		if r.CurrentBatch+1 >= r.BatchCount {
			ok, err := s.setState(ctx, rid, RolloutCompleted, "", RolloutRunning)
			if err != nil || !ok {
				return err
			}
			s.m.rollouts.WithLabelValues(ResultCompleted).Inc()
			s.log.Info().Str("rollout", rid).Interface("counts", r.Counts).Msg("rollout completed")
			return s.rdb.ZRem(ctx, s.roActive(), rid).Err()
		}
		n, err := batchScript.Run(ctx, s.rdb, []string{s.roKey(rid)}, r.CurrentBatch, s.now().UnixMilli()).Int()
		if err != nil {
			return backend.Unavailable("advance rollout "+rid, err)
		}
		if n == 1 {
			r.CurrentBatch++
			s.log.Info().Str("rollout", rid).Int("batch", r.CurrentBatch).Int("of", r.BatchCount).Msg("rollout batch started")
			return s.startPending(ctx, r)
		}
		return nil
	}
	if (r.State == RolloutAborted || r.State == RolloutCompleted) && r.Counts[DevUpdating] == 0 {
		return s.rdb.ZRem(ctx, s.roActive(), rid).Err()
	}
	return nil
}

// pendingStarted reports whether a started batch has a device not yet
// started.
func (r *rolloutState) pendingStarted() bool {
	for _, id := range r.order[:r.startedEnd()] {
		if r.devs[id] == DevPending {
			return true
		}
	}
	return false
}

// reconcile settles ended updates and starts pending devices of started
// batches (after a crash between a batch's start and its devices').
func (s *Service) reconcile(ctx context.Context, r *rolloutState) error {
	var ids []string
	for _, id := range r.order {
		if r.devs[id] == DevUpdating {
			ids = append(ids, id)
		}
	}
	cmds := make([]*redis.SliceCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, s.keys.Device(id), "id", backend.FOTAActive, backend.FOTARollout, backend.FOTAResult, backend.FOTAReason)
		}
		return nil
	})
	if err != nil {
		return backend.Unavailable("reconcile rollout "+r.ID, err)
	}
	upd := map[string]string{}
	why := map[string]string{}
	for i, id := range ids {
		v := cmds[i].Val()
		str := func(j int) string { x, _ := v[j].(string); return x }
		switch {
		case str(0) == "":
			upd[id], why[id] = DevFailed, "device removed"
		case str(2) != r.ID:
			upd[id], why[id] = DevFailed, "superseded by another update"
		case str(1) == "1":
			continue
		case str(3) == ResultSucceeded:
			upd[id] = DevSucceeded
		case str(3) == ResultCancelled:
			upd[id], why[id] = DevCancelled, str(4)
		default:
			upd[id] = DevFailed
			why[id] = str(3)
			if rs := str(4); rs != "" {
				why[id] += ": " + rs
			}
		}
	}
	if err := s.record(ctx, r, upd, why); err != nil {
		return err
	}
	if r.State == RolloutRunning || r.State == RolloutPaused {
		return s.startPending(ctx, r)
	}
	return nil
}

// claimScript moves a device of a rollout from pending to updating, only
// while the rollout is running or paused (a paused rollout still starts
// the devices of its started batches), so that an abort stops a batch
// being started: the devices not yet claimed stay pending and are
// cancelled. Returns {1} when claimed, else {0, the device's state}.
// KEYS: ro hash, devs hash. ARGV: device.
var claimScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
local dev = redis.call('HGET', KEYS[2], ARGV[1])
if (st ~= 'running' and st ~= 'paused') or dev ~= 'pending' then return {0, dev or ''} end
redis.call('HSET', KEYS[2], ARGV[1], 'updating')
return {1}
`)

// unclaimScript undoes a claim whose start failed for want of storage or
// broker: the device is pending again (tried next tick), or cancelled when
// the rollout has since been aborted. Returns the device's state.
// KEYS: ro hash, devs hash. ARGV: device.
var unclaimScript = redis.NewScript(`
local dev = redis.call('HGET', KEYS[2], ARGV[1])
if dev ~= 'updating' then return dev or '' end
local st = redis.call('HGET', KEYS[1], 'state')
dev = 'cancelled'
if st == 'running' or st == 'paused' then dev = 'pending' end
redis.call('HSET', KEYS[2], ARGV[1], dev)
return dev
`)

// cancelScript cancels the devices named that are still pending.
// KEYS: ro hash, devs hash. ARGV: now ms, devices.
var cancelScript = redis.NewScript(`
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == 'pending' then
    redis.call('HSET', KEYS[2], ARGV[i], 'cancelled')
    n = n + 1
  end
end
if n > 0 then redis.call('HSET', KEYS[1], 'updated_at', ARGV[1]) end
return n
`)

// startWorkers bounds the devices startPending starts at once: each start
// is a few Redis round trips and a manifest publish, so a batch of 1,000
// started one by one waited on about 7,000 round trips.
const startWorkers = 16

// startPending starts the pending devices of the started batches. Each
// device is claimed (claimScript) before it is started, so a device is
// never started once its rollout is aborted, even from a stale r.
func (s *Service) startPending(ctx context.Context, r *rolloutState) error {
	var ids []string
	for _, id := range r.order[:r.startedEnd()] {
		if r.devs[id] == DevPending {
			ids = append(ids, id)
		}
	}
	var (
		mu   sync.Mutex // guards upd, why, seen, errs
		upd  = map[string]string{}
		why  = map[string]string{}
		seen = map[string]string{} // states found instead of pending, not written
		errs []error
		wg   sync.WaitGroup
	)
	keys := []string{s.roKey(r.ID), s.roDevs(r.ID)}
	next := make(chan string)
	for range min(startWorkers, len(ids)) {
		wg.Go(func() {
			for id := range next {
				res, err := claimScript.Run(ctx, s.rdb, keys, id).Slice()
				if err != nil {
					mu.Lock()
					errs = append(errs, backend.Unavailable("rollout "+r.ID+": claim "+id, err))
					mu.Unlock()
					continue
				}
				if n, _ := res[0].(int64); n != 1 {
					mu.Lock()
					seen[id], _ = res[1].(string)
					mu.Unlock()
					continue
				}
				_, err = s.StartUpdate(ctx, id, r.Version, r.ID)
				var st string
				var uerr error
				if err != nil && !errors.Is(err, wire.ErrDowngrade) && !errors.Is(err, backend.ErrNotFound) &&
					!errors.Is(err, backend.ErrConflict) {
					st, uerr = unclaimScript.Run(ctx, s.rdb, keys, id).Text()
				}
				mu.Lock()
				switch {
				case uerr != nil:
					errs = append(errs, err, backend.Unavailable("rollout "+r.ID+": unclaim "+id, uerr))
				case err == nil:
					upd[id] = DevUpdating
				case errors.Is(err, wire.ErrDowngrade):
					upd[id], why[id] = DevSkipped, "already running this version or a newer one"
				case errors.Is(err, backend.ErrNotFound):
					upd[id], why[id] = DevSkipped, "device removed"
				case errors.Is(err, backend.ErrDisabled):
					upd[id], why[id] = DevSkipped, backend.StateDisabled
				case errors.Is(err, backend.ErrDecommissioned):
					upd[id], why[id] = DevSkipped, backend.StateDecommissioned
				case errors.Is(err, backend.ErrConflict):
					upd[id], why[id] = DevSkipped, "another update in progress"
				default:
					errs = append(errs, err) // pending again: tried next tick
					seen[id] = st
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	for id, st := range seen {
		if st != "" {
			r.devs[id] = st
		}
	}
	r.count()
	return errors.Join(s.record(ctx, r, upd, why), errors.Join(errs...))
}

// record writes device state changes of a rollout and applies them to r.
func (s *Service) record(ctx context.Context, r *rolloutState, upd, why map[string]string) error {
	if len(upd) == 0 {
		return nil
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		args := make([]any, 0, 2*len(upd))
		for id, st := range upd {
			args = append(args, id, st)
		}
		p.HSet(ctx, s.roDevs(r.ID), args...)
		if len(why) > 0 {
			args = args[:0]
			for id, w := range why {
				args = append(args, id, w)
			}
			p.HSet(ctx, s.roWhy(r.ID), args...)
		}
		p.HSet(ctx, s.roKey(r.ID), "updated_at", s.now().UnixMilli())
		return nil
	})
	if err != nil {
		return backend.Unavailable("record rollout "+r.ID, err)
	}
	for id, st := range upd {
		r.devs[id] = st
		if w, ok := why[id]; ok {
			r.why[id] = w
		}
	}
	r.count()
	return nil
}

// cancelPending marks the not-yet-started devices of an aborted rollout
// cancelled; a device claimed meanwhile keeps its state.
func (s *Service) cancelPending(ctx context.Context, rid string) error {
	r, err := s.loadRollout(ctx, rid)
	if err != nil {
		return err
	}
	args := []any{s.now().UnixMilli()}
	for _, id := range r.order {
		if r.devs[id] == DevPending {
			args = append(args, id)
		}
	}
	if len(args) == 1 {
		return nil
	}
	if err := cancelScript.Run(ctx, s.rdb, []string{s.roKey(rid), s.roDevs(rid)}, args...).Err(); err != nil {
		return backend.Unavailable("cancel rollout "+rid, err)
	}
	return nil
}
