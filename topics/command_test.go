package topics

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseOpsCommand(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		field string // "-" = valid
		want  OpsCommand
	}{
		{"write", `{"action":"write_register","target_register":"export_power","value":50}`, "-",
			OpsCommand{Action: ActionWriteRegister, TargetRegister: "export_power", Value: intp(50)}},
		{"write with ttl and request id", `{"action":"write_register","target_register":"export_power","value":0,"ttl":"10m","request_id":"job-7"}`, "-",
			OpsCommand{Action: ActionWriteRegister, TargetRegister: "export_power", Value: intp(0), TTL: 10 * time.Minute, RequestID: "job-7"}},
		{"read", `{"action":"read_register","target_register":"voltage"}`, "-",
			OpsCommand{Action: ActionReadRegister, TargetRegister: "voltage"}},
		{"reboot", `{"action":"reboot","ttl":"24h"}`, "-", OpsCommand{Action: ActionReboot, TTL: 24 * time.Hour}},
		{"ping", `{"action":"ping","ttl":"1s"}`, "-", OpsCommand{Action: ActionPing, TTL: time.Second}},
		{"unknown action", `{"action":"format_disk"}`, "action", OpsCommand{}},
		{"missing action", `{"target_register":"voltage"}`, "action", OpsCommand{}},
		{"action not a string", `{"action":1}`, "action", OpsCommand{}},
		{"write unknown register", `{"action":"write_register","target_register":"power","value":1}`, "target_register", OpsCommand{}},
		{"write read-only register", `{"action":"write_register","target_register":"voltage","value":1}`, "target_register", OpsCommand{}},
		{"write missing register", `{"action":"write_register","value":1}`, "target_register", OpsCommand{}},
		{"write missing value", `{"action":"write_register","target_register":"export_power"}`, "value", OpsCommand{}},
		{"write value too high", `{"action":"write_register","target_register":"export_power","value":101}`, "value", OpsCommand{}},
		{"write value negative", `{"action":"write_register","target_register":"export_power","value":-1}`, "value", OpsCommand{}},
		{"value as string", `{"action":"write_register","target_register":"export_power","value":"50"}`, "value", OpsCommand{}},
		{"value as float", `{"action":"write_register","target_register":"export_power","value":50.5}`, "value", OpsCommand{}},
		{"value null", `{"action":"write_register","target_register":"export_power","value":null}`, "value", OpsCommand{}},
		{"read unknown register", `{"action":"read_register","target_register":"x"}`, "target_register", OpsCommand{}},
		{"read with value", `{"action":"read_register","target_register":"voltage","value":1}`, "value", OpsCommand{}},
		{"ping with register", `{"action":"ping","target_register":"voltage"}`, "target_register", OpsCommand{}},
		{"reboot with value", `{"action":"reboot","value":1}`, "value", OpsCommand{}},
		{"negative ttl", `{"action":"ping","ttl":"-5m"}`, "ttl", OpsCommand{}},
		{"huge ttl", `{"action":"ping","ttl":"720h"}`, "ttl", OpsCommand{}},
		{"tiny ttl", `{"action":"ping","ttl":"10ms"}`, "ttl", OpsCommand{}},
		{"ttl not a duration", `{"action":"ping","ttl":"soon"}`, "ttl", OpsCommand{}},
		{"ttl as number", `{"action":"ping","ttl":600}`, "ttl", OpsCommand{}},
		{"empty request id", `{"action":"ping","request_id":""}`, "request_id", OpsCommand{}},
		{"request id with space", `{"action":"ping","request_id":"a b"}`, "request_id", OpsCommand{}},
		{"unknown field", `{"action":"ping","priority":1}`, "priority", OpsCommand{}},
		{"id is not for operators", `{"action":"ping","id":"x"}`, "id", OpsCommand{}},
		{"repeated member", `{"action":"ping","action":"reboot"}`, "action", OpsCommand{}},
		{"not an object", `"ping"`, "", OpsCommand{}},
		{"malformed", `{"action":`, "", OpsCommand{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseOpsCommand([]byte(tc.in))
			if tc.field == "-" {
				if err != nil {
					t.Fatalf("ParseOpsCommand = %v", err)
				}
				if mustJSON(t, c) != mustJSON(t, tc.want) || c.TTL != tc.want.TTL {
					t.Fatalf("got %s, want %s", mustJSON(t, c), mustJSON(t, tc.want))
				}
				// The wire form round-trips.
				var back OpsCommand
				if err := json.Unmarshal([]byte(mustJSON(t, c)), &back); err != nil || mustJSON(t, back) != mustJSON(t, c) {
					t.Fatalf("round trip: %v, %s", err, mustJSON(t, back))
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field || fe.Reason == "" {
				t.Fatalf("ParseOpsCommand = %v, want a FieldError on %q", err, tc.field)
			}
		})
	}
}

func TestOpsCommandToCommand(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := OpsCommand{Action: ActionWriteRegister, TargetRegister: "export_power", Value: intp(50)}
	cmd := c.Command("c1", now)
	if cmd.ID != "c1" || *cmd.Value != 50 || !cmd.ExpiresAt.Equal(now.Add(DefaultCommandTTL)) {
		t.Fatalf("command = %+v", cmd)
	}
	if err := ValidateDeviceCommand(cmd); err != nil {
		t.Fatal(err)
	}
	*c.Value = 60
	if *cmd.Value != 50 {
		t.Error("Command shares the value pointer")
	}
}

func TestValidateDeviceCommand(t *testing.T) {
	ok := Command{ID: "01J", Action: ActionPing}
	for _, tc := range []struct {
		name  string
		mod   func(*Command)
		field string
	}{
		{"ok", func(*Command) {}, ""},
		{"no id", func(c *Command) { c.ID = "" }, "id"},
		{"long id", func(c *Command) { c.ID = strings.Repeat("x", MaxCommandIDLen+1) }, "id"},
		{"id with newline", func(c *Command) { c.ID = "a\nb" }, "id"},
		{"bad action", func(c *Command) { c.Action = "explode" }, "action"},
		{"write read-only", func(c *Command) { c.Action, c.TargetRegister, c.Value = ActionWriteRegister, "output_power", intp(1) }, "target_register"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := ValidateDeviceCommand(c)
			var fe *FieldError
			if tc.field == "" && err != nil || tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field) {
				t.Fatalf("ValidateDeviceCommand = %v, want field %q", err, tc.field)
			}
		})
	}
}

func FuzzParseOpsCommand(f *testing.F) {
	for _, s := range []string{
		`{"action":"write_register","target_register":"export_power","value":50,"ttl":"10m","request_id":"r"}`,
		`{"action":"ping"}`, `{"action":"reboot","ttl":"-1s"}`, `{"action":"read_register","target_register":"voltage"}`,
		`{}`, `[`, `{"value":1e99}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseOpsCommand(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a FieldError", err)
			}
			return
		}
		if err := ValidateCommand(c); err != nil {
			t.Fatalf("parsed command invalid: %v", err)
		}
		if err := ValidateDeviceCommand(c.Command("x", time.Unix(0, 0))); err != nil {
			t.Fatalf("downlink form invalid: %v", err)
		}
	})
}
