package topics

import "time"

// Birth is the first message a device sends after it connects (KindBirth).
// A will message of the same kind with Online=false marks it offline; the
// will is not enveloped (the broker sends it for the device), so the backend
// treats it as a hint, never as authenticated data.
type Birth struct {
	Online          bool   `json:"online"`
	FirmwareVersion string `json:"firmware_version"`
	ConfigVersion   int64  `json:"config_version"`
	BootCount       int64  `json:"boot_count"`
	UptimeSeconds   int64  `json:"uptime_s"`
	Slot            string `json:"slot,omitempty"`
	// Config is the configuration the device runs (remote configuration);
	// ConfigVersion is the last config version it has acknowledged.
	Config *Config `json:"config,omitempty"`
}

// Will is the plain (unsigned) payload of a device's MQTT will message.
type Will struct {
	Online bool `json:"online"`
}

// ConfigBody is the downlink config message: {"config_update":{...}}.
type ConfigBody struct {
	ConfigUpdate *ConfigUpdate `json:"config_update"`
}

// ConfigUpdate is one desired configuration version. Fields left nil are
// not part of this version and keep their current value on the device.
type ConfigUpdate struct {
	Version          int64    `json:"version"`
	SamplingInterval *int     `json:"sampling_interval,omitempty"`
	UploadInterval   *int     `json:"upload_interval,omitempty"`
	Registers        []string `json:"registers,omitempty"`
}

// ConfigAckBody is the uplink config acknowledgement: {"config_ack":{...}}.
type ConfigAckBody struct {
	ConfigAck *ConfigAck `json:"config_ack"`
}

// ConfigAck acknowledges a config version field by field.
type ConfigAck struct {
	Version   int64           `json:"version"`
	Accepted  []FieldChange   `json:"accepted"`
	Rejected  []FieldRejected `json:"rejected"`
	Unchanged []string        `json:"unchanged"`
}

// FieldChange records an accepted field with its old and new value.
type FieldChange struct {
	Parameter string `json:"parameter"`
	Old       any    `json:"old"`
	New       any    `json:"new"`
}

// FieldRejected records a rejected field and why.
type FieldRejected struct {
	Parameter string `json:"parameter"`
	Reason    string `json:"reason"`
}

// CommandBody is the downlink command message: {"command":{...}}.
type CommandBody struct {
	Command *Command `json:"command"`
}

// Command actions.
const (
	ActionWriteRegister = "write_register"
	ActionReadRegister  = "read_register"
	ActionReboot        = "reboot"
	ActionPing          = "ping"
)

// Command is one command for a device.
type Command struct {
	ID             string    `json:"id"`
	Action         string    `json:"action"`
	TargetRegister string    `json:"target_register,omitempty"`
	Value          *int      `json:"value,omitempty"`
	ExpiresAt      time.Time `json:"expires_at"`
}

// CommandResultBody is the uplink command result: {"command_result":{...}}.
type CommandResultBody struct {
	CommandResult *CommandResult `json:"command_result"`
}

// Command result statuses.
const (
	ResultSuccess = "success"
	ResultFailed  = "failed"
)

// CommandResult reports the outcome of one command.
type CommandResult struct {
	ID         string    `json:"id"`
	Status     string    `json:"status"`
	ExecutedAt time.Time `json:"executed_at"`
	Value      *int      `json:"value,omitempty"`
	Error      string    `json:"error,omitempty"`
	Duplicate  bool      `json:"duplicate,omitempty"`
	// DurationMS is how long the execution took on the device.
	DurationMS int64 `json:"duration_ms,omitempty"`
}

// ResultDelivered is the status of a receipt: a non-final command_result
// a device publishes when it accepts a command, before executing it. The
// final result (ResultSuccess or ResultFailed) follows. A duplicate
// delivery gets no receipt, only the stored result.
const ResultDelivered = "delivered"
