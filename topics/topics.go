// Package topics is the EcoWatt wire contract shared by the backend and the
// devices: topic names, device IDs and the JSON bodies carried inside the
// security envelope (see package envelope).
package topics

import (
	"errors"
	"fmt"
	"strings"
)

// Root is the first two levels of every EcoWatt topic.
const Root = "ecowatt/v1"

// Classes of topic, the third level.
const (
	ClassDevice = "dev"    // ecowatt/v1/dev/{id}/{up|down}/{kind}
	ClassOps    = "ops"    // ecowatt/v1/ops/{id}/{kind}
	ClassEvents = "events" // ecowatt/v1/events/{id}/{kind}
)

// Directions on device topics.
const (
	Up   = "up"   // device -> cloud
	Down = "down" // cloud -> device
)

// Kinds of device -> cloud message.
const (
	KindBirth         = "birth"
	KindTelemetry     = "telemetry"
	KindConfigAck     = "config_ack"
	KindCommandResult = "command_result"
	KindFOTARequest   = "fota_request"
	KindFOTAStatus    = "fota_status"
	KindKeyAck        = "key_ack" // the answer to rotate_key, sealed under the new key
)

// Kinds of cloud -> device message.
const (
	KindConfig       = "config"
	KindCommand      = "command"
	KindFOTAManifest = "fota_manifest"
	KindFOTAChunk    = "fota_chunk"
	KindRollback     = "rollback"
	KindRotateKey    = "rotate_key"  // a new PSK, encrypted under the current one
	KindKeyConfirm   = "key_confirm" // the backend uses the new key: drop the old
)

// Kinds of operator message (ops class): KindConfig and KindCommand.

// Kinds of audit event (events class).
const (
	EventPresence = "presence"
	EventConfig   = "config"
	EventCommand  = "command"
	EventFOTA     = "fota"
	EventSecurity = "security"
	EventLabels   = "labels" // a device's labels changed (provisioning or PATCH)
	EventKey      = "key"    // a PSK rotation step (PROTOCOL.md section 15)
	// EventLifecycle records a device being disabled, enabled or
	// decommissioned (backend.Service.Disable and the others).
	EventLifecycle = "lifecycle"
)

// OperatorLevel is the fourth level of operator event topics,
// ecowatt/v1/events/operators/{name}/{kind}: one level more than a device's
// ecowatt/v1/events/{id}/{kind}, so no operator name can collide with a
// device ID (even a device called "operators").
const OperatorLevel = "operators"

// operatorEventKinds are the event kinds about operator accounts.
var operatorEventKinds = map[string]bool{EventSecurity: true}

// MaxIDLen is the longest device ID.
const MaxIDLen = 64

// ErrBadTopic is wrapped by every Parse error.
var ErrBadTopic = errors.New("bad topic")

// ErrBadID is wrapped by every ValidateID error.
var ErrBadID = errors.New("invalid device id")

var upKinds = map[string]bool{
	KindBirth: true, KindTelemetry: true, KindConfigAck: true,
	KindCommandResult: true, KindFOTARequest: true, KindFOTAStatus: true,
	KindKeyAck: true,
}

var downKinds = map[string]bool{
	KindConfig: true, KindCommand: true, KindFOTAManifest: true,
	KindFOTAChunk: true, KindRollback: true, KindRotateKey: true, KindKeyConfirm: true,
}

var opsKinds = map[string]bool{KindConfig: true, KindCommand: true}

var eventKinds = map[string]bool{
	EventPresence: true, EventConfig: true, EventCommand: true,
	EventFOTA: true, EventSecurity: true, EventLabels: true, EventLifecycle: true, EventKey: true,
}

// ValidateID reports whether id matches [A-Za-z0-9_-]{1,64}.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("%w %q: length must be 1-%d", ErrBadID, id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w %q: byte %d is not one of A-Z a-z 0-9 _ -", ErrBadID, id, i)
		}
	}
	return nil
}

// Topic is a parsed EcoWatt topic.
type Topic struct {
	Class  string // ClassDevice, ClassOps or ClassEvents
	Device string // empty for an operator event
	Dir    string // Up or Down; empty unless Class is ClassDevice
	Kind   string
	// Operator is the account name of an operator event
	// (ecowatt/v1/events/operators/{name}/{kind}); empty otherwise.
	Operator string
}

