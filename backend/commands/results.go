package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// HandleResult records a device's command_result (an authenticated,
// replay-checked uplink). A receipt (status "delivered") moves the command
// to delivered; "success" or "failed" to succeeded or failed (a device
// reporting it received the command after its expiry makes it expired).
// A repeated result of an ended command changes nothing (idempotent); a
// result that contradicts the recorded end is kept as late_result. A
// malformed body, an ID that is not a command of this device, or a value
// that does not fit the command (checkResultValue), is CodeInvalid (a
// security event).
func (s *Service) HandleResult(ctx context.Context, dev string, m envelope.Message) error {
	return s.handleResult(ctx, dev, m, nil)
}

// handleResultChecked is HandleResult for backend.Service.HandleChecked:
// the uplink's replay check runs inside the transition's script, one round
// trip for both. A body refused before the script still has its nonce
// checked first.
func (s *Service) handleResultChecked(ctx context.Context, dev string, m envelope.Message) error {
	args, err := s.fleet.NonceArgs(m.Nonce)
	if err != nil {
		return err // a nonce above 2^53-1: stale
	}
	if _, err := decodeResult(m.Body); err != nil {
		if nerr := s.fleet.AcceptNonce(ctx, dev, m.Nonce); nerr != nil {
			return nerr
		}
		return err
	}
	err = s.handleResult(ctx, dev, m, &prefix{script: checkedTransitionScript, keys: s.fleet.NonceKeys(dev), args: args, nonce: m.Nonce})
	var nr *nonceRefused
	if errors.As(err, &nr) {
		return nr.err
	}
	return err
}

// handleResult is HandleResult, with the replay check nc in the first
// transition's script when it is set.
func (s *Service) handleResult(ctx context.Context, dev string, m envelope.Message, nc *prefix) error {
	r, err := decodeResult(m.Body)
	if err != nil {
		return err
	}
	log := s.log.With().Str("device", dev).Str("command", r.ID).Str("status", r.Status).Bool("duplicate", r.Duplicate).Logger()
	if r.Status == topics.ResultDelivered {
		cmd, _, code, err := s.runTransition(ctx, dev, r.ID, []string{StateQueued, StateSent}, StateDelivered, nil, "", nil, nc)
		if err == nil && code != 1 {
			log.Debug().Str("state", cmd.State).Msg("receipt ignored: command past sent")
		}
		return unknownResult(err, r.ID)
	}
	to, fields := StateSucceeded, resultFields(r)
	if r.Status == topics.ResultFailed {
		to = StateFailed
		fields[fError] = r.Error
		if r.Error == "expired" { // devicesim.ReasonExpired: refused unexecuted
			to = StateExpired
		}
	}
	// The script checks the value against the command (resultGuard) before
	// it checks the nonce and writes; when the guard is not met, nothing
	// is consumed and checkResultValue has the last word on the command
	// the script returned. A result for a command that has ended otherwise
	// is kept as late_result by the same script, so that one script
	// consumes the nonce and does all the writing (a retry after a
	// failure finds the nonce unused).
	late := []any{fLateStatus, r.Status, fLateError, r.Error, fLateAt, r.ExecutedAt.UnixMilli()}
	if r.Value != nil {
		late = append(late, fLateValue, *r.Value)
	}
	from := []string{StateQueued, StateSent, StateDelivered}
	cmd, cur, code, err := s.runTransition(ctx, dev, r.ID, from, to, fields, resultGuard(r), late, nc)
	if errors.Is(err, errGuard) {
		if verr := checkResultValue(cmd, r); verr != nil {
			if nc != nil { // the message is genuine: its nonce is used up
				if nerr := s.fleet.AcceptNonce(ctx, dev, nc.nonce); nerr != nil {
					return nerr
				}
			}
			return verr
		}
		cmd, cur, code, err = s.runTransition(ctx, dev, r.ID, from, to, fields, "", late, nc)
	}
	switch {
	case err != nil || code == 1:
		return unknownResult(err, r.ID)
	case code == 5:
		log.Warn().Str("state", cur).Msg("result arrived after the command ended; kept as late_result")
		s.emit(ctx, cmd, cur)
	default: // already ended the same way (cmd is the command as it was)
		log.Debug().Str("state", cur).Msg("repeated result ignored")
	}
	return nil
}

// resultGuard lists, for the transition script, the commands result r
// fits, as checkResultValue decides: "action|target" tokens, with
// "=value" when the command's value must equal the reported one (a
// write_register success). A command none matches goes to
// checkResultValue itself (errGuard), so the list only spares the read.
func resultGuard(r topics.CommandResult) string {
	var toks []string
	for _, a := range []string{topics.ActionPing, topics.ActionReboot} {
		if checkResultValue(Command{Action: a}, r) == nil {
			toks = append(toks, a+"|")
		}
	}
	for _, reg := range telemetry.Registers() {
		for _, a := range []string{topics.ActionReadRegister, topics.ActionWriteRegister} {
			c, eq := Command{Action: a, TargetRegister: reg.Name}, ""
			if a == topics.ActionWriteRegister && r.Status == topics.ResultSuccess && r.Value != nil {
				c.Value, eq = r.Value, "="+strconv.Itoa(*r.Value)
			}
			if checkResultValue(c, r) == nil {
				toks = append(toks, a+"|"+reg.Name+eq)
			}
		}
	}
	if len(toks) == 0 {
		return "-" // matches no command ("" would be no guard)
	}
	return strings.Join(toks, " ")
}

