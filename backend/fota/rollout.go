package fota

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
)

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutCompleted = "completed"
	RolloutAborted   = "aborted"
)

// States of a device in a rollout.
const (
	DevPending   = "pending"   // its batch has not started
	DevUpdating  = "updating"  // update started, not finished
	DevSucceeded = "succeeded" // runs the new version
	DevFailed    = "failed"    // failed, rolled back or timed out: counts against the threshold
	DevSkipped   = "skipped"   // not updated: already on the version (or newer), busy or removed
	DevCancelled = "cancelled" // the rollout was aborted before its batch started
)

// DevStates lists the device states in display order.
var DevStates = []string{DevPending, DevUpdating, DevSucceeded, DevFailed, DevSkipped, DevCancelled}

// Defaults of RolloutSpec.
const (
	DefaultCanary            = 1
	DefaultBatchSize         = 50
	DefaultMaxFailurePercent = 10
)

// Selector is the devices of a rollout: a JSON array of IDs or "all".
type Selector struct {
	All bool
	IDs []string
}

// UnmarshalJSON reads ["a","b"] or "all".
func (d *Selector) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte(`"all"`)) {
		*d = Selector{All: true}
		return nil
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		return errors.New(`devices must be an array of device IDs or "all"`)
	}
	*d = Selector{IDs: ids}
	return nil
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (d Selector) MarshalJSON() ([]byte, error) {
	if d.All {
		return []byte(`"all"`), nil
	}
	return json.Marshal(d.IDs)
}

// RolloutSpec is what an operator asks for.
type RolloutSpec struct {
	Version           string   `json:"version"`
	Devices           Selector `json:"devices"`
	Canary            *int     `json:"canary,omitempty"`              // default DefaultCanary; 0: no canary batch
	BatchSize         int      `json:"batch_size,omitempty"`          // default DefaultBatchSize
	MaxFailurePercent *float64 `json:"max_failure_percent,omitempty"` // default DefaultMaxFailurePercent
}

// Rollout is a rollout's state and progress.
type Rollout struct {
	ID                string     `json:"id"`
	Version           string     `json:"version"`
	State             string     `json:"state"`
	Reason            string     `json:"reason,omitempty"` // why it was aborted
	Canary            int        `json:"canary"`
	BatchSize         int        `json:"batch_size"`
	MaxFailurePercent float64    `json:"max_failure_percent"`
	Total             int        `json:"total"`
	BatchCount        int        `json:"batch_count"`
	CurrentBatch      int        `json:"current_batch"` // index of the latest started batch; -1 before the first
	CreatedAt         time.Time  `json:"created_at"`
	UpdatedAt         time.Time  `json:"updated_at"`
	FinishedAt        *time.Time `json:"finished_at,omitempty"`

	Counts         map[string]int `json:"counts"`          // devices per rollout state (DevStates)
	FailurePercent float64        `json:"failure_percent"` // failed / started (not skipped)
	// DeviceStates counts the devices being updated by their FOTA state.
	DeviceStates map[string]int  `json:"device_states,omitempty"`
	Batches      []BatchProgress `json:"batches,omitempty"` // set by Rollout, not Rollouts
	Devices      []RolloutDevice `json:"devices,omitempty"` // set by Rollout, not Rollouts
}

// BatchProgress is one batch of a rollout.
type BatchProgress struct {
	Index  int            `json:"index"`
	Canary bool           `json:"canary,omitempty"`
	Size   int            `json:"size"`
	State  string         `json:"state"` // waiting, running, done
	Counts map[string]int `json:"counts"`
}

// RolloutDevice is one device's progress in a rollout.
type RolloutDevice struct {
	ID       string  `json:"id"`
	Batch    int     `json:"batch"`
	State    string  `json:"state"`            // DevStates
	Reason   string  `json:"reason,omitempty"` // for failed and skipped
	FOTA     string  `json:"fota_state,omitempty"`
	Received int     `json:"chunk_received,omitempty"`
	Total    int     `json:"total_chunks,omitempty"`
	Percent  float64 `json:"percent,omitempty"`
}

