package topics

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const (
	birthFull    = `{"online":true,"firmware_version":"1.0.3","config_version":7,"boot_count":2,"uptime_s":12,"slot":"a","config":{"sampling_interval":5,"upload_interval":15,"registers":["voltage","current"]}}`
	birthMinimal = `{"online":true,"firmware_version":"1.0.3","config_version":0,"boot_count":0,"uptime_s":0}`
)

var birthCases = []struct {
	name, body string
	field      string // "" = valid; else the *FieldError's Field
}{
	{"full", birthFull, ""},
	{"minimal", birthMinimal, ""},
	{"any order and whitespace", " {\"uptime_s\" : 1,\n\"boot_count\":1,\"config_version\":1,\"firmware_version\":\"v5.2.1-dirty\",\"online\":true} ", ""},
	{"offline alone", `{"online":false}`, ""},
	{"offline with fields", `{"online":false,"firmware_version":"1.0.3","boot_count":2}`, ""},

	{"empty", ``, "?"},
	{"not an object", `[1]`, "?"},
	{"trailing data", birthMinimal + `{}`, "?"},
	{"unknown member", strings.Replace(birthMinimal, `"online":true`, `"online":true,"rssi":-60`, 1), "rssi"},
	{"member in other case", strings.Replace(birthMinimal, `"uptime_s"`, `"Uptime_s"`, 1), "uptime_s"},
	{"duplicate member", strings.Replace(birthMinimal, `"online":true`, `"online":true,"online":false`, 1), "online"},
	{"no online", `{"firmware_version":"1"}`, "online"},
	{"online null", `{"online":null}`, "online"},
	{"online string", `{"online":"true"}`, "online"},
	{"online true alone", `{"online":true}`, "config_version"},
	{"no firmware", `{"online":true,"config_version":0,"boot_count":0,"uptime_s":0}`, "firmware_version"},
	{"empty firmware", strings.Replace(birthMinimal, `"1.0.3"`, `""`, 1), "firmware_version"},
	{"long firmware", strings.Replace(birthMinimal, `"1.0.3"`, `"`+strings.Repeat("1", 32)+`"`, 1), "firmware_version"},
	{"firmware control byte", strings.Replace(birthMinimal, `"1.0.3"`, `"1.0\n3"`, 1), "firmware_version"},
	{"firmware non-ascii", strings.Replace(birthMinimal, `"1.0.3"`, `"1.0.ü"`, 1), "firmware_version"},
	{"negative boot count", strings.Replace(birthMinimal, `"boot_count":0`, `"boot_count":-1`, 1), "boot_count"},
	{"fraction", strings.Replace(birthMinimal, `"uptime_s":0`, `"uptime_s":1.5`, 1), "uptime_s"},
	{"exponent", strings.Replace(birthMinimal, `"uptime_s":0`, `"uptime_s":1e3`, 1), "uptime_s"},
	{"integer above 2^53-1", strings.Replace(birthMinimal, `"uptime_s":0`, `"uptime_s":9007199254740992`, 1), "uptime_s"},
	{"config_version string", strings.Replace(birthMinimal, `"config_version":0`, `"config_version":"0"`, 1), "config_version"},
	{"bad slot", strings.Replace(birthFull, `"slot":"a"`, `"slot":"a/b"`, 1), "slot"},
	{"empty slot", strings.Replace(birthFull, `"slot":"a"`, `"slot":""`, 1), "slot"},
	{"config null", strings.Replace(birthMinimal, `}`, `,"config":null}`, 1), "config"},
	{"config partial", strings.Replace(birthMinimal, `}`, `,"config":{"sampling_interval":5}}`, 1), "config"},
	{"config unknown member", strings.Replace(birthFull, `"registers"`, `"x":1,"registers"`, 1), "config.x"},
	{"config invalid", strings.Replace(birthFull, `"upload_interval":15`, `"upload_interval":7`, 1), "config"},
	{"config unknown register", strings.Replace(birthFull, `"current"`, `"foo"`, 1), "config"},
	{"too large", `{"online":true,"firmware_version":"1","config_version":0,"boot_count":0,"uptime_s":0` + strings.Repeat(" ", MaxBirthSize) + `}`, "?"},
	{"invalid utf-8", "{\"online\":true,\"firmware_version\":\"\xff\"}", "?"},
}

func TestParseBirth(t *testing.T) {
	for _, tc := range birthCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ParseBirth([]byte(tc.body))
			if tc.field == "" {
				if err != nil {
					t.Fatalf("ParseBirth: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseBirth = %+v, %v; want a *FieldError", b, err)
			}
			if tc.field != "?" && fe.Field != tc.field {
				t.Fatalf("error %v names %q, want %q", err, fe.Field, tc.field)
			}
		})
	}
	b, err := ParseBirth([]byte(birthFull))
	want := Birth{Online: true, FirmwareVersion: "1.0.3", ConfigVersion: 7, BootCount: 2, UptimeSeconds: 12, Slot: "a",
		Config: &Config{SamplingInterval: 5, UploadInterval: 15, Registers: []string{"voltage", "current"}}}
	if err != nil || !reflect.DeepEqual(b, want) {
		t.Fatalf("ParseBirth(full) = %+v, %v", b, err)
	}
}

// FuzzParseBirth: whatever ParseBirth accepts, encoding/json reads the same
// way, re-encodes to a body ParseBirth accepts again, and obeys the limits.
func FuzzParseBirth(f *testing.F) {
	for _, tc := range birthCases {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBirth(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FieldError", err)
			}
			return
		}
		var std Birth
		if err := json.Unmarshal(data, &std); err != nil || !reflect.DeepEqual(std, b) {
			t.Fatalf("encoding/json reads %+v (%v), ParseBirth %+v", std, err, b)
		}
		if b.Online && (b.FirmwareVersion == "" || b.ConfigVersion < 0 || b.BootCount < 0 || b.UptimeSeconds < 0) {
			t.Fatalf("accepted %+v", b)
		}
		if len(b.FirmwareVersion) > MaxFirmwareVersionLen || len(b.Slot) > MaxSlotLen {
			t.Fatalf("accepted long strings %+v", b)
		}
		if b.Config != nil && b.Config.Validate() != nil {
			t.Fatalf("accepted invalid config %+v", b.Config)
		}
		again, _ := json.Marshal(b)
		if _, err := ParseBirth(again); err != nil && b.Online {
			t.Fatalf("re-encoded %s refused: %v", again, err)
		}
	})
}
