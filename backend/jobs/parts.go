package jobs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/topics"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// Commands issues and observes command parts; *commands.Service has it.
type Commands interface {
	Submit(ctx context.Context, dev, operator string, c topics.OpsCommand) (commands.Command, bool, error)
	Get(ctx context.Context, cid string) (commands.Command, error)
}

// FOTA issues and observes firmware parts; *fota.Service has it.
type FOTA interface {
	Firmware(ctx context.Context, version string) (fota.Firmware, error)
	StartUpdate(ctx context.Context, dev, version, rollout string) (backend.DeviceFOTA, error)
	DeviceStatus(ctx context.Context, dev string) (backend.DeviceFOTA, error)
}

var (
	_ Commands = (*commands.Service)(nil)
	_ FOTA     = (*fota.Service)(nil)
)

// tag names job jid in the parts it issues: the config "by", the FOTA
// rollout field.
func tag(jid string) string { return "job:" + jid }

// requestID is the request_id of job jid's commands: command submission
// is idempotent per device and request_id.
func requestID(jid string) string { return "job-" + jid }

// outcome is what a service says about a part.
type outcome struct {
	done   bool   // the part has a final outcome
	ok     bool   // ... and it succeeded
	reason string // why it failed, or a note
}

// issue issues dev's part of job j, or adopts the part already issued
// under the job's tag. ref is the part's handle for observe. A refusal of
// the device's own (an update in progress, a version not newer) is
// skipped=true with the service's reason; other errors are retried at the
// next tick.
func (s *Service) issue(ctx context.Context, j *Job, dev string) (ref string, skipped bool, err error) {
	switch j.Kind {
	case KindConfig:
		st, err := s.cfg.Configs.Get(ctx, dev)
		if err != nil {
			return "", refused(err), err
		}
		if st.Desired.UpdatedBy == tag(j.ID) { // issued before a restart
			return strconv.FormatInt(st.Desired.Version, 10), false, nil
		}
		res, err := s.cfg.Configs.Set(ctx, dev, j.Spec.Config, config.Who{By: tag(j.ID), Via: ViaJob})
		if err != nil {
			return "", refused(err), err
		}
		return strconv.FormatInt(res.Desired.Version, 10), false, nil
	case KindCommand:
		c, err := topics.ParseOpsCommand(j.Spec.Command)
		if err != nil {
			return "", true, err
		}
		c.RequestID = requestID(j.ID)
		cmd, _, err := s.cfg.Commands.Submit(ctx, dev, tag(j.ID), c)
		if err != nil {
			return "", refused(err), err
		}
		return cmd.ID, false, nil
	case KindFirmware:
		v := j.Spec.Firmware.Version
		if st, err := s.cfg.FOTA.DeviceStatus(ctx, dev); err == nil && st.Rollout == tag(j.ID) && st.Target == v {
			return v, false, nil // issued before a restart (and maybe done already)
		}
		if _, err := s.cfg.FOTA.StartUpdate(ctx, dev, v, tag(j.ID)); err != nil {
			return "", refused(err), err
		}
		return v, false, nil
	case KindRotateKey:
		if r, err := s.cfg.Rotations.Rotation(ctx, dev); err == nil && r.By == tag(j.ID) {
			return r.ID, false, nil // started before a restart (and maybe done already)
		}
		r, err := s.cfg.Rotations.StartRotation(ctx, dev, tag(j.ID))
		if err != nil {
			return "", refused(err), err
		}
		return r.ID, false, nil
	}
	return "", true, fmt.Errorf("job %s: unknown kind %q", j.ID, j.Kind)
}

// ViaJob is the config "via" of parts issued by a job.
const ViaJob = "job"

// refused reports whether err is the service refusing this device (so
// the part is skipped), not a passing failure.
func refused(err error) bool {
	switch backend.ErrorCode(err) {
	case backend.CodeInvalid, backend.CodeNotFound, backend.CodeConflict:
		return true
	}
	return false
}

// observe asks the part's service for the outcome of dev's part.
func (s *Service) observe(ctx context.Context, j *Job, dev, ref string) (outcome, error) {
	switch j.Kind {
	case KindConfig:
		want, _ := strconv.ParseInt(ref, 10, 64)
		st, err := s.cfg.Configs.Get(ctx, dev)
		if err != nil {
			return outcome{}, err
		}
		if a := st.LastAck; a != nil && a.Version == want {
			if len(a.Rejected) > 0 {
				var why []string
				for _, r := range a.Rejected {
					why = append(why, r.Parameter+": "+r.Reason)
				}
				return outcome{done: true, reason: "rejected " + strings.Join(why, "; ")}, nil
			}
			return outcome{done: true, ok: true}, nil
		}
		if st.Desired.Version > want && st.Desired.UpdatedBy != tag(j.ID) {
			return outcome{done: true, reason: fmt.Sprintf("superseded by config version %d (%s) before an ack", st.Desired.Version, st.Desired.UpdatedBy)}, nil
		}
		if st.Reported != nil && st.Reported.Version >= want && !st.Pending {
			return outcome{done: true, ok: true}, nil
		}
		// A decommissioned device never acks: its part ends now, as its
		// commands and firmware update are cancelled by the decommission,
		// not abandoned at the job's expiry.
		state, err := s.rdb.HGet(ctx, s.keys.Device(dev), backend.FieldState).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return outcome{}, backend.Unavailable("job "+j.ID+": state of "+dev, err)
		}
		if state == backend.StateDecommissioned {
			return outcome{done: true, reason: "config cancelled: device decommissioned"}, nil
		}
		return outcome{}, nil
	case KindCommand:
		c, err := s.cfg.Commands.Get(ctx, ref)
		if err != nil {
			if backend.ErrorCode(err) == backend.CodeNotFound {
				return outcome{done: true, reason: "command " + ref + " is no longer kept"}, nil
			}
			return outcome{}, err
		}
		if !commands.Final(c.State) {
			return outcome{}, nil
		}
		if c.State == commands.StateSucceeded {
			return outcome{done: true, ok: true}, nil
		}
		why := "command " + c.State
		if c.Error != "" {
			why += ": " + c.Error
		}
		return outcome{done: true, reason: why}, nil
	case KindFirmware:
		st, err := s.cfg.FOTA.DeviceStatus(ctx, dev)
		if err != nil {
			return outcome{}, err
		}
		if st.Rollout != tag(j.ID) {
			return outcome{done: true, reason: "another update replaced this job's"}, nil
		}
		if st.Active {
			return outcome{}, nil
		}
		if st.Result == string(wire.StateSucceeded) {
			return outcome{done: true, ok: true}, nil
		}
		why := "firmware " + st.Result
		if st.Reason != "" {
			why += ": " + st.Reason
		}
		return outcome{done: true, reason: why}, nil
	case KindRotateKey:
		r, err := s.cfg.Rotations.Rotation(ctx, dev) // applies the end of the overlap
		if err != nil {
			return outcome{}, err
		}
		if r.ID != ref {
			return outcome{done: true, reason: "key rotation " + ref + " is no longer the device's latest (" + r.ID + " is); its outcome is unknown"}, nil
		}
		switch r.State {
		case backend.RotationConfirmed:
			return outcome{done: true, ok: true}, nil
		case backend.RotationExpired:
			return outcome{done: true, reason: "key rotation expired: the device did not use the new key within the overlap (it keeps the old key)"}, nil
		}
		return outcome{}, nil
	}
	return outcome{}, fmt.Errorf("job %s: unknown kind %q", j.ID, j.Kind)
}
