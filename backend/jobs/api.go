package jobs

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// Create validates a job body and creates the job, scheduled; the engine
// starts it at its next tick. Bad input is CodeInvalid naming the field,
// a target matching no device (without include_future) CodeConflict;
// neither creates anything. by names the operator.
func (s *Service) Create(ctx context.Context, body []byte, by string) (Job, error) {
	now := s.now()
	sp, sel, err := ParseSpec(body, now)
	if err != nil {
		return Job{}, err
	}
	if err := s.checkState(ctx, &sp); err != nil {
		return Job{}, err
	}
	devs, err := s.targets(ctx, sp, sel)
	if err != nil {
		return Job{}, err
	}
	if len(devs) == 0 && !sp.IncludeFuture {
		return Job{}, backend.Errorf(backend.CodeConflict, "selector", "the target matches no device; nothing to do (set include_future to wait for devices that match later)")
	}
	jid, err := s.newID()
	if err != nil {
		return Job{}, err
	}
	spec, err := json.Marshal(sp)
	if err != nil {
		return Job{}, err
	}
	k := s.jk(jid)
	fields := []any{fSpec, spec, fKind, sp.Kind(), fState, StateScheduled, fBy, by, fCreated, now.UnixMilli(), fSeq, 0}
	for _, st := range DeviceStates {
		fields = append(fields, countPfx+st, 0)
	}
	if err := s.rdb.HSet(ctx, k.job, fields...).Err(); err != nil {
		return Job{}, backend.Unavailable("create job", err)
	}
	if _, err := s.addDevices(ctx, jid, devs); err != nil {
		return Job{}, err
	}
	pipe := s.rdb.Pipeline()
	pipe.ZAdd(ctx, s.indexKey(), redis.Z{Score: float64(now.UnixMilli()), Member: jid})
	pipe.ZAdd(ctx, s.activeKey(), redis.Z{Score: float64(now.UnixMilli()), Member: jid})
	if _, err := pipe.Exec(ctx); err != nil {
		return Job{}, backend.Unavailable("create job: index", err)
	}
	s.log.Info().Str("job", jid).Str("kind", sp.Kind()).Int("devices", len(devs)).Str("by", by).Msg("job created")
	j, err := s.load(ctx, jid)
	if err != nil {
		return Job{}, err
	}
	s.publish(ctx, j)
	return *j, nil
}

// targets lists the devices a spec names now: every device a selector
// matches, or the listed devices (each must exist).
func (s *Service) targets(ctx context.Context, sp Spec, sel selector.Selector) ([]string, error) {
	if len(sp.Devices) > 0 {
		for i, d := range sp.Devices {
			if _, err := s.cfg.Fleet.Device(ctx, d); err != nil {
				if backend.ErrorCode(err) == backend.CodeNotFound {
					return nil, invalid("devices", "devices[%d]: no device %q", i, d)
				}
				return nil, err
			}
		}
		return sp.Devices, nil
	}
	return s.matching(ctx, sel)
}

// matching pages through every device sel matches, in ID order.
func (s *Service) matching(ctx context.Context, sel selector.Selector) ([]string, error) {
	var out []string
	q := backend.FleetQuery{Selector: sel, Limit: backend.MaxPageLimit}
	for {
		p, err := s.cfg.Fleet.QueryDevices(ctx, q)
		if err != nil {
			return nil, err
		}
		for _, d := range p.Devices {
			out = append(out, d.ID)
		}
		if p.Next == "" {
			return out, nil
		}
		q.Cursor = p.Next
	}
}

// newID returns a fresh job ID (a ULID: sortable by creation).
func (s *Service) newID() (string, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	id, err := ulid.New(ulid.Timestamp(s.now()), s.random)
	if err != nil {
		return "", &backend.Error{Code: backend.CodeInternal, Message: "no job id", Err: err}
	}
	return id.String(), nil
}

// Get returns job jid with its progress counts.
func (s *Service) Get(ctx context.Context, jid string) (Job, error) {
	j, err := s.load(ctx, jid)
	if err != nil {
		return Job{}, err
	}
	return *j, nil
}

// List returns up to limit jobs, newest first (limit 0: DefaultPageSize).
func (s *Service) List(ctx context.Context, limit int) ([]Job, error) {
	if limit == 0 {
		limit = DefaultPageSize
	}
	if limit < 1 || limit > MaxPageSize {
		return nil, invalid("limit", "limit must be 1-%d", MaxPageSize)
	}
	ids, err := s.rdb.ZRevRange(ctx, s.indexKey(), 0, int64(limit-1)).Result()
	if err != nil {
		return nil, backend.Unavailable("list jobs", err)
	}
	out := []Job{}
	for _, id := range ids {
		j, err := s.load(ctx, id)
		if backend.ErrorCode(err) == backend.CodeNotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *j)
	}
	return out, nil
}

// Pause stops a scheduled or running job from issuing new parts; parts
// in flight still record their outcomes.
func (s *Service) Pause(ctx context.Context, jid string) (Job, error) {
	return s.operate(ctx, jid, StatePaused, StateScheduled+","+StateRunning, "")
}

// Resume lets a paused job issue parts again.
func (s *Service) Resume(ctx context.Context, jid string) (Job, error) {
	return s.operate(ctx, jid, StateRunning, StatePaused, "")
}

// Cancel ends a job that is not final: no part is issued any more; the
// engine marks the devices not reached not_run at its next tick.
func (s *Service) Cancel(ctx context.Context, jid string) (Job, error) {
	return s.operate(ctx, jid, StateCancelled, StateScheduled+","+StateRunning+","+StatePaused, "cancelled by an operator")
}

func (s *Service) operate(ctx context.Context, jid, to, from, reason string) (Job, error) {
	if !validJID(jid) {
		return Job{}, notFound(jid)
	}
	stamp := ""
	if JobFinal(to) {
		stamp = fFinished
	}
	ok, cur, err := s.setState(ctx, jid, to, from, reason, stamp)
	if err != nil {
		return Job{}, err
	}
	if !ok {
		return Job{}, backend.Errorf(backend.CodeConflict, "state", "job %s is %s; only a job that is %s can be made %s",
			jid, cur, strings.ReplaceAll(from, ",", " or "), to)
	}
	s.log.Info().Str("job", jid).Str("from", cur).Str("to", to).Msg("job state changed by an operator")
	j, err := s.load(ctx, jid)
	if err != nil {
		return Job{}, err
	}
	s.publish(ctx, j)
	return *j, nil
}
