package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/redis/go-redis/v9"
)

// deviceOnline is backend's device hash field "online" ("1" while the
// device is connected): read directly so that a batch checks many
// devices in one pipelined round trip. TestOnlineField pins it.
const deviceOnline = "online"

// Tick advances every active job once. It reports whether any job is
// still active. Only the lease holder calls it (Run); tests call it.
func (s *Service) Tick(ctx context.Context) (bool, error) {
	ids, err := s.rdb.ZRange(ctx, s.activeKey(), 0, -1).Result()
	if err != nil {
		return false, backend.Unavailable("jobs tick", err)
	}
	var errs []error
	for _, jid := range ids {
		if err := s.advance(ctx, jid); err != nil {
			errs = append(errs, fmt.Errorf("job %s: %w", jid, err))
		}
	}
	return len(ids) > 0, errors.Join(errs...)
}

// advance moves job jid on: records outcomes of parts in flight, ends
// the job when it is over, and issues the next batch when pacing allows.
func (s *Service) advance(ctx context.Context, jid string) error {
	j, err := s.load(ctx, jid)
	if backend.ErrorCode(err) == backend.CodeNotFound {
		return s.rdb.ZRem(ctx, s.activeKey(), jid).Err()
	}
	if err != nil {
		return err
	}
	before := j.Counts[DevInProgress]*1_000_000 + j.Counts[DevQueued] // cheap change detector with the state
	beforeState := j.State
	if err := s.reconcile(ctx, j); err != nil {
		return err
	}
	if JobFinal(j.State) {
		return s.cleanup(ctx, j)
	}
	now := s.now()
	if j.State == StateScheduled {
		if _, _, err := s.setState(ctx, jid, StateRunning, StateScheduled, "", fStarted); err != nil {
			return err
		}
	}
	if !now.Before(*j.Spec.ExpiresAt) {
		if j.Counts[DevQueued] == 0 && j.Counts[DevInProgress] == 0 {
			return s.finish(ctx, jid, StateCompleted, "") // an include_future job at its end
		}
		return s.finish(ctx, jid, StateExpired, "the job expired with devices not done")
	}
	if j, err = s.load(ctx, jid); err != nil {
		return err
	}
	if j.State != StateRunning {
		s.publishIfChanged(ctx, j, beforeState, before)
		return nil
	}
	if why := s.abortReason(j); why != "" {
		return s.finish(ctx, jid, StateAborted, why)
	}
	if j.Spec.IncludeFuture {
		if err := s.join(ctx, j); err != nil {
			return err
		}
	}
	if j.Counts[DevQueued] == 0 && j.Counts[DevInProgress] == 0 && !j.Spec.IncludeFuture {
		return s.finish(ctx, jid, StateCompleted, "")
	}
	if err := s.issueBatch(ctx, j, now); err != nil {
		return err
	}
	if j, err = s.load(ctx, jid); err == nil {
		s.publishIfChanged(ctx, j, beforeState, before)
	}
	return err
}

// abortReason applies the abort rule; "" when the job may go on.
func (s *Service) abortReason(j *Job) string {
	a := j.Spec.Abort
	if a == nil {
		return ""
	}
	done := j.Counts[DevSucceeded] + j.Counts[DevFailed]
	failed := j.Counts[DevFailed]
	min := a.MinExecuted
	if j.Phase == "canary" && j.Counts[DevInProgress] == 0 {
		min = 1 // a finished canary is judged on its own
	}
	if done < min || done == 0 {
		return ""
	}
	of, what := done, "ended"
	if a.CountInProgress {
		of, what = done+j.Counts[DevInProgress], "started"
	}
	if pct := 100 * float64(failed) / float64(of); pct > a.MaxFailurePercent {
		return fmt.Sprintf("failure rate %.1f%% above max_failure_percent %g (%d of %d parts %s failed)", pct, a.MaxFailurePercent, failed, of, what)
	}
	return ""
}

// finish ends a running or paused job and cleans it up.
func (s *Service) finish(ctx context.Context, jid, to, reason string) error {
	ok, _, err := s.setState(ctx, jid, to, StateScheduled+","+StateRunning+","+StatePaused, reason, fFinished)
	if err != nil || !ok {
		return err
	}
	j, err := s.load(ctx, jid)
	if err != nil {
		return err
	}
	s.log.Info().Str("job", jid).Str("state", to).Str("reason", reason).Msg("job ended")
	return s.cleanup(ctx, j)
}