// String builds the topic name.
func (t Topic) String() string {
	if t.Operator != "" {
		return OperatorEvent(t.Operator, t.Kind)
	}
	if t.Class == ClassDevice {
		return Root + "/" + t.Class + "/" + t.Device + "/" + t.Dir + "/" + t.Kind
	}
	return Root + "/" + t.Class + "/" + t.Device + "/" + t.Kind
}

// Parse parses and validates a concrete topic name (no wildcards).
func Parse(s string) (Topic, error) {
	rest, ok := strings.CutPrefix(s, Root+"/")
	if !ok {
		return Topic{}, fmt.Errorf("%w %q: not under %s/", ErrBadTopic, s, Root)
	}
	parts := strings.Split(rest, "/")
	var t Topic
	switch {
	case len(parts) == 4 && parts[0] == ClassDevice:
		t = Topic{Class: ClassDevice, Device: parts[1], Dir: parts[2], Kind: parts[3]}
		switch t.Dir {
		case Up:
			ok = upKinds[t.Kind]
		case Down:
			ok = downKinds[t.Kind]
		default:
			return Topic{}, fmt.Errorf("%w %q: direction must be up or down", ErrBadTopic, s)
		}
	case len(parts) == 3 && parts[0] == ClassOps:
		t = Topic{Class: ClassOps, Device: parts[1], Kind: parts[2]}
		ok = opsKinds[t.Kind]
	case len(parts) == 3 && parts[0] == ClassEvents:
		t = Topic{Class: ClassEvents, Device: parts[1], Kind: parts[2]}
		ok = eventKinds[t.Kind]
	case len(parts) == 4 && parts[0] == ClassEvents && parts[1] == OperatorLevel:
		if !operatorEventKinds[parts[3]] {
			return Topic{}, fmt.Errorf("%w %q: unknown operator event kind %q", ErrBadTopic, s, parts[3])
		}
		if err := ValidateID(parts[2]); err != nil {
			return Topic{}, fmt.Errorf("%w %q: operator name: %w", ErrBadTopic, s, err)
		}
		return Topic{Class: ClassEvents, Operator: parts[2], Kind: parts[3]}, nil
	default:
		return Topic{}, fmt.Errorf("%w %q: unknown shape", ErrBadTopic, s)
	}
	if !ok {
		return Topic{}, fmt.Errorf("%w %q: unknown kind %q", ErrBadTopic, s, t.Kind)
	}
	if err := ValidateID(t.Device); err != nil {
		return Topic{}, fmt.Errorf("%w %q: %w", ErrBadTopic, s, err)
	}
	return t, nil
}

// DeviceUp is the topic a device publishes kind on.
func DeviceUp(id, kind string) string { return Root + "/dev/" + id + "/up/" + kind }

// DeviceDown is the topic the cloud sends kind to a device on.
func DeviceDown(id, kind string) string { return Root + "/dev/" + id + "/down/" + kind }

// Ops is the topic an operator publishes kind for device id on.
func Ops(id, kind string) string { return Root + "/ops/" + id + "/" + kind }

// Event is the topic audit events of kind for device id go to.
func Event(id, kind string) string { return Root + "/events/" + id + "/" + kind }

// OperatorEvent is the topic audit events of kind about operator account
// name go to. Operator names follow the device ID grammar (ValidateID).
func OperatorEvent(name, kind string) string {
	return Root + "/" + ClassEvents + "/" + OperatorLevel + "/" + name + "/" + kind
}

// Subscription filters.
const (
	FilterAllUp     = Root + "/dev/+/up/#"
	FilterAllOps    = Root + "/ops/+/+"
	FilterAllEvents = Root + "/events/#"
)

// DeviceUpPrefix is the subtree a device may publish under.
func DeviceUpPrefix(id string) string { return Root + "/dev/" + id + "/up/" }

// DeviceDownPrefix is the subtree a device may subscribe under.
func DeviceDownPrefix(id string) string { return Root + "/dev/" + id + "/down/" }

// DeviceDownFilter is the subscription filter a device uses for its commands.
func DeviceDownFilter(id string) string { return DeviceDownPrefix(id) + "#" }