func (s *Service) roKey(rid string) string   { return s.keys.Prefix() + "{ro:" + rid + "}:ro" }
func (s *Service) roOrder(rid string) string { return s.keys.Prefix() + "{ro:" + rid + "}:order" }
func (s *Service) roDevs(rid string) string  { return s.keys.Prefix() + "{ro:" + rid + "}:devs" }
func (s *Service) roWhy(rid string) string   { return s.keys.Prefix() + "{ro:" + rid + "}:why" }
func (s *Service) roIndex() string           { return s.keys.Global("rollouts") }
func (s *Service) roActive() string          { return s.keys.Global("rollouts:active") }

// BatchLayout returns the start index of each batch: the canary batch
// (when canary > 0), then batches of size.
func BatchLayout(total, canary, size int) []int {
	var starts []int
	i := 0
	if canary > 0 && total > 0 {
		starts = append(starts, 0)
		i = min(canary, total)
	}
	for ; i < total; i += size {
		starts = append(starts, i)
	}
	return starts
}

// CreateRollout validates spec and stores a new rollout in state running;
// the lease holder starts its first batch at its next tick. An unknown
// version or device, a bad number or an empty device list is CodeInvalid;
// a device with an update in progress is CodeConflict. Nothing is stored
// on refusal.
func (s *Service) CreateRollout(ctx context.Context, spec RolloutSpec) (Rollout, error) {
	if _, err := s.load(ctx, spec.Version); err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return Rollout{}, backend.Errorf(backend.CodeInvalid, "version", "no firmware %q is uploaded", spec.Version)
		}
		return Rollout{}, err
	}
	canary, size, pct := DefaultCanary, spec.BatchSize, float64(DefaultMaxFailurePercent)
	if spec.Canary != nil {
		canary = *spec.Canary
	}
	if size == 0 {
		size = DefaultBatchSize
	}
	if spec.MaxFailurePercent != nil {
		pct = *spec.MaxFailurePercent
	}
	switch {
	case canary < 0:
		return Rollout{}, backend.Errorf(backend.CodeInvalid, "canary", "canary must be 0 or more devices")
	case size < 1:
		return Rollout{}, backend.Errorf(backend.CodeInvalid, "batch_size", "batch_size must be at least 1")
	case pct < 0 || pct > 100:
		return Rollout{}, backend.Errorf(backend.CodeInvalid, "max_failure_percent", "max_failure_percent must be 0-100")
	}
	ids, err := s.selectDevices(ctx, spec.Devices)
	if err != nil {
		return Rollout{}, err
	}
	rid, err := s.randomHex(4)
	if err != nil {
		return Rollout{}, fmt.Errorf("create rollout: %w", err)
	}
	now := s.now().UTC()
	rid = "ro-" + now.Format("20060102-150405") + "-" + rid
	starts := BatchLayout(len(ids), canary, size)
	devs := make([]any, 0, 2*len(ids))
	order := make([]any, 0, len(ids))
	for _, id := range ids {
		devs = append(devs, id, DevPending)
		order = append(order, id)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.roKey(rid), "id", rid, "version", spec.Version, "state", RolloutRunning,
			"canary", canary, "batch_size", size, "max_failure_percent", strconv.FormatFloat(pct, 'f', -1, 64),
			"total", len(ids), "batches", len(starts), "batch", -1,
			"created_at", now.UnixMilli(), "updated_at", now.UnixMilli())
		p.RPush(ctx, s.roOrder(rid), order...)
		p.HSet(ctx, s.roDevs(rid), devs...)
		return nil
	})
	if err != nil {
		return Rollout{}, backend.Unavailable("create rollout", err)
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, s.roIndex(), redis.Z{Score: float64(now.UnixMilli()), Member: rid})
		p.ZAdd(ctx, s.roActive(), redis.Z{Score: float64(now.UnixMilli()), Member: rid})
		return nil
	})
	if err != nil {
		return Rollout{}, backend.Unavailable("create rollout: index", err)
	}
	s.log.Info().Str("rollout", rid).Str("version", spec.Version).Int("devices", len(ids)).Int("canary", canary).
		Int("batch_size", size).Float64("max_failure_percent", pct).Msg("rollout created")
	s.poke() // start the first batch now, not at the next sweep
	return s.Rollout(ctx, rid)
}

