package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/ecowatt/ecowatt/topics"
)

// Spec is a job as an operator asks for it (POST /api/v1/jobs).
type Spec struct {
	Selector string   `json:"selector,omitempty"`
	Devices  []string `json:"devices,omitempty"`
	// All targets every device: explicit, so that an empty selector
	// stays an error rather than a fleet-wide job by accident.
	All bool `json:"all,omitempty"`
	// Exactly one action.
	Config   json.RawMessage `json:"config,omitempty"`   // a partial config document, as PUT .../config
	Command  json.RawMessage `json:"command,omitempty"`  // a command document, as POST .../commands
	Firmware *FirmwareAction `json:"firmware,omitempty"` // an uploaded version
	// RotateKey rotates each device's PSK over the air (admin only).
	RotateKey *RotateKeyAction `json:"rotate_key,omitempty"`

	MaxPerMinute int `json:"max_per_minute"`
	// BatchSize parts are issued together, every
	// BatchSize/MaxPerMinute minutes; default ceil(MaxPerMinute/60),
	// a batch a second.
	BatchSize int `json:"batch_size,omitempty"`
	// Canary devices go first; the rest waits until their parts are
	// done and within the abort rule.
	Canary int `json:"canary,omitempty"`
	// SerialBatches holds each batch until every part of the previous
	// one has ended, as FOTA rollouts did (the /api/v1/rollouts alias
	// sets it), so the abort rule judges a batch before the next starts.
	SerialBatches bool       `json:"serial_batches,omitempty"`
	Abort         *AbortRule `json:"abort,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"` // default created + DefaultExpiry
	IncludeFuture bool       `json:"include_future,omitempty"`
}

// FirmwareAction is a firmware job's action.
type FirmwareAction struct {
	Version string `json:"version"`
}

// RotateKeyAction is a key rotation job's action; it has no fields.
type RotateKeyAction struct{}

// AbortRule aborts a job once at least MinExecuted parts have an outcome
// and more than MaxFailurePercent of them failed.
type AbortRule struct {
	MaxFailurePercent float64 `json:"max_failure_percent"`
	MinExecuted       int     `json:"min_executed"`
	// CountInProgress makes the failure share one of the parts started
	// (in progress included), the share FOTA rollouts judged, instead of
	// the parts ended: one early failure in a large batch then does not
	// abort before the rest of the batch has had its chance.
	CountInProgress bool `json:"count_in_progress,omitempty"`
}

// Kind is the action kind of a valid spec.
func (sp *Spec) Kind() string {
	switch {
	case sp.Config != nil:
		return KindConfig
	case sp.Command != nil:
		return KindCommand
	case sp.RotateKey != nil:
		return KindRotateKey
	}
	return KindFirmware
}

func invalid(field, format string, args ...any) error {
	return backend.Errorf(backend.CodeInvalid, field, format, args...)
}

// ParseSpec decodes a job body strictly (unknown fields are errors) and
// checks everything that needs no state. now fills the default expiry.
func ParseSpec(body []byte, now time.Time) (Spec, selector.Selector, error) {
	var sp Spec
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sp); err != nil {
		return Spec{}, selector.Selector{}, invalid("", "bad job body: %v", err)
	}
	if dec.More() {
		return Spec{}, selector.Selector{}, invalid("", "bad job body: trailing data after the object")
	}
	sel, err := sp.check(now)
	return sp, sel, err
}

