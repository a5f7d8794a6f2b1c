package topics

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

func intp(v int) *int { return &v }

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.SamplingInterval != 5 || c.UploadInterval != 15 || len(c.Registers) != MaxRegisters {
		t.Errorf("default = %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{SamplingInterval: 5, UploadInterval: 15, Registers: []string{"voltage"}}
	for _, tc := range []struct {
		name  string
		mod   func(*Config)
		field string // "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"sampling 0", func(c *Config) { c.SamplingInterval = 0 }, ParamSamplingInterval},
		{"sampling 301", func(c *Config) { c.SamplingInterval = 301 }, ParamSamplingInterval},
		{"upload 3601", func(c *Config) { c.UploadInterval = 3601 }, ParamUploadInterval},
		{"upload below sampling", func(c *Config) { c.SamplingInterval, c.UploadInterval = 10, 5 }, ParamUploadInterval},
		{"upload not a multiple", func(c *Config) { c.UploadInterval = 16 }, ParamUploadInterval},
		{"upload 3600 sampling 300", func(c *Config) { c.SamplingInterval, c.UploadInterval = 300, 3600 }, ""},
		{"no registers", func(c *Config) { c.Registers = nil }, ParamRegisters},
		{"unknown register", func(c *Config) { c.Registers = []string{"voltage", "power"} }, ParamRegisters},
		{"duplicate register", func(c *Config) { c.Registers = []string{"voltage", "voltage"} }, ParamRegisters},
		{"eleven registers", func(c *Config) { c.Registers = append(DefaultConfig().Registers, "voltage") }, ParamRegisters},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok.Clone()
			tc.mod(&c)
			err := c.Validate()
			var fe *FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("Validate = %v", err)
			case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
				t.Fatalf("Validate = %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

func TestValidateUpdate(t *testing.T) {
	cur := Config{SamplingInterval: 5, UploadInterval: 15, Registers: []string{"voltage", "current"}}
	type want struct {
		next      Config
		accepted  []string
		rejected  []string
		unchanged []string
		reason    string // substring of the first rejection's reason
	}
	for _, tc := range []struct {
		name string
		u    ConfigUpdate
		want want
	}{
		{"nothing given", ConfigUpdate{Version: 2},
			want{next: cur, unchanged: ConfigParams}},
		{"all three change", ConfigUpdate{Version: 2, SamplingInterval: intp(10), UploadInterval: intp(60), Registers: []string{"frequency"}},
			want{next: Config{10, 60, []string{"frequency"}}, accepted: ConfigParams}},
		{"same values are unchanged", ConfigUpdate{SamplingInterval: intp(5), UploadInterval: intp(15), Registers: []string{"voltage", "current"}},
			want{next: cur, unchanged: ConfigParams}},
		{"sampling out of range, others applied", ConfigUpdate{SamplingInterval: intp(0), UploadInterval: intp(30)},
			want{next: Config{5, 30, cur.Registers}, accepted: []string{ParamUploadInterval},
				rejected: []string{ParamSamplingInterval}, unchanged: []string{ParamRegisters}, reason: "out of range"}},
		{"sampling 301", ConfigUpdate{SamplingInterval: intp(301)},
			want{next: cur, rejected: []string{ParamSamplingInterval}, unchanged: []string{ParamUploadInterval, ParamRegisters}, reason: "1-300"}},
		{"upload 3601", ConfigUpdate{UploadInterval: intp(3601)},
			want{next: cur, rejected: []string{ParamUploadInterval}, unchanged: []string{ParamSamplingInterval, ParamRegisters}, reason: "3600"}},
		{"sampling above current upload", ConfigUpdate{SamplingInterval: intp(20)},
			want{next: cur, rejected: []string{ParamSamplingInterval}, unchanged: []string{ParamUploadInterval, ParamRegisters}, reason: "less than"}},
		{"upload below current sampling", ConfigUpdate{UploadInterval: intp(3)},
			want{next: cur, rejected: []string{ParamUploadInterval}, unchanged: []string{ParamSamplingInterval, ParamRegisters}, reason: "less than"}},
		{"incompatible pair rejects both", ConfigUpdate{SamplingInterval: intp(10), UploadInterval: intp(25)},
			want{next: cur, rejected: []string{ParamSamplingInterval, ParamUploadInterval}, unchanged: []string{ParamRegisters}, reason: "not a multiple"}},
		{"pair valid only together", ConfigUpdate{SamplingInterval: intp(20), UploadInterval: intp(40)},
			want{next: Config{20, 40, cur.Registers}, accepted: []string{ParamSamplingInterval, ParamUploadInterval}, unchanged: []string{ParamRegisters}}},
		{"bad sampling, upload checked against old sampling", ConfigUpdate{SamplingInterval: intp(-1), UploadInterval: intp(12)},
			want{next: cur, rejected: []string{ParamSamplingInterval, ParamUploadInterval}, unchanged: []string{ParamRegisters}, reason: "out of range"}},
		{"empty registers", ConfigUpdate{Registers: []string{}},
			want{next: cur, rejected: []string{ParamRegisters}, unchanged: []string{ParamSamplingInterval, ParamUploadInterval}, reason: "empty"}},
		{"unknown register", ConfigUpdate{Registers: []string{"voltage", "watts"}},
			want{next: cur, rejected: []string{ParamRegisters}, unchanged: []string{ParamSamplingInterval, ParamUploadInterval}, reason: "unknown register \"watts\""}},
		{"duplicate register", ConfigUpdate{Registers: []string{"current", "current"}},
			want{next: cur, rejected: []string{ParamRegisters}, unchanged: []string{ParamSamplingInterval, ParamUploadInterval}, reason: "duplicate"}},
		{"register order is a change", ConfigUpdate{Registers: []string{"current", "voltage"}},
			want{next: Config{5, 15, []string{"current", "voltage"}}, accepted: []string{ParamRegisters}, unchanged: []string{ParamSamplingInterval, ParamUploadInterval}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, ack := ValidateUpdate(cur, tc.u)
			if !next.Equal(tc.want.next) {
				t.Errorf("next = %+v, want %+v", next, tc.want.next)
			}
			if err := next.Validate(); err != nil {
				t.Errorf("next invalid: %v", err)
			}
			if ack.Version != tc.u.Version {
				t.Errorf("ack version %d", ack.Version)
			}
			var acc, rej []string
			for _, a := range ack.Accepted {
				acc = append(acc, a.Parameter)
			}
			for _, r := range ack.Rejected {
				rej = append(rej, r.Parameter)
			}
			if !slices.Equal(acc, tc.want.accepted) || !slices.Equal(rej, tc.want.rejected) || !slices.Equal(ack.Unchanged, orEmpty(tc.want.unchanged)) {
				t.Errorf("ack = %+v\nwant accepted %v rejected %v unchanged %v", ack, tc.want.accepted, tc.want.rejected, tc.want.unchanged)
			}
			if tc.want.reason != "" && (len(ack.Rejected) == 0 || !strings.Contains(ack.Rejected[0].Reason, tc.want.reason)) {
				t.Errorf("rejections %+v, want reason containing %q", ack.Rejected, tc.want.reason)
			}
			checkAckInvariants(t, cur, next, ack)
		})
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// checkAckInvariants checks the properties every ack must have.
func checkAckInvariants(t *testing.T, cur, next Config, ack ConfigAck) {
	t.Helper()
	if cur.Validate() != nil {
		cur = DefaultConfig()
	}
	if err := next.Validate(); err != nil {
		t.Fatalf("next %+v invalid: %v", next, err)
	}
	if ack.Accepted == nil || ack.Rejected == nil || ack.Unchanged == nil {
		t.Fatalf("ack has a nil list (marshals as null): %+v", ack)
	}
	seen := map[string]int{}
	for _, a := range ack.Accepted {
		seen[a.Parameter]++
		if mustJSON(t, a.Old) != mustJSON(t, paramValue(cur, a.Parameter)) || mustJSON(t, a.New) != mustJSON(t, paramValue(next, a.Parameter)) {
			t.Errorf("accepted %+v: old/new do not match %+v -> %+v", a, cur, next)
		}
		if mustJSON(t, a.Old) == mustJSON(t, a.New) {
			t.Errorf("accepted %s without a change", a.Parameter)
		}
	}
	for _, r := range ack.Rejected {
		seen[r.Parameter]++
		if r.Reason == "" {
			t.Errorf("rejected %s without a reason", r.Parameter)
		}
		if slices.Contains(ConfigParams, r.Parameter) && mustJSON(t, paramValue(cur, r.Parameter)) != mustJSON(t, paramValue(next, r.Parameter)) {
			t.Errorf("rejected %s changed anyway: %+v -> %+v", r.Parameter, cur, next)
		}
	}
	for _, p := range ack.Unchanged {
		seen[p]++
		if mustJSON(t, paramValue(cur, p)) != mustJSON(t, paramValue(next, p)) {
			t.Errorf("unchanged %s changed: %+v -> %+v", p, cur, next)
		}
	}
	for _, p := range ConfigParams {
		if seen[p] != 1 {
			t.Errorf("parameter %s appears %d times in %+v", p, seen[p], ack)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyPatch(t *testing.T) {
	cur := DefaultConfig()
	next, err := ApplyPatch(cur, ConfigUpdate{SamplingInterval: intp(10), UploadInterval: intp(30)})
	if err != nil || next.SamplingInterval != 10 || next.UploadInterval != 30 {
		t.Fatalf("ApplyPatch = %+v, %v", next, err)
	}
	got, err := ApplyPatch(cur, ConfigUpdate{SamplingInterval: intp(10), Registers: []string{"nope"}})
	var fe *FieldError
	if !errors.As(err, &fe) || !got.Equal(cur) {
		t.Fatalf("ApplyPatch = %+v, %v; want FieldErrors and cur", got, err)
	}
	var fes FieldErrors
	if !errors.As(err, &fes) || len(fes) != 2 || fes[0].Field != ParamSamplingInterval || fes[1].Field != ParamRegisters {
		t.Errorf("errors = %v", err)
	}
}

func TestParseConfigPatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		field string // "-" = valid; otherwise the FieldError's field
		want  ConfigUpdate
	}{
		{"sampling only", `{"sampling_interval":10}`, "-", ConfigUpdate{SamplingInterval: intp(10)}},
		{"all", `{"sampling_interval":10,"upload_interval":60,"registers":["voltage","current"]}`, "-",
			ConfigUpdate{SamplingInterval: intp(10), UploadInterval: intp(60), Registers: []string{"voltage", "current"}}},
		{"whitespace", " \n{\"registers\":[\"frequency\"]}\n", "-", ConfigUpdate{Registers: []string{"frequency"}}},
		{"empty object", `{}`, "", ConfigUpdate{}},
		{"not an object", `[1]`, "", ConfigUpdate{}},
		{"not JSON", `{"sampling_interval":`, "", ConfigUpdate{}},
		{"trailing data", `{"sampling_interval":10} {}`, "", ConfigUpdate{}},
		{"unknown field", `{"sampling_interval":10,"colour":"red"}`, "colour", ConfigUpdate{}},
		{"version is not for operators", `{"version":3,"sampling_interval":10}`, "version", ConfigUpdate{}},
		{"string interval", `{"sampling_interval":"10"}`, ParamSamplingInterval, ConfigUpdate{}},
		{"float interval", `{"upload_interval":10.5}`, ParamUploadInterval, ConfigUpdate{}},
		{"null interval", `{"upload_interval":null}`, ParamUploadInterval, ConfigUpdate{}},
		{"huge interval", `{"upload_interval":1e400}`, ParamUploadInterval, ConfigUpdate{}},
		{"registers not an array", `{"registers":"voltage"}`, ParamRegisters, ConfigUpdate{}},
		{"registers with a number", `{"registers":["voltage",3]}`, ParamRegisters, ConfigUpdate{}},
		{"registers null", `{"registers":null}`, ParamRegisters, ConfigUpdate{}},
		{"empty registers", `{"registers":[]}`, ParamRegisters, ConfigUpdate{}},
		{"unknown register", `{"registers":["voltage","foo"]}`, ParamRegisters, ConfigUpdate{}},
		{"duplicate register", `{"registers":["voltage","voltage"]}`, ParamRegisters, ConfigUpdate{}},
		{"sampling out of range", `{"sampling_interval":0}`, ParamSamplingInterval, ConfigUpdate{}},
		{"upload out of range", `{"upload_interval":7200}`, ParamUploadInterval, ConfigUpdate{}},
		{"upload below sampling", `{"sampling_interval":30,"upload_interval":15}`, ParamUploadInterval, ConfigUpdate{}},
		{"repeated member", `{"sampling_interval":10,"sampling_interval":20}`, ParamSamplingInterval, ConfigUpdate{}},
		{"too big", `{"registers":["` + strings.Repeat("x", MaxConfigPatchSize) + `"]}`, "", ConfigUpdate{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseConfigPatch([]byte(tc.in))
			if tc.field == "-" {
				if err != nil {
					t.Fatalf("ParseConfigPatch = %v", err)
				}
				if mustJSON(t, u) != mustJSON(t, tc.want) {
					t.Fatalf("got %s, want %s", mustJSON(t, u), mustJSON(t, tc.want))
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field || fe.Reason == "" {
				t.Fatalf("ParseConfigPatch = %#v (%v), want a FieldError on %q", err, err, tc.field)
			}
		})
	}
}

func TestValidateConfigMessage(t *testing.T) {
	cur := DefaultConfig()
	for _, tc := range []struct {
		name     string
		in       string
		err      bool
		accepted []string
		rejected []string
	}{
		{"valid", `{"config_update":{"version":3,"sampling_interval":10,"upload_interval":30}}`, false,
			[]string{ParamSamplingInterval, ParamUploadInterval}, nil},
		{"wrong type rejected, others applied", `{"config_update":{"version":3,"sampling_interval":"10","registers":["voltage"]}}`, false,
			[]string{ParamRegisters}, []string{ParamSamplingInterval}},
		{"unknown field rejected by name", `{"config_update":{"version":3,"upload_interval":30,"mode":1}}`, false,
			[]string{ParamUploadInterval}, []string{"mode"}},
		{"empty registers", `{"config_update":{"version":3,"registers":[]}}`, false, nil, []string{ParamRegisters}},
		{"no version", `{"config_update":{"sampling_interval":10}}`, true, nil, nil},
		{"version zero", `{"config_update":{"version":0}}`, true, nil, nil},
		{"version string", `{"config_update":{"version":"3"}}`, true, nil, nil},
		{"no config_update", `{"config":{"version":3}}`, true, nil, nil},
		{"extra outer member", `{"config_update":{"version":3},"x":1}`, true, nil, nil},
		{"not an object", `"x"`, true, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, ack, err := ValidateConfigMessage(cur, []byte(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("no error, ack %+v", ack)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var acc, rej []string
			for _, a := range ack.Accepted {
				acc = append(acc, a.Parameter)
			}
			for _, r := range ack.Rejected {
				rej = append(rej, r.Parameter)
			}
			if !slices.Equal(acc, tc.accepted) || !slices.Equal(rej, tc.rejected) || ack.Version != 3 {
				t.Fatalf("ack = %+v", ack)
			}
			if err := next.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func FuzzParseConfigPatch(f *testing.F) {
	for _, s := range []string{
		`{"sampling_interval":10}`, `{"upload_interval":60,"registers":["voltage"]}`,
		`{"registers":[]}`, `{"x":1}`, `{"sampling_interval":"1"}`, `[]`, `{`, `null`,
		`{"sampling_interval":10,"sampling_interval":10}`, `{"registers":["voltage","voltage"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := ParseConfigPatch(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Reason == "" {
				t.Fatalf("error %v is not a FieldError with a reason", err)
			}
			return
		}
		if u.SamplingInterval == nil && u.UploadInterval == nil && u.Registers == nil {
			t.Fatal("accepted an empty patch")
		}
		cur := DefaultConfig()
		next, ack := ValidateUpdate(cur, u)
		checkAckInvariants(t, cur, next, ack)
		// The device's parser agrees with the operator's.
		body := []byte(`{"config_update":{"version":1,` + strings.TrimSpace(string(data))[1:] + `}`)
		if n2, ack2, err := ValidateConfigMessage(cur, body); err == nil && (!n2.Equal(next) || mustJSON(t, ack2) != mustJSON(t, ConfigAck{1, ack.Accepted, ack.Rejected, ack.Unchanged})) {
			t.Fatalf("device parse differs: %+v %+v vs %+v %+v", n2, ack2, next, ack)
		}
	})
}

func FuzzValidateUpdate(f *testing.F) {
	f.Add(5, 15, "voltage,current", true, 10, true, 30, true, "frequency")
	f.Add(5, 15, "voltage", true, 20, false, 0, false, "")
	f.Add(10, 30, "voltage", true, 10, true, 25, true, "voltage,voltage")
	f.Add(0, 0, "", true, 300, true, 3600, true, "")
	f.Add(7, 14, "nope", false, 0, true, -1, true, "a,b,c,d,e,f,g,h,i,j,k")
	f.Fuzz(func(t *testing.T, cs, cu int, cregs string, hasS bool, s int, hasU bool, u int, hasR bool, regs string) {
		cur := Config{SamplingInterval: cs, UploadInterval: cu, Registers: splitRegs(cregs)}
		var upd ConfigUpdate
		if hasS {
			upd.SamplingInterval = &s
		}
		if hasU {
			upd.UploadInterval = &u
		}
		if hasR {
			upd.Registers = splitRegs(regs)
		}
		next, ack := ValidateUpdate(cur, upd)
		checkAckInvariants(t, cur, next, ack)
		// Idempotent: the same update on the result changes nothing more.
		again, ack2 := ValidateUpdate(next, upd)
		if !again.Equal(next) || len(ack2.Accepted) != 0 {
			t.Fatalf("second application changed %+v -> %+v (%+v)", next, again, ack2)
		}
	})
}

func splitRegs(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}