// selectDevices resolves and checks a rollout's devices.
func (s *Service) selectDevices(ctx context.Context, sel Selector) ([]string, error) {
	var ids []string
	if sel.All {
		all, err := s.fleet.Devices(ctx)
		if err != nil {
			return nil, err
		}
		for _, d := range all {
			ids = append(ids, d.ID)
		}
		if len(ids) == 0 {
			return nil, backend.Errorf(backend.CodeInvalid, "devices", "there are no devices")
		}
	} else {
		if len(sel.IDs) == 0 {
			return nil, backend.Errorf(backend.CodeInvalid, "devices", `devices must name at least one device, or be "all"`)
		}
		seen := make(map[string]bool, len(sel.IDs))
		for _, id := range sel.IDs {
			if topics.ValidateID(id) != nil {
				return nil, backend.Errorf(backend.CodeInvalid, "devices", "bad device ID %q", id)
			}
			if seen[id] {
				return nil, backend.Errorf(backend.CodeInvalid, "devices", "device %s is listed twice", id)
			}
			seen[id] = true
		}
		ids = sel.IDs
	}
	active := make([]*redis.SliceCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			active[i] = p.HMGet(ctx, s.keys.Device(id), "id", backend.FOTAActive, backend.FOTATarget)
		}
		return nil
	})
	if err != nil {
		return nil, backend.Unavailable("create rollout: devices", err)
	}
	var unknown, busy []string
	for i, c := range active {
		v := c.Val()
		if v[0] == nil {
			unknown = append(unknown, ids[i])
		} else if v[1] == "1" {
			busy = append(busy, fmt.Sprintf("%s (to %v)", ids[i], v[2]))
		}
	}
	if len(unknown) > 0 {
		return nil, backend.Errorf(backend.CodeInvalid, "devices", "unknown devices: %s", list(unknown))
	}
	if len(busy) > 0 {
		return nil, backend.Errorf(backend.CodeConflict, "devices", "devices with an update in progress: %s", list(busy))
	}
	return ids, nil
}

func list(ids []string) string {
	if len(ids) > 10 {
		return strings.Join(ids[:10], ", ") + fmt.Sprintf(" and %d more", len(ids)-10)
	}
	return strings.Join(ids, ", ")
}

// rolloutState is a rollout as stored.
type rolloutState struct {
	Rollout
	order []string
	devs  map[string]string
	why   map[string]string
}

func (s *Service) loadRollout(ctx context.Context, rid string) (*rolloutState, error) {
	if topics.ValidateID(rid) != nil {
		return nil, backend.Errorf(backend.CodeNotFound, "rid", "no rollout %q", rid)
	}
	var h *redis.MapStringStringCmd
	var order *redis.StringSliceCmd
	var devs, why *redis.MapStringStringCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		h = p.HGetAll(ctx, s.roKey(rid))
		order = p.LRange(ctx, s.roOrder(rid), 0, -1)
		devs = p.HGetAll(ctx, s.roDevs(rid))
		why = p.HGetAll(ctx, s.roWhy(rid))
		return nil
	})
	if err != nil {
		return nil, backend.Unavailable("load rollout "+rid, err)
	}
	m := h.Val()
	if len(m) == 0 {
		return nil, backend.Errorf(backend.CodeNotFound, "rid", "no rollout %q", rid)
	}
	r := &rolloutState{order: order.Val(), devs: devs.Val(), why: why.Val()}
	r.ID, r.Version, r.State, r.Reason = rid, m["version"], m["state"], m["reason"]
	r.Canary, _ = strconv.Atoi(m["canary"])
	r.BatchSize, _ = strconv.Atoi(m["batch_size"])
	r.MaxFailurePercent, _ = strconv.ParseFloat(m["max_failure_percent"], 64)
	r.Total, _ = strconv.Atoi(m["total"])
	r.BatchCount, _ = strconv.Atoi(m["batches"])
	r.CurrentBatch, _ = strconv.Atoi(m["batch"])
	r.CreatedAt = time.UnixMilli(atoi(m["created_at"])).UTC()
	r.UpdatedAt = time.UnixMilli(atoi(m["updated_at"])).UTC()
	if f := atoi(m["finished_at"]); f > 0 {
		t := time.UnixMilli(f).UTC()
		r.FinishedAt = &t
	}
	r.count()
	return r, nil
}