func present(raw json.RawMessage) bool {
	return raw != nil && !bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

func (sp *Spec) check(now time.Time) (selector.Selector, error) {
	var sel selector.Selector
	hasSel := strings.TrimSpace(sp.Selector) != ""
	switch {
	case hasSel && sp.Devices != nil, sp.All && (hasSel || sp.Devices != nil):
		return sel, invalid("selector", "give one target (a selector, a devices list or all), not both")
	case sp.All:
	case !hasSel && len(sp.Devices) == 0:
		return sel, invalid("selector", "a job needs a target: a non-empty selector or devices list, or all")
	case hasSel:
		var err error
		if sel, err = selector.Parse(sp.Selector); err != nil {
			return sel, invalid("selector", "%v", err)
		}
		sp.Selector = sel.String()
	default:
		if len(sp.Devices) > MaxDevicesListed {
			return sel, invalid("devices", "at most %d devices; use a selector for more", MaxDevicesListed)
		}
		seen := make(map[string]bool, len(sp.Devices))
		for i, d := range sp.Devices {
			if err := topics.ValidateID(d); err != nil {
				return sel, invalid("devices", "devices[%d]: %v", i, err)
			}
			if seen[d] {
				return sel, invalid("devices", "devices[%d]: %s is listed twice", i, d)
			}
			seen[d] = true
		}
		if sp.IncludeFuture {
			return sel, invalid("include_future", "include_future needs a selector: a devices list never matches new devices")
		}
	}
	n := 0
	if !present(sp.Config) {
		sp.Config = nil
	} else {
		n++
	}
	if !present(sp.Command) {
		sp.Command = nil
	} else {
		n++
	}
	if sp.Firmware != nil {
		n++
	}
	if sp.RotateKey != nil {
		n++
	}
	if n != 1 {
		return sel, invalid("action", "a job has exactly one action of config, command, firmware and rotate_key; this one has %d", n)
	}
	if sp.Config != nil {
		if _, err := topics.ParseConfigPatch(sp.Config); err != nil {
			return sel, invalid("config", "%v", err)
		}
	}
	if sp.Command != nil {
		c, err := topics.ParseOpsCommand(sp.Command)
		if err != nil {
			return sel, invalid("command", "%v", err)
		}
		if c.RequestID != "" {
			return sel, invalid("command.request_id", "a job's commands carry the job as their request_id; leave it out")
		}
	}
	if sp.Firmware != nil && sp.Firmware.Version == "" {
		return sel, invalid("firmware.version", "firmware.version is required")
	}
	if sp.MaxPerMinute <= 0 || sp.MaxPerMinute > MaxPerMinute {
		return sel, invalid("max_per_minute", "max_per_minute must be 1-%d, not %d", MaxPerMinute, sp.MaxPerMinute)
	}
	if sp.BatchSize == 0 {
		sp.BatchSize = (sp.MaxPerMinute + 59) / 60
	}
	if sp.BatchSize < 1 || sp.BatchSize > MaxBatchSize || sp.BatchSize > sp.MaxPerMinute {
		return sel, invalid("batch_size", "batch_size must be 1-%d and at most max_per_minute, not %d", min(MaxBatchSize, sp.MaxPerMinute), sp.BatchSize)
	}
	if sp.Canary < 0 || sp.Canary > MaxBatchSize {
		return sel, invalid("canary", "canary must be 0-%d, not %d", MaxBatchSize, sp.Canary)
	}
	if a := sp.Abort; a != nil {
		if a.MaxFailurePercent < 0 || a.MaxFailurePercent >= 100 {
			return sel, invalid("abort.max_failure_percent", "abort.max_failure_percent must be 0 or more and below 100, not %g", a.MaxFailurePercent)
		}
		if a.MinExecuted < 1 {
			return sel, invalid("abort.min_executed", "abort.min_executed must be at least 1, not %d", a.MinExecuted)
		}
	}
	if sp.ExpiresAt == nil {
		t := now.Add(DefaultExpiry).UTC().Truncate(time.Millisecond)
		sp.ExpiresAt = &t
	} else if !sp.ExpiresAt.After(now) {
		return sel, invalid("expires_at", "expires_at %s is not in the future", sp.ExpiresAt.Format(time.RFC3339))
	}
	return sel, nil
}

// checkState checks what needs the other services: the action's kind is
// served, and a firmware version exists.
func (s *Service) checkState(ctx context.Context, sp *Spec) error {
	switch sp.Kind() {
	case KindConfig:
		if s.cfg.Configs == nil {
			return backend.Errorf(backend.CodeUnavailable, "config", "config jobs are not served by this backend")
		}
	case KindCommand:
		if s.cfg.Commands == nil {
			return backend.Errorf(backend.CodeUnavailable, "command", "command jobs are not served by this backend")
		}
	case KindFirmware:
		if s.cfg.FOTA == nil {
			return backend.Errorf(backend.CodeUnavailable, "firmware", "firmware jobs are not served by this backend")
		}
		if _, err := s.cfg.FOTA.Firmware(ctx, sp.Firmware.Version); err != nil {
			if backend.ErrorCode(err) == backend.CodeNotFound {
				return invalid("firmware.version", "no firmware %q has been uploaded", sp.Firmware.Version)
			}
			return err
		}
	case KindRotateKey:
		if s.cfg.Rotations == nil {
			return backend.Errorf(backend.CodeUnavailable, "rotate_key", "key rotation jobs are not served by this backend")
		}
	}
	return nil
}