// cleanup closes a final job: devices never reached become not_run,
// parts still in flight abandoned (their services carry on), holds are
// released, and the job leaves the active set.
func (s *Service) cleanup(ctx context.Context, j *Job) error {
	why := "the job was " + j.State + " before this device's part was issued"
	if j.State == StateExpired {
		why = "the job expired before this device was online"
	}
	queued, err := s.rdb.ZRange(ctx, s.jk(j.ID).queue, 0, -1).Result()
	if err != nil {
		return backend.Unavailable("job "+j.ID+": cleanup", err)
	}
	for _, dev := range queued {
		if _, err := s.move(ctx, j.ID, dev, DevQueued, DevNotRun, why, ""); err != nil {
			return err
		}
		s.release(ctx, j, dev) // a hold taken just before the end
	}
	flight, err := s.rdb.SMembers(ctx, s.jk(j.ID).flight).Result()
	if err != nil {
		return backend.Unavailable("job "+j.ID+": cleanup", err)
	}
	for _, dev := range flight {
		if _, err := s.move(ctx, j.ID, dev, DevInProgress, DevAbandoned, "the job ended ("+j.State+") before the outcome was known", ""); err != nil {
			return err
		}
		s.release(ctx, j, dev)
	}
	if err := s.rdb.ZRem(ctx, s.activeKey(), j.ID).Err(); err != nil {
		return backend.Unavailable("job "+j.ID+": cleanup", err)
	}
	s.m.jobs.WithLabelValues(j.State).Inc()
	if j, err := s.load(ctx, j.ID); err == nil {
		s.publish(ctx, j)
	}
	return nil
}

// reconcile records the outcomes of the parts in flight.
func (s *Service) reconcile(ctx context.Context, j *Job) error {
	k := s.jk(j.ID)
	flight, err := s.rdb.SMembers(ctx, k.flight).Result()
	if err != nil || len(flight) == 0 {
		return err
	}
	refs, err := s.rdb.HMGet(ctx, k.ref, flight...).Result()
	if err != nil {
		return backend.Unavailable("job "+j.ID+": reconcile", err)
	}
	for i, dev := range flight {
		ref, _ := refs[i].(string)
		o, err := s.observe(ctx, j, dev, ref)
		if err != nil {
			s.log.Warn().Err(err).Str("job", j.ID).Str("device", dev).Msg("part outcome not readable now")
			continue
		}
		if !o.done {
			continue
		}
		to, label := DevFailed, "failed"
		if o.ok {
			to, label = DevSucceeded, "succeeded"
		}
		moved, err := s.move(ctx, j.ID, dev, DevInProgress, to, o.reason, "")
		if err != nil {
			return err
		}
		if moved {
			s.m.parts.WithLabelValues(j.Kind, label).Inc()
			j.Counts[DevInProgress]--
			j.Counts[to]++
		}
		s.release(ctx, j, dev)
	}
	return nil
}

// join queues the devices that match an include_future job now.
func (s *Service) join(ctx context.Context, j *Job) error {
	sel, err := selector.Parse(j.Spec.Selector)
	if err != nil {
		return err
	}
	devs, err := s.matching(ctx, sel)
	if err != nil {
		return err
	}
	n, err := s.addDevices(ctx, j.ID, devs)
	if n > 0 {
		s.log.Info().Str("job", j.ID).Int("devices", n).Msg("devices joined the job")
		j.Counts[DevQueued] += n
	}
	return err
}

// queuePage is how many queued devices a batch reads at a time.
const queuePage = 256

// testCrashAfterIssue, set by tests, makes issueBatch stop dead after a
// part is issued and before the job records it, as a kill -9 there would.
var testCrashAfterIssue atomic.Bool

var errTestCrash = errors.New("test: crash after issue")

