package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// The /api/v1/rollouts alias: a rollout is a firmware job, shown in the
// rollout shape the CLI (`ecowatt fota rollout|status`) and the
// dashboard's rollout page read. Creating one creates a firmware job
// with serial_batches (a batch waits for the previous one, as rollouts
// did) and an abort rule over the parts started (count_in_progress, the
// share rollouts judged). Its ID is "ro-" + the job's ID, so
// /api/v1/jobs/{jid} shows the same job. Rollouts created by the old
// engine before the upgrade (IDs ro-YYYYMMDD-...) are still read,
// paused, resumed and aborted through it until they end.

// RolloutPrefix starts the rollout ID of a firmware job.
const RolloutPrefix = "ro-"

// LegacyRollouts is the rollout engine that came before jobs
// (*fota.Service has it); only rollouts it created are sent to it.
type LegacyRollouts interface {
	Rollout(ctx context.Context, rid string) (fota.Rollout, error)
	Rollouts(ctx context.Context) ([]fota.Rollout, error)
	PauseRollout(ctx context.Context, rid string) (fota.Rollout, error)
	ResumeRollout(ctx context.Context, rid string) (fota.Rollout, error)
	AbortRollout(ctx context.Context, rid string) (fota.Rollout, error)
}

var _ LegacyRollouts = (*fota.Service)(nil)

// Rollouts serves /api/v1/rollouts over the job engine.
type Rollouts struct {
	jobs   *Service
	legacy LegacyRollouts // nil: no rollouts from before the upgrade
}

// NewRollouts is the rollout alias over s; legacy may be nil.
func NewRollouts(s *Service, legacy LegacyRollouts) *Rollouts {
	return &Rollouts{jobs: s, legacy: legacy}
}

// jobOf is the job ID of a rollout ID, or "" for a legacy rollout.
func jobOf(rid string) string {
	if jid, ok := strings.CutPrefix(rid, RolloutPrefix); ok && validJID(jid) {
		return jid
	}
	return ""
}

func noRollout(rid string) error {
	return backend.Errorf(backend.CodeNotFound, "rid", "no rollout %q", rid)
}

// CreateRollout validates spec as rollouts always have (the same fields,
// defaults and messages) and creates its firmware job.
func (a *Rollouts) CreateRollout(ctx context.Context, spec fota.RolloutSpec, by string) (fota.Rollout, error) {
	canary, size, pct := fota.DefaultCanary, spec.BatchSize, float64(fota.DefaultMaxFailurePercent)
	if spec.Canary != nil {
		canary = *spec.Canary
	}
	if size == 0 {
		size = fota.DefaultBatchSize
	}
	if spec.MaxFailurePercent != nil {
		pct = *spec.MaxFailurePercent
	}
	switch {
	case spec.Version == "":
		return fota.Rollout{}, invalid("version", "version is required")
	case canary < 0 || canary > MaxBatchSize:
		return fota.Rollout{}, invalid("canary", "canary must be 0-%d devices", MaxBatchSize)
	case size < 1 || size > MaxBatchSize:
		return fota.Rollout{}, invalid("batch_size", "batch_size must be 1-%d", MaxBatchSize)
	case pct < 0 || pct > 100:
		return fota.Rollout{}, invalid("max_failure_percent", "max_failure_percent must be 0-100")
	case !spec.Devices.All && len(spec.Devices.IDs) == 0:
		return fota.Rollout{}, invalid("devices", `devices must name at least one device, or be "all"`)
	}
	if err := a.checkDevices(ctx, spec.Devices.IDs); err != nil {
		return fota.Rollout{}, err
	}
	sp := Spec{Devices: spec.Devices.IDs, All: spec.Devices.All, Firmware: &FirmwareAction{Version: spec.Version},
		MaxPerMinute: MaxPerMinute, BatchSize: size, Canary: canary, SerialBatches: true}
	if pct < 100 { // 100% never aborts; a job's rule must be below 100
		sp.Abort = &AbortRule{MaxFailurePercent: pct, MinExecuted: 1, CountInProgress: true}
	}
	body, err := json.Marshal(sp)
	if err != nil {
		return fota.Rollout{}, err
	}
	if by == "" {
		by = "api"
	}
	j, err := a.jobs.Create(ctx, body, by)
	if err != nil {
		var be *backend.Error
		if errors.As(err, &be) && be.Field == "firmware.version" {
			be.Field = "version" // the rollout's name for it
		}
		return fota.Rollout{}, err
	}
	return a.Rollout(ctx, RolloutPrefix+j.ID)
}