// count fills Counts and FailurePercent.
func (r *rolloutState) count() {
	r.Counts = make(map[string]int, len(DevStates))
	for _, st := range DevStates {
		r.Counts[st] = 0
	}
	for _, id := range r.order {
		r.Counts[r.devs[id]]++
	}
	r.FailurePercent = 0
	if n := r.Counts[DevUpdating] + r.Counts[DevSucceeded] + r.Counts[DevFailed]; n > 0 {
		r.FailurePercent = float64(int(1000*float64(r.Counts[DevFailed])/float64(n))) / 10
	}
}

// overThreshold reports whether failures exceed the rollout's threshold.
func (r *rolloutState) overThreshold() bool {
	n := r.Counts[DevUpdating] + r.Counts[DevSucceeded] + r.Counts[DevFailed]
	return n > 0 && float64(r.Counts[DevFailed])*100 > r.MaxFailurePercent*float64(n)
}

// startedEnd is the index one past the last device of the started batches.
func (r *rolloutState) startedEnd() int {
	starts := BatchLayout(r.Total, r.Canary, r.BatchSize)
	if r.CurrentBatch < 0 {
		return 0
	}
	if r.CurrentBatch+1 < len(starts) {
		return starts[r.CurrentBatch+1]
	}
	return len(r.order)
}

// Rollout returns a rollout with its batches and per-device progress.
func (s *Service) Rollout(ctx context.Context, rid string) (Rollout, error) {
	r, err := s.loadRollout(ctx, rid)
	if err != nil {
		return Rollout{}, err
	}
	out := r.Rollout
	cmds := make([]*redis.SliceCmd, len(r.order))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range r.order {
			if r.devs[id] == DevUpdating {
				cmds[i] = p.HMGet(ctx, s.keys.Device(id), backend.FOTAState, backend.FOTAReceived, backend.FOTATotal, backend.FOTARollout)
			}
		}
		return nil
	})
	if err != nil {
		return Rollout{}, backend.Unavailable("rollout "+rid, err)
	}
	starts := BatchLayout(r.Total, r.Canary, r.BatchSize)
	out.DeviceStates = map[string]int{}
	out.Devices = make([]RolloutDevice, len(r.order))
	b := 0
	for i, id := range r.order {
		for b+1 < len(starts) && i >= starts[b+1] {
			b++
		}
		d := RolloutDevice{ID: id, Batch: b, State: r.devs[id], Reason: r.why[id]}
		if c := cmds[i]; c != nil {
			v := c.Val()
			if ro, _ := v[3].(string); ro == rid {
				d.FOTA, _ = v[0].(string)
				d.Received, _ = strconv.Atoi(fmt.Sprint(v[1]))
				d.Total, _ = strconv.Atoi(fmt.Sprint(v[2]))
				if d.Total > 0 {
					d.Percent = float64(int(1000*float64(d.Received)/float64(d.Total))) / 10
				}
				out.DeviceStates[d.FOTA]++
			}
		}
		out.Devices[i] = d
	}
	for i, st := range starts {
		end := len(r.order)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		bp := BatchProgress{Index: i, Canary: i == 0 && r.Canary > 0, Size: end - st, Counts: map[string]int{}}
		for _, id := range r.order[st:end] {
			bp.Counts[r.devs[id]]++
		}
		switch {
		case i > r.CurrentBatch:
			bp.State = "waiting"
		case bp.Counts[DevPending]+bp.Counts[DevUpdating] > 0:
			bp.State = "running"
		default:
			bp.State = "done"
		}
		out.Batches = append(out.Batches, bp)
	}
	return out, nil
}

