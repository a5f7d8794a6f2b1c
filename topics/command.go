package topics

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// Command rules shared by the backend (which validates an operator's
// command before it queues it) and the device (which validates every
// command again before it executes it).

// Limits of a command.
const (
	MinCommandTTL     = time.Second
	MaxCommandTTL     = 24 * time.Hour
	DefaultCommandTTL = 10 * time.Minute
	MaxRequestIDLen   = 128
	MaxCommandIDLen   = 128
	// MaxOpsCommandSize bounds an operator's command document.
	MaxOpsCommandSize = 4096
)

// Actions lists the command actions.
var Actions = []string{ActionWriteRegister, ActionReadRegister, ActionReboot, ActionPing}

// OpsCommand is a command as an operator submits it over the HTTP API or
// ecowatt/v1/ops/{id}/command:
//
//	{"action":"write_register","target_register":"export_power","value":50,"ttl":"10m","request_id":"abc"}
//
// TTL zero means DefaultCommandTTL. RequestID is the operator's own tag,
// echoed in the command's events.
type OpsCommand struct {
	RequestID      string
	Action         string
	TargetRegister string
	Value          *int
	TTL            time.Duration
}

// opsCommandJSON is OpsCommand's wire form.
type opsCommandJSON struct {
	RequestID      string `json:"request_id,omitempty"`
	Action         string `json:"action"`
	TargetRegister string `json:"target_register,omitempty"`
	Value          *int   `json:"value,omitempty"`
	TTL            string `json:"ttl,omitempty"`
}