// checkResultValue checks a success or failure result's value against
// its command: a write_register success reports exactly the value written
// (the device reads it back), a read_register success a value in the
// register's range (writable registers: their write range; others: the
// raw u16), a failure at most a raw u16; reboot and ping carry no value.
// A result outside is CodeInvalid (a security event) and changes nothing.
func checkResultValue(c Command, r topics.CommandResult) error {
	bad := func(format string, args ...any) error {
		return backend.Errorf(backend.CodeInvalid, "value", "command_result for %s %s: "+format, append([]any{c.Action, c.ID}, args...)...)
	}
	switch c.Action {
	case topics.ActionPing, topics.ActionReboot:
		if r.Value != nil {
			return bad("carries value %d; %s has none", *r.Value, c.Action)
		}
		return nil
	}
	reg, ok := telemetry.RegisterByName(c.TargetRegister)
	if !ok {
		return nil // not a command this backend queued
	}
	if r.Value == nil {
		if r.Status == topics.ResultSuccess {
			return bad("success without the register's value")
		}
		return nil
	}
	v := *r.Value
	lo, hi := 0, math.MaxUint16
	if reg.Writable && r.Status == topics.ResultSuccess {
		lo, hi = int(reg.Min), int(reg.Max)
	}
	switch {
	case v < lo || v > hi:
		return bad("value %d outside %d-%d of %s", v, lo, hi, reg.Name)
	case c.Action == topics.ActionWriteRegister && r.Status == topics.ResultSuccess && c.Value != nil && v != *c.Value:
		return bad("success reports %d, the command wrote %d", v, *c.Value)
	}
	return nil
}

// unknownResult makes a result for a command dev does not have
// CodeInvalid (a security event); other errors pass unchanged.
func unknownResult(err error, cid string) error {
	if nr := (*nonceRefused)(nil); errors.As(err, &nr) {
		return err
	}
	if backend.ErrorCode(err) == backend.CodeNotFound {
		return backend.Errorf(backend.CodeInvalid, "id", "command_result for unknown command %q", cid)
	}
	return err
}

func resultFields(r topics.CommandResult) map[string]any {
	f := map[string]any{fResStatus: r.Status, fResError: r.Error, fResDuration: r.DurationMS}
	if !r.ExecutedAt.IsZero() {
		f[fResExecuted] = r.ExecutedAt.UnixMilli()
	}
	if r.Value != nil {
		f[fResValue] = *r.Value
	}
	return f
}

// decodeResult parses {"command_result":{...}} strictly.
func decodeResult(body []byte) (topics.CommandResult, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b topics.CommandResultBody
	if err := dec.Decode(&b); err != nil {
		return topics.CommandResult{}, &backend.Error{Code: backend.CodeInvalid, Message: "command_result body is malformed", Err: err}
	}
	if dec.More() {
		return topics.CommandResult{}, backend.Errorf(backend.CodeInvalid, "", "command_result body has trailing data")
	}
	if b.CommandResult == nil {
		return topics.CommandResult{}, backend.Errorf(backend.CodeInvalid, "command_result", `body has no "command_result"`)
	}
	r := *b.CommandResult
	if err := topics.ValidateDeviceCommand(topics.Command{ID: r.ID, Action: topics.ActionPing}); err != nil {
		return topics.CommandResult{}, &backend.Error{Code: backend.CodeInvalid, Field: "id", Message: "command_result id is invalid", Err: err}
	}
	switch r.Status {
	case topics.ResultDelivered, topics.ResultSuccess, topics.ResultFailed:
	default:
		return topics.CommandResult{}, backend.Errorf(backend.CodeInvalid, "status", "command_result status %q: want delivered, success or failed", truncate(r.Status, 32))
	}
	return r, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// HandleBirth hands a device that came online to the sender (the delivery lease holder), which
// sends its queued commands and repeats every unfinished one (the device
// may have lost them, or their results, while it was away).
func (s *Service) HandleBirth(ctx context.Context, dev string, m envelope.Message) error {
	var b topics.Birth
	if err := json.Unmarshal(m.Body, &b); err != nil {
		// Unreachable in practice: the presence handler runs first and
		// refuses such a birth.
		return &backend.Error{Code: backend.CodeInvalid, Message: "birth body is not valid JSON", Err: err}
	}
	if b.Online {
		s.kick(ctx, dev, true)
	}
	return nil
}