// issueBatch issues the next batch of parts when pacing allows: up to
// batch_size (or the canary) online queued devices, then no batch for
// issued/max_per_minute minutes.
func (s *Service) issueBatch(ctx context.Context, j *Job, now time.Time) error {
	if now.UnixMilli() < j.nextAt {
		return nil
	}
	size := j.Spec.BatchSize
	if j.Spec.SerialBatches && j.Counts[DevInProgress] > 0 {
		return nil // the previous batch must end first
	}
	switch {
	case j.Phase == "canary" && j.Counts[DevInProgress] > 0:
		return nil // the canary must end first
	case j.Phase == "canary":
		if err := s.rdb.HSet(ctx, s.jk(j.ID).job, fPhase, "rollout").Err(); err != nil {
			return backend.Unavailable("job "+j.ID, err)
		}
	case j.Phase == "" && j.Spec.Canary > 0:
		size = j.Spec.Canary
		if err := s.rdb.HSet(ctx, s.jk(j.ID).job, fPhase, "canary").Err(); err != nil {
			return backend.Unavailable("job "+j.ID, err)
		}
	}
	// The queue is read a page at a time, only as far as this batch needs:
	// at 100,000 devices a whole-queue read every tick was megabytes. Pages
	// follow the join order (the score), which the moves out of the queue
	// below cannot shift.
	issued, after := 0, "-inf"
	for issued < size {
		page, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: s.jk(j.ID).queue,
			ByScore: true, Start: after, Stop: "+inf", Count: queuePage}).Result()
		if err != nil {
			return backend.Unavailable("job "+j.ID+": queue", err)
		}
		if len(page) == 0 {
			break
		}
		after = "(" + strconv.FormatFloat(page[len(page)-1].Score, 'f', -1, 64)
		chunk := make([]string, len(page))
		for i, z := range page {
			chunk[i], _ = z.Member.(string)
		}
		pres, err := s.presence(ctx, chunk)
		if err != nil {
			return err
		}
		for i, dev := range chunk {
			if issued >= size {
				break
			}
			// Checked at the device's turn, online or not: a disabled
			// device cannot come back to take its part.
			if why := lifecycleSkip(pres[i].state); why != "" {
				if err := s.skip(ctx, j, dev, why); err != nil {
					return err
				}
				continue
			}
			if !pres[i].online {
				continue // its part waits until it is back
			}
			// An operator may pause or cancel the job during the batch.
			if st, err := s.rdb.HGet(ctx, s.jk(j.ID).job, fState).Result(); err != nil || st != StateRunning {
				return err
			}
			ok, err := s.issueOne(ctx, j, dev)
			if err != nil {
				return err
			}
			if ok {
				issued++
			}
		}
	}
	if issued > 0 {
		// Pace from when this batch was due, not from the tick that found
		// it due: ticks land up to one Tick late, and counting from them
		// stretched a 20 s job to 27 s. A batch due longer ago than one
		// interval (a pause, or devices that were offline) starts afresh
		// from now; either way the next batch is due after now, so no
		// burst makes up for lost time.
		interval := time.Duration(issued) * time.Minute / time.Duration(j.Spec.MaxPerMinute)
		base := now
		if due := time.UnixMilli(j.nextAt); j.nextAt > 0 && now.Sub(due) < interval {
			base = due
		}
		next := base.Add(interval)
		if err := s.rdb.HSet(ctx, s.jk(j.ID).job, fNextAt, next.UnixMilli()).Err(); err != nil {
			return backend.Unavailable("job "+j.ID, err)
		}
	}
	return nil
}

// presence is what a batch reads of a device before its turn.
type presence struct {
	online bool
	state  string // lifecycle state; "" is active
}

// presence reads the presence and lifecycle state of devs in one
// pipelined round trip.
func (s *Service) presence(ctx context.Context, devs []string) ([]presence, error) {
	cmds := make([]*redis.SliceCmd, len(devs))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, d := range devs {
			cmds[i] = p.HMGet(ctx, s.keys.Device(d), deviceOnline, backend.FieldState)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, backend.Unavailable("jobs: presence", err)
	}
	out := make([]presence, len(devs))
	for i, c := range cmds {
		v := c.Val()
		if len(v) == 2 {
			on, _ := v[0].(string)
			st, _ := v[1].(string)
			out[i] = presence{online: on == "1", state: st}
		}
	}
	return out, nil
}

// lifecycleSkip is the reason a device in lifecycle state st is skipped
// (the state's name, as rollouts record it), or "" when it takes parts.
func lifecycleSkip(st string) string {
	switch st {
	case backend.StateDisabled, backend.StateDecommissioned:
		return st
	}
	return ""
}