// Rollouts returns every rollout, newest first, without per-device detail.
func (s *Service) Rollouts(ctx context.Context) ([]Rollout, error) {
	ids, err := s.rdb.ZRevRange(ctx, s.roIndex(), 0, -1).Result()
	if err != nil {
		return nil, backend.Unavailable("list rollouts", err)
	}
	out := make([]Rollout, 0, len(ids))
	for _, rid := range ids {
		r, err := s.loadRollout(ctx, rid)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Rollout)
	}
	return out, nil
}

// setStateScript moves a rollout between states.
// KEYS: ro hash. ARGV: to, now ms, reason, from...
// Returns 1 on success, 0 when the rollout does not exist, -1 when it is in
// another state.
var setStateScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 0 end
for i = 4, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
    if ARGV[1] == 'aborted' or ARGV[1] == 'completed' then
      redis.call('HSET', KEYS[1], 'finished_at', ARGV[2], 'reason', ARGV[3])
    end
    return 1
  end
end
return -1
`)

func (s *Service) setState(ctx context.Context, rid, to, reason string, from ...string) (bool, error) {
	if topics.ValidateID(rid) != nil {
		return false, backend.Errorf(backend.CodeNotFound, "rid", "no rollout %q", rid)
	}
	args := []any{to, s.now().UnixMilli(), reason}
	for _, f := range from {
		args = append(args, f)
	}
	n, err := setStateScript.Run(ctx, s.rdb, []string{s.roKey(rid)}, args...).Int()
	if err != nil {
		return false, backend.Unavailable("rollout "+rid+": "+to, err)
	}
	if n == 0 {
		return false, backend.Errorf(backend.CodeNotFound, "rid", "no rollout %q", rid)
	}
	return n == 1, nil
}

// PauseRollout stops a running rollout from starting further batches;
// updates in progress carry on. Only a running rollout can be paused.
func (s *Service) PauseRollout(ctx context.Context, rid string) (Rollout, error) {
	return s.operate(ctx, rid, RolloutPaused, "", RolloutRunning)
}

// ResumeRollout lets a paused rollout continue.
func (s *Service) ResumeRollout(ctx context.Context, rid string) (Rollout, error) {
	return s.operate(ctx, rid, RolloutRunning, "", RolloutPaused)
}

// AbortRollout stops a running or paused rollout for good: devices whose
// batch has not started stay on their firmware (cancelled); updates in
// progress carry on and are still tracked.
func (s *Service) AbortRollout(ctx context.Context, rid string) (Rollout, error) {
	r, err := s.operate(ctx, rid, RolloutAborted, "aborted by operator", RolloutRunning, RolloutPaused)
	if err != nil {
		return Rollout{}, err
	}
	s.m.rollouts.WithLabelValues(ResultAborted).Inc()
	if err := s.cancelPending(ctx, rid); err != nil {
		return Rollout{}, err
	}
	return s.Rollout(ctx, r.ID)
}

func (s *Service) operate(ctx context.Context, rid, to, reason string, from ...string) (Rollout, error) {
	ok, err := s.setState(ctx, rid, to, reason, from...)
	if err != nil {
		return Rollout{}, err
	}
	r, err := s.Rollout(ctx, rid)
	if err != nil {
		return Rollout{}, err
	}
	if !ok {
		return Rollout{}, backend.Errorf(backend.CodeConflict, "rid", "rollout %s is %s; only a %s rollout can be %s", rid, r.State, strings.Join(from, " or "), to)
	}
	s.log.Info().Str("rollout", rid).Str("state", to).Msg("rollout " + to)
	if to == RolloutRunning {
		s.poke()
	}
	return r, nil
}
