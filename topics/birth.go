package topics

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Limits of a birth body (PROTOCOL.md section 9.1).
const (
	MaxBirthSize            = 4096      // bytes of the body
	MaxFirmwareVersionLen   = 31        // bytes, as esp_app_desc_t.version holds
	MaxSlotLen              = 16        // bytes
	maxBirthInt             = 1<<53 - 1 // integers stay exact in JSON and Lua doubles
	birthFieldOnline        = "online"
	birthFieldFirmware      = "firmware_version"
	birthFieldConfigVersion = "config_version"
	birthFieldBootCount     = "boot_count"
	birthFieldUptime        = "uptime_s"
	birthFieldSlot          = "slot"
	birthFieldConfig        = "config"
)

// ParseBirth parses an enveloped up/birth body strictly, the same way the
// envelope is read: one JSON object of at most MaxBirthSize bytes, valid
// UTF-8, each member once and spelled exactly, no unknown member, no null.
//
//   - online: boolean, required.
//   - firmware_version: 1-31 printable ASCII bytes; config_version,
//     boot_count, uptime_s: integers 0 ... 2^53-1. Required when online is
//     true, optional (same rules) when it is false.
//   - slot: optional, 1-16 bytes of A-Z a-z 0-9 _ -.
//   - config: optional, a complete Config (all three parameters, nothing
//     else) that passes Config.Validate.
//
// Every error is a *FieldError naming the member.
func ParseBirth(data []byte) (Birth, error) {
	if len(data) > MaxBirthSize {
		return Birth{}, &FieldError{"", fmt.Sprintf("birth is %d bytes, limit %d", len(data), MaxBirthSize)}
	}
	if !utf8.Valid(data) {
		return Birth{}, &FieldError{"", "birth is not valid UTF-8"}
	}
	fields, err := decodeObject(data)
	if err != nil {
		return Birth{}, err
	}
	var b Birth
	if err := birthBool(fields, &b.Online); err != nil {
		return Birth{}, err
	}
	required := b.Online
	for _, f := range []struct {
		name string
		dst  *int64
	}{{birthFieldConfigVersion, &b.ConfigVersion}, {birthFieldBootCount, &b.BootCount}, {birthFieldUptime, &b.UptimeSeconds}} {
		if err := birthInt(fields, f.name, required, f.dst); err != nil {
			return Birth{}, err
		}
	}
	if err := birthString(fields, birthFieldFirmware, required, MaxFirmwareVersionLen, printableASCII, &b.FirmwareVersion); err != nil {
		return Birth{}, err
	}
	if err := birthString(fields, birthFieldSlot, false, MaxSlotLen, idByte, &b.Slot); err != nil {
		return Birth{}, err
	}
	if raw, ok := fields[birthFieldConfig]; ok {
		c, err := parseBirthConfig(raw)
		if err != nil {
			return Birth{}, err
		}
		b.Config = &c
	}
	for name := range fields {
		switch name {
		case birthFieldOnline, birthFieldFirmware, birthFieldConfigVersion, birthFieldBootCount,
			birthFieldUptime, birthFieldSlot, birthFieldConfig:
		default:
			return Birth{}, &FieldError{name, "unknown member"}
		}
	}
	return b, nil
}

func birthBool(fields map[string]json.RawMessage, dst *bool) error {
	raw, ok := fields[birthFieldOnline]
	if !ok {
		return &FieldError{birthFieldOnline, "required"}
	}
	if err := strictUnmarshal(raw, dst); err != nil {
		return &FieldError{birthFieldOnline, "want true or false, got " + jsonKind(raw)}
	}
	return nil
}

func birthInt(fields map[string]json.RawMessage, name string, required bool, dst *int64) error {
	raw, ok := fields[name]
	if !ok {
		if required {
			return &FieldError{name, "required"}
		}
		return nil
	}
	if err := strictUnmarshal(raw, dst); err != nil || *dst < 0 || *dst > maxBirthInt {
		return &FieldError{name, "want an integer 0 ... 2^53-1, got " + truncate(string(raw), 24)}
	}
	return nil
}

func birthString(fields map[string]json.RawMessage, name string, required bool, maxLen int, okByte func(byte) bool, dst *string) error {
	raw, ok := fields[name]
	if !ok {
		if required {
			return &FieldError{name, "required"}
		}
		return nil
	}
	if err := strictUnmarshal(raw, dst); err != nil {
		return &FieldError{name, "want a string, got " + jsonKind(raw)}
	}
	if len(*dst) == 0 || len(*dst) > maxLen {
		return &FieldError{name, fmt.Sprintf("length %d, want 1-%d bytes", len(*dst), maxLen)}
	}
	for i := 0; i < len(*dst); i++ {
		if !okByte((*dst)[i]) {
			return &FieldError{name, fmt.Sprintf("byte %d (0x%02x) not allowed", i, (*dst)[i])}
		}
	}
	return nil
}

func printableASCII(c byte) bool { return c >= 0x20 && c <= 0x7e }

func idByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// parseBirthConfig reads the birth's config member: the complete config the
// device runs, so every parameter is required and the rules must hold.
func parseBirthConfig(raw json.RawMessage) (Config, error) {
	fields, err := decodeObject(raw)
	if err != nil {
		return Config{}, &FieldError{birthFieldConfig, "want an object with " + ParamSamplingInterval + ", " +
			ParamUploadInterval + " and " + ParamRegisters}
	}
	u, rejected := decodeConfigFields(fields)
	if len(rejected) > 0 {
		return Config{}, &FieldError{birthFieldConfig + "." + rejected[0].Field, rejected[0].Reason}
	}
	if u.SamplingInterval == nil || u.UploadInterval == nil || u.Registers == nil {
		return Config{}, &FieldError{birthFieldConfig, "want all of " + ParamSamplingInterval + ", " +
			ParamUploadInterval + " and " + ParamRegisters}
	}
	c := Config{SamplingInterval: *u.SamplingInterval, UploadInterval: *u.UploadInterval, Registers: u.Registers}
	if err := c.Validate(); err != nil {
		return Config{}, &FieldError{birthFieldConfig, err.Error()}
	}
	return c, nil
}