// skip moves queued dev to skipped with reason why.
func (s *Service) skip(ctx context.Context, j *Job, dev, why string) error {
	moved, err := s.move(ctx, j.ID, dev, DevQueued, DevSkipped, why, "")
	if moved {
		s.m.parts.WithLabelValues(j.Kind, "skipped").Inc()
		j.Counts[DevQueued]--
		j.Counts[DevSkipped]++
	}
	return err
}

// issueOne takes dev's hold for the job's kind and issues its part. It
// reports whether a part was issued (false: the device was skipped).
func (s *Service) issueOne(ctx context.Context, j *Job, dev string) (bool, error) {
	hold := s.partKey(dev, j.Kind)
	took, err := s.rdb.SetNX(ctx, hold, j.ID, 0).Result()
	if err != nil {
		return false, backend.Unavailable("job "+j.ID+": hold "+dev, err)
	}
	if !took {
		other, err := s.rdb.Get(ctx, hold).Result()
		if err != nil && err != redis.Nil {
			return false, backend.Unavailable("job "+j.ID+": hold "+dev, err)
		}
		if other != j.ID { // ours: taken before a restart
			_, err := s.move(ctx, j.ID, dev, DevQueued, DevSkipped, "device is in job "+other+", whose "+j.Kind+" part has not ended", "")
			s.m.parts.WithLabelValues(j.Kind, "skipped").Inc()
			return false, err
		}
	}
	ref, skipped, err := s.issue(ctx, j, dev)
	if err != nil {
		if !skipped {
			s.release(ctx, j, dev)
			return false, fmt.Errorf("issue part to %s: %w", dev, err)
		}
		if _, merr := s.move(ctx, j.ID, dev, DevQueued, DevSkipped, reasonOf(err), ""); merr != nil {
			return false, merr
		}
		s.release(ctx, j, dev)
		s.m.parts.WithLabelValues(j.Kind, "skipped").Inc()
		return false, nil
	}
	if testCrashAfterIssue.Load() {
		return false, errTestCrash
	}
	if _, err := s.move(ctx, j.ID, dev, DevQueued, DevInProgress, "", ref); err != nil {
		return false, err
	}
	s.m.parts.WithLabelValues(j.Kind, "issued").Inc()
	j.Counts[DevQueued]--
	j.Counts[DevInProgress]++
	return true, nil
}

// reasonOf is a service error as a device reason; a refusal for the
// device's lifecycle state (disabled between the check and the issue) is
// that state's name, as the check records it.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, backend.ErrDisabled):
		return backend.StateDisabled
	case errors.Is(err, backend.ErrDecommissioned):
		return backend.StateDecommissioned
	}
	var be *backend.Error
	if errors.As(err, &be) && be.Message != "" {
		return be.Message
	}
	return err.Error()
}

// release drops dev's hold when it is still this job's.
func (s *Service) release(ctx context.Context, j *Job, dev string) {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.partKey(dev, j.Kind)}, j.ID).Err(); err != nil {
		s.log.Warn().Err(err).Str("job", j.ID).Str("device", dev).Msg("release part hold")
	}
}

// Event is a job progress event, published on Topic(jid).
type Event struct {
	Job     string         `json:"job"`
	Kind    string         `json:"kind"`
	State   string         `json:"state"`
	Reason  string         `json:"reason,omitempty"`
	Counts  map[string]int `json:"counts"`
	Total   int            `json:"total"`
	Percent float64        `json:"percent"`
	At      time.Time      `json:"at"`
}

func (s *Service) publishIfChanged(ctx context.Context, j *Job, state string, before int) {
	if j.State != state || j.Counts[DevInProgress]*1_000_000+j.Counts[DevQueued] != before {
		s.publish(ctx, j)
	}
}

// publish sends j's progress on its topic (QoS 1, not retained).
func (s *Service) publish(ctx context.Context, j *Job) {
	if s.cfg.Bus == nil {
		return
	}
	b, err := json.Marshal(Event{Job: j.ID, Kind: j.Kind, State: j.State, Reason: j.Reason, Counts: j.Counts,
		Total: j.Total, Percent: j.Percent, At: s.now().UTC()})
	if err == nil {
		err = s.cfg.Bus.Publish(ctx, topic(j.ID), b, 1)
	}
	if err != nil {
		s.log.Warn().Err(err).Str("job", j.ID).Msg("publish job event")
	}
}