// checkDevices refuses a rollout's device list as rollouts always have:
// every unknown device named at once (CodeInvalid), and a device with an
// update in progress (CodeConflict) rather than a skip at its turn.
func (a *Rollouts) checkDevices(ctx context.Context, ids []string) error {
	if len(ids) == 0 || len(ids) > MaxDevicesListed {
		return nil // "all", or the job's own limit error
	}
	s := a.jobs
	cmds := make([]*redis.SliceCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			if topics.ValidateID(id) == nil {
				cmds[i] = p.HMGet(ctx, s.keys.Device(id), "id", backend.FOTAActive, backend.FOTATarget)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return backend.Unavailable("create rollout: devices", err)
	}
	var unknown, busy []string
	for i, c := range cmds {
		if c == nil {
			return invalid("devices", "bad device ID %q", ids[i])
		}
		switch v := c.Val(); {
		case len(v) < 3 || v[0] == nil:
			unknown = append(unknown, ids[i])
		case v[1] == "1":
			busy = append(busy, fmt.Sprintf("%s (to %v)", ids[i], v[2]))
		}
	}
	if len(unknown) > 0 {
		return invalid("devices", "unknown devices: %s", listIDs(unknown))
	}
	if len(busy) > 0 {
		return backend.Errorf(backend.CodeConflict, "devices", "devices with an update in progress: %s", listIDs(busy))
	}
	return nil
}

func listIDs(ids []string) string {
	if len(ids) > 10 {
		return strings.Join(ids[:10], ", ") + fmt.Sprintf(" and %d more", len(ids)-10)
	}
	return strings.Join(ids, ", ")
}

// Rollout returns one rollout with its batches and devices.
func (a *Rollouts) Rollout(ctx context.Context, rid string) (fota.Rollout, error) {
	jid := jobOf(rid)
	if jid == "" {
		if a.legacy == nil {
			return fota.Rollout{}, noRollout(rid)
		}
		return a.legacy.Rollout(ctx, rid)
	}
	j, err := a.firmwareJob(ctx, jid, rid)
	if err != nil {
		return fota.Rollout{}, err
	}
	return a.render(ctx, j, "")
}

// Rollouts returns every firmware job as a rollout (and the legacy
// rollouts), newest first, without per-device detail.
func (a *Rollouts) Rollouts(ctx context.Context) ([]fota.Rollout, error) {
	js, err := a.jobs.List(ctx, MaxPageSize)
	if err != nil {
		return nil, err
	}
	out := []fota.Rollout{}
	for _, j := range js {
		if j.Kind != KindFirmware {
			continue
		}
		// Only the rows whose rollout state is not the job's own: the
		// list stays cheap for large jobs.
		r, err := a.render(ctx, j, DevFailed+","+DevAbandoned)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if a.legacy != nil {
		old, err := a.legacy.Rollouts(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, old...)
		sort.SliceStable(out, func(i, k int) bool { return out[i].CreatedAt.After(out[k].CreatedAt) })
	}
	return out, nil
}

// PauseRollout pauses the rollout's job.
func (a *Rollouts) PauseRollout(ctx context.Context, rid string) (fota.Rollout, error) {
	return a.operate(ctx, rid, a.jobs.Pause, LegacyRollouts.PauseRollout)
}

// ResumeRollout resumes the rollout's job.
func (a *Rollouts) ResumeRollout(ctx context.Context, rid string) (fota.Rollout, error) {
	return a.operate(ctx, rid, a.jobs.Resume, LegacyRollouts.ResumeRollout)
}

// AbortRollout cancels the rollout's job: devices not reached are
// cancelled (not_run), updates in progress carry on and are still shown.
func (a *Rollouts) AbortRollout(ctx context.Context, rid string) (fota.Rollout, error) {
	return a.operate(ctx, rid, a.jobs.Cancel, LegacyRollouts.AbortRollout)
}

func (a *Rollouts) operate(ctx context.Context, rid string, op func(context.Context, string) (Job, error),
	legacy func(LegacyRollouts, context.Context, string) (fota.Rollout, error)) (fota.Rollout, error) {
	jid := jobOf(rid)
	if jid == "" {
		if a.legacy == nil {
			return fota.Rollout{}, noRollout(rid)
		}
		return legacy(a.legacy, ctx, rid)
	}
	if _, err := a.firmwareJob(ctx, jid, rid); err != nil {
		return fota.Rollout{}, err
	}
	j, err := op(ctx, jid)
	if err != nil {
		return fota.Rollout{}, err
	}
	return a.render(ctx, j, "")
}

func (a *Rollouts) firmwareJob(ctx context.Context, jid, rid string) (Job, error) {
	j, err := a.jobs.Get(ctx, jid)
	if backend.ErrorCode(err) == backend.CodeNotFound || (err == nil && j.Kind != KindFirmware) {
		return Job{}, noRollout(rid)
	}
	return j, err
}

// rolloutState is a job state as a rollout state.
func rolloutState(st string) string {
	switch st {
	case StateScheduled, StateRunning:
		return fota.RolloutRunning
	case StatePaused:
		return fota.RolloutPaused
	case StateCompleted:
		return fota.RolloutCompleted
	}
	return fota.RolloutAborted // aborted, cancelled (the operator's abort), expired
}

// devState is a job device state as a rollout device state; abandoned
// (the job ended first) is read from the device, since the update
// carries on.
func devState(st string, final bool) string {
	switch st {
	case DevQueued:
		if final {
			return fota.DevCancelled // the engine has not cleaned up yet
		}
		return fota.DevPending
	case DevInProgress:
		return fota.DevUpdating
	case DevNotRun:
		return fota.DevCancelled
	}
	return st // succeeded, failed, skipped
}

// render shows job j as a rollout. With states "" it reads every device
// (detail); otherwise only the devices in those states, to correct the
// counts (the list).
func (a *Rollouts) render(ctx context.Context, j Job, states string) (fota.Rollout, error) {
	sp := j.Spec
	r := fota.Rollout{ID: RolloutPrefix + j.ID, State: rolloutState(j.State), Reason: j.Reason,
		Canary: sp.Canary, BatchSize: sp.BatchSize, MaxFailurePercent: 100, Total: j.Total,
		CreatedAt: j.CreatedAt, UpdatedAt: j.CreatedAt, FinishedAt: j.FinishedAt}
	if sp.Firmware != nil {
		r.Version = sp.Firmware.Version
	}
	if sp.Abort != nil {
		r.MaxFailurePercent = sp.Abort.MaxFailurePercent
	}
	for _, t := range []*time.Time{j.StartedAt, j.FinishedAt} {
		if t != nil && t.After(r.UpdatedAt) {
			r.UpdatedAt = *t
		}
	}
	final := JobFinal(j.State)
	starts := fota.BatchLayout(j.Total, sp.Canary, sp.BatchSize)
	r.BatchCount = len(starts)
	r.Counts = make(map[string]int, len(fota.DevStates))
	for _, st := range fota.DevStates {
		r.Counts[st] = 0
	}
	var rows []DeviceRow
	if states == "" {
		var err error
		if rows, err = a.rows(ctx, j.ID, ""); err != nil {
			return fota.Rollout{}, err
		}
	} else {
		for st, n := range j.Counts {
			if !strings.Contains(","+states+",", ","+st+",") {
				r.Counts[devState(st, final)] += n
			}
		}
		for _, st := range strings.Split(states, ",") {
			if j.Counts[st] == 0 {
				continue
			}
			got, err := a.rows(ctx, j.ID, st)
			if err != nil {
				return fota.Rollout{}, err
			}
			rows = append(rows, got...)
		}
	}
	devs, err := a.devices(ctx, j, rows)
	if err != nil {
		return fota.Rollout{}, err
	}
	r.DeviceStates = map[string]int{}
	for _, d := range devs {
		r.Counts[d.State]++
		if d.State == fota.DevUpdating && d.FOTA != "" {
			r.DeviceStates[d.FOTA]++
		}
		if rw := d.row; rw.IssuedAt != nil && rw.IssuedAt.After(r.UpdatedAt) {
			r.UpdatedAt = *rw.IssuedAt
		}
	}
	if n := r.Counts[fota.DevUpdating] + r.Counts[fota.DevSucceeded] + r.Counts[fota.DevFailed]; n > 0 {
		r.FailurePercent = float64(int(1000*float64(r.Counts[fota.DevFailed])/float64(n))) / 10
	}
	// The latest started batch: the one holding the last device that is
	// no longer waiting, in the target's order.
	reached := j.Total - j.Counts[DevQueued] - j.Counts[DevNotRun]
	r.CurrentBatch = batchOf(starts, reached-1)
	if states != "" {
		return r, nil
	}
	// Detail: the devices in the target's order, batch by batch.
	order := sp.Devices
	if len(order) == 0 {
		order = make([]string, 0, len(devs))
		for _, d := range devs {
			order = append(order, d.ID) // rows come in ID order, as a selector job queues them
		}
	}
	byID := make(map[string]rolloutDev, len(devs))
	for _, d := range devs {
		byID[d.ID] = d
	}
	r.CurrentBatch = -1
	r.Devices = make([]fota.RolloutDevice, 0, len(order))
	for i, id := range order {
		d, ok := byID[id]
		if !ok {
			continue
		}
		d.Batch = batchOf(starts, i)
		if d.row.State != DevQueued && d.row.State != DevNotRun {
			r.CurrentBatch = max(r.CurrentBatch, d.Batch)
		}
		r.Devices = append(r.Devices, d.RolloutDevice)
	}
	for i, st := range starts {
		end := len(r.Devices)
		if i+1 < len(starts) {
			end = min(starts[i+1], end)
		}
		bp := fota.BatchProgress{Index: i, Canary: i == 0 && sp.Canary > 0, Size: max(end-st, 0), Counts: map[string]int{}}
		for _, d := range r.Devices[min(st, end):end] {
			bp.Counts[d.State]++
		}
		switch {
		case i > r.CurrentBatch:
			bp.State = "waiting"
		case bp.Counts[fota.DevPending]+bp.Counts[fota.DevUpdating] > 0:
			bp.State = "running"
		default:
			bp.State = "done"
		}
		r.Batches = append(r.Batches, bp)
	}
	return r, nil
}

// batchOf is the batch of the device at index i (-1 before the first).
func batchOf(starts []int, i int) int {
	b := -1
	for k, st := range starts {
		if i >= st {
			b = k
		}
	}
	return b
}

// rows reads every device row of job jid in state ("" all).
func (a *Rollouts) rows(ctx context.Context, jid, state string) ([]DeviceRow, error) {
	var out []DeviceRow
	cursor := ""
	for {
		p, err := a.jobs.Devices(ctx, jid, state, cursor, MaxPageSize)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Devices...)
		if p.Next == "" {
			return out, nil
		}
		cursor = p.Next
	}
}

type rolloutDev struct {
	fota.RolloutDevice
	row DeviceRow
}

// devices maps job rows to rollout devices. Devices being updated, and
// abandoned ones (their update outlives the job), are read from their
// device hash in one pipelined round trip.
func (a *Rollouts) devices(ctx context.Context, j Job, rows []DeviceRow) ([]rolloutDev, error) {
	s := a.jobs
	final := JobFinal(j.State)
	cmds := make([]*redis.SliceCmd, len(rows))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, rw := range rows {
			if rw.State == DevInProgress || rw.State == DevAbandoned {
				cmds[i] = p.HMGet(ctx, s.keys.Device(rw.Device), "id", backend.FOTARollout, backend.FOTAActive,
					backend.FOTAResult, backend.FOTAReason, backend.FOTAState, backend.FOTAReceived, backend.FOTATotal)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, backend.Unavailable("rollout "+RolloutPrefix+j.ID, err)
	}
	out := make([]rolloutDev, len(rows))
	for i, rw := range rows {
		d := fota.RolloutDevice{ID: rw.Device, State: devState(rw.State, final), Reason: rw.Reason}
		if rw.State == DevFailed {
			// A firmware part's reason is "firmware RESULT[: why]"; a
			// cancelled update (decommission) is cancelled, not failed.
			why := strings.TrimPrefix(rw.Reason, "firmware ")
			if rest, ok := strings.CutPrefix(why, fota.ResultCancelled+": "); ok {
				d.State, why = fota.DevCancelled, rest
			}
			d.Reason = why
		}
		if c := cmds[i]; c != nil {
			v := c.Val()
			str := func(k int) string { x, _ := v[k].(string); return x }
			mine := str(1) == tag(j.ID)
			if rw.State == DevAbandoned {
				d.State, d.Reason = fota.DevFailed, ""
				switch {
				case str(0) == "":
					d.Reason = "device removed"
				case !mine:
					d.Reason = "superseded by another update"
				case str(2) == "1":
					d.State = fota.DevUpdating
				case str(3) == fota.ResultSucceeded:
					d.State = fota.DevSucceeded
				case str(3) == fota.ResultCancelled:
					d.State, d.Reason = fota.DevCancelled, str(4)
				default:
					d.Reason = str(3)
					if rs := str(4); rs != "" {
						d.Reason += ": " + rs
					}
				}
			}
			if d.State == fota.DevUpdating && mine {
				d.FOTA = str(5)
				d.Received, _ = strconv.Atoi(str(6))
				d.Total, _ = strconv.Atoi(str(7))
				if d.Total > 0 {
					d.Percent = float64(int(1000*float64(d.Received)/float64(d.Total))) / 10
				}
			}
		}
		out[i] = rolloutDev{RolloutDevice: d, row: rw}
	}
	return out, nil
}