// MarshalJSON writes the wire form (ttl as a Go duration string).
func (c OpsCommand) MarshalJSON() ([]byte, error) {
	j := opsCommandJSON{RequestID: c.RequestID, Action: c.Action, TargetRegister: c.TargetRegister, Value: c.Value}
	if c.TTL != 0 {
		j.TTL = c.TTL.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON is ParseOpsCommand: strict, and validated.
func (c *OpsCommand) UnmarshalJSON(data []byte) error {
	v, err := ParseOpsCommand(data)
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// EffectiveTTL is TTL, or DefaultCommandTTL when TTL is zero.
func (c OpsCommand) EffectiveTTL() time.Duration {
	if c.TTL == 0 {
		return DefaultCommandTTL
	}
	return c.TTL
}

// Command builds the downlink command with the given ID, expiring
// EffectiveTTL after now.
func (c OpsCommand) Command(id string, now time.Time) Command {
	out := Command{ID: id, Action: c.Action, TargetRegister: c.TargetRegister, ExpiresAt: now.Add(c.EffectiveTTL()).UTC()}
	if c.Value != nil {
		v := *c.Value
		out.Value = &v
	}
	return out
}

// ParseOpsCommand parses and validates an operator's command document. It
// is strict: one JSON object of at most MaxOpsCommandSize bytes with only
// the fields action, target_register, value, ttl and request_id, each of
// its JSON type (value an integer, ttl a Go duration string such as "90s"
// or "10m"), and then ValidateCommand. Every error is a *FieldError.
func ParseOpsCommand(data []byte) (OpsCommand, error) {
	if len(data) > MaxOpsCommandSize {
		return OpsCommand{}, &FieldError{"", fmt.Sprintf("document is %d bytes, limit %d", len(data), MaxOpsCommandSize)}
	}
	fields, err := decodeObject(data)
	if err != nil {
		return OpsCommand{}, err
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	var c OpsCommand
	for _, name := range names {
		raw := fields[name]
		var s string
		switch name {
		case "action", "target_register", "request_id", "ttl":
			if err := strictUnmarshal(raw, &s); err != nil {
				return OpsCommand{}, &FieldError{name, "wrong type: want a string, got " + jsonKind(raw)}
			}
		case "value":
			var n int
			if err := strictUnmarshal(raw, &n); err != nil {
				return OpsCommand{}, &FieldError{name, "wrong type: want an integer, got " + jsonKind(raw)}
			}
			c.Value = &n
			continue
		default:
			return OpsCommand{}, &FieldError{name, "unknown field; want action, target_register, value, ttl, request_id"}
		}
		switch name {
		case "action":
			c.Action = s
		case "target_register":
			c.TargetRegister = s
		case "request_id":
			if s == "" {
				return OpsCommand{}, &FieldError{name, "empty; omit it or give 1-128 characters"}
			}
			c.RequestID = s
		case "ttl":
			d, err := time.ParseDuration(s)
			if err != nil {
				return OpsCommand{}, &FieldError{name, fmt.Sprintf("%q is not a duration such as \"90s\" or \"10m\"", truncate(s, 32))}
			}
			if r := checkTTL(d); r != "" {
				return OpsCommand{}, &FieldError{name, r}
			}
			c.TTL = d
		}
	}
	if err := ValidateCommand(c); err != nil {
		return OpsCommand{}, err
	}
	return c, nil
}

func checkTTL(d time.Duration) string {
	if d < MinCommandTTL || d > MaxCommandTTL {
		return fmt.Sprintf("%v is out of range %v-%v", d, MinCommandTTL, MaxCommandTTL)
	}
	return ""
}

// ValidateCommand checks an operator's command; the error is a *FieldError.
//
//   - action: one of write_register, read_register, reboot, ping (required);
//   - write_register: target_register a writable register, value required
//     and within the register's raw range (export_power: 0-100);
//   - read_register: target_register a known register, no value;
//   - reboot, ping: neither target_register nor value;
//   - ttl: zero (default) or 1s-24h; request_id: at most 128 printable
//     ASCII characters.
func ValidateCommand(c OpsCommand) error {
	if c.TTL != 0 {
		if r := checkTTL(c.TTL); r != "" {
			return &FieldError{"ttl", r}
		}
	}
	if r := checkToken(c.RequestID, MaxRequestIDLen); c.RequestID != "" && r != "" {
		return &FieldError{"request_id", r}
	}
	return validateAction(c.Action, c.TargetRegister, c.Value)
}

// ValidateDeviceCommand is the device's check of a downlink command: its
// ID (1-128 printable ASCII characters) and the action rules of
// ValidateCommand. Expiry is not checked here (it needs the clock).
func ValidateDeviceCommand(c Command) error {
	if r := checkToken(c.ID, MaxCommandIDLen); r != "" {
		return &FieldError{"id", r}
	}
	return validateAction(c.Action, c.TargetRegister, c.Value)
}

func validateAction(action, target string, value *int) error {
	switch action {
	case "":
		return &FieldError{"action", "missing; want one of " + strings.Join(Actions, ", ")}
	case ActionWriteRegister:
		if target == "" {
			return &FieldError{"target_register", "missing: write_register needs a register"}
		}
		reg, ok := telemetry.RegisterByName(target)
		if !ok {
			return &FieldError{"target_register", fmt.Sprintf("unknown register %q", truncate(target, 32))}
		}
		if !reg.Writable {
			return &FieldError{"target_register", fmt.Sprintf("register %q is read-only", target)}
		}
		if value == nil {
			return &FieldError{"value", "missing: write_register needs a value"}
		}
		if *value < int(reg.Min) || *value > int(reg.Max) {
			return &FieldError{"value", fmt.Sprintf("%d is out of range %d-%d for %s", *value, reg.Min, reg.Max, target)}
		}
	case ActionReadRegister:
		if target == "" {
			return &FieldError{"target_register", "missing: read_register needs a register"}
		}
		if _, ok := telemetry.RegisterByName(target); !ok {
			return &FieldError{"target_register", fmt.Sprintf("unknown register %q", truncate(target, 32))}
		}
		if value != nil {
			return &FieldError{"value", "not allowed for read_register"}
		}
	case ActionReboot, ActionPing:
		if target != "" {
			return &FieldError{"target_register", "not allowed for " + action}
		}
		if value != nil {
			return &FieldError{"value", "not allowed for " + action}
		}
	default:
		return &FieldError{"action", fmt.Sprintf("unknown action %q; want one of %s", truncate(action, 32), strings.Join(Actions, ", "))}
	}
	return nil
}

// checkToken checks an identifier: 1-max printable ASCII bytes.
func checkToken(s string, max int) string {
	if s == "" || len(s) > max {
		return fmt.Sprintf("want 1-%d characters, got %d", max, len(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Sprintf("byte %d is not printable ASCII (no spaces)", i)
		}
	}
	return ""
}
