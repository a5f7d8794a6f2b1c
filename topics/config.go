package topics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// Remote configuration rules shared by the backend (which validates an
// operator's input before it creates a version) and the device (which
// validates every version again, because the backend may be older or
// compromised). Both sides run the same code, so they cannot disagree.

// Config parameter names, as used in config_update and config_ack.
const (
	ParamSamplingInterval = "sampling_interval"
	ParamUploadInterval   = "upload_interval"
	ParamRegisters        = "registers"
)

// ConfigParams lists the parameters in the order acks report them.
var ConfigParams = []string{ParamSamplingInterval, ParamUploadInterval, ParamRegisters}

// Limits of a Config.
const (
	MinSamplingInterval = 1    // seconds
	MaxSamplingInterval = 300  // seconds
	MaxUploadInterval   = 3600 // seconds
	MinRegisters        = 1
	MaxRegisters        = telemetry.NumRegisters
	// MaxConfigPatchSize bounds an operator's config document.
	MaxConfigPatchSize = 4096
)

// Config is a device's complete acquisition configuration.
//
// Rules (Validate): sampling_interval 1-300 s; upload_interval at least
// sampling_interval, at most 3600 s, and a whole multiple of
// sampling_interval (a batch holds whole sampling slots: the acquisition
// scheduler closes batches on multiples of the upload interval and samples
// on multiples of the sampling interval); registers 1-10 distinct names
// of the register map (telemetry.RegisterByName).
type Config struct {
	SamplingInterval int      `json:"sampling_interval"` // seconds
	UploadInterval   int      `json:"upload_interval"`   // seconds
	Registers        []string `json:"registers"`
}

// DefaultConfig is the factory configuration: every register sampled
// every 5 s and uploaded every 15 s.
func DefaultConfig() Config {
	c := Config{SamplingInterval: 5, UploadInterval: 15}
	for _, r := range telemetry.Registers() {
		c.Registers = append(c.Registers, r.Name)
	}
	return c
}

// Clone returns a deep copy of c.
func (c Config) Clone() Config {
	c.Registers = slices.Clone(c.Registers)
	return c
}

// Equal reports whether c and o are the same configuration.
func (c Config) Equal(o Config) bool {
	return c.SamplingInterval == o.SamplingInterval && c.UploadInterval == o.UploadInterval &&
		slices.Equal(c.Registers, o.Registers)
}

// Validate checks c against every rule; the error is a *FieldError naming
// the first offending field.
func (c Config) Validate() error {
	if r := checkSampling(c.SamplingInterval); r != "" {
		return &FieldError{ParamSamplingInterval, r}
	}
	if r := checkUpload(c.UploadInterval); r != "" {
		return &FieldError{ParamUploadInterval, r}
	}
	if r := checkPair(c.SamplingInterval, c.UploadInterval); r != "" {
		return &FieldError{ParamUploadInterval, r}
	}
	if r := checkRegisters(c.Registers); r != "" {
		return &FieldError{ParamRegisters, r}
	}
	return nil
}

// Update returns c as a complete config_update of version v.
func (c Config) Update(v int64) ConfigUpdate {
	s, u := c.SamplingInterval, c.UploadInterval
	return ConfigUpdate{Version: v, SamplingInterval: &s, UploadInterval: &u, Registers: slices.Clone(c.Registers)}
}

func checkSampling(s int) string {
	if s < MinSamplingInterval || s > MaxSamplingInterval {
		return fmt.Sprintf("%d s is out of range %d-%d s", s, MinSamplingInterval, MaxSamplingInterval)
	}
	return ""
}

func checkUpload(u int) string {
	if u < MinSamplingInterval || u > MaxUploadInterval {
		return fmt.Sprintf("%d s is out of range %d-%d s", u, MinSamplingInterval, MaxUploadInterval)
	}
	return ""
}

// checkPair is the cross-field rule; both values are individually valid.
func checkPair(s, u int) string {
	switch {
	case u < s:
		return fmt.Sprintf("upload_interval %d s is less than sampling_interval %d s", u, s)
	case u%s != 0:
		return fmt.Sprintf("upload_interval %d s is not a multiple of sampling_interval %d s", u, s)
	}
	return ""
}

func checkRegisters(regs []string) string {
	if len(regs) < MinRegisters {
		return "empty register list: give 1-10 register names"
	}
	if len(regs) > MaxRegisters {
		return fmt.Sprintf("%d registers: at most %d", len(regs), MaxRegisters)
	}
	for i, name := range regs {
		if _, ok := telemetry.RegisterByName(name); !ok {
			return fmt.Sprintf("unknown register %q", name)
		}
		if slices.Contains(regs[:i], name) {
			return fmt.Sprintf("duplicate register %q", name)
		}
	}
	return ""
}

// ValidateUpdate applies the fields of u to cur, each field on its own,
// and returns the resulting config with a field-by-field ack. Every
// parameter appears in exactly one list of the ack:
//
//   - accepted: given, valid and different from cur (with old and new value);
//   - rejected: given and invalid (with the reason); the old value is kept;
//   - unchanged: not given, or given equal to the current value.
//
// The cross-field rule (upload_interval >= sampling_interval and a multiple
// of it) is checked on the pair that would result. When that pair is
// invalid, every interval field that would have changed is rejected with
// the cross-field reason, so both keep their old values: the old pair was
// valid, so the result is never a half-applied invalid pair. Example: with
// 5/15, {"sampling_interval":20} is rejected (15 < 20) and
// {"sampling_interval":10,"upload_interval":25} rejects both.
//
// cur should be valid; if it is not (a corrupt flash record), ValidateUpdate
// starts from DefaultConfig() instead, so next is always valid.
func ValidateUpdate(cur Config, u ConfigUpdate) (next Config, ack ConfigAck) {
	return validateUpdate(cur, u, nil)
}

// validateUpdate is ValidateUpdate with rejections found while parsing
// (pre): those parameters are rejected with the given reason whatever u
// holds for them.
func validateUpdate(cur Config, u ConfigUpdate, pre map[string]string) (next Config, ack ConfigAck) {
	if cur.Validate() != nil {
		cur = DefaultConfig()
	}
	cur = cur.Clone()
	next = cur.Clone()
	rejected := map[string]string{}
	for p, r := range pre {
		rejected[p] = r
	}
	changed := map[string]bool{}

	// Each interval on its own.
	s, up := cur.SamplingInterval, cur.UploadInterval
	if _, bad := rejected[ParamSamplingInterval]; !bad && u.SamplingInterval != nil && *u.SamplingInterval != cur.SamplingInterval {
		if r := checkSampling(*u.SamplingInterval); r != "" {
			rejected[ParamSamplingInterval] = r
		} else {
			s, changed[ParamSamplingInterval] = *u.SamplingInterval, true
		}
	}
	if _, bad := rejected[ParamUploadInterval]; !bad && u.UploadInterval != nil && *u.UploadInterval != cur.UploadInterval {
		if r := checkUpload(*u.UploadInterval); r != "" {
			rejected[ParamUploadInterval] = r
		} else {
			up, changed[ParamUploadInterval] = *u.UploadInterval, true
		}
	}
	// The pair they would make: reject every interval that would change.
	if r := checkPair(s, up); r != "" {
		for _, p := range []string{ParamSamplingInterval, ParamUploadInterval} {
			if changed[p] {
				rejected[p], changed[p] = r, false
			}
		}
		s, up = cur.SamplingInterval, cur.UploadInterval
	}
	next.SamplingInterval, next.UploadInterval = s, up

	if _, bad := rejected[ParamRegisters]; !bad && u.Registers != nil && !slices.Equal(u.Registers, cur.Registers) {
		if r := checkRegisters(u.Registers); r != "" {
			rejected[ParamRegisters] = r
		} else {
			next.Registers, changed[ParamRegisters] = slices.Clone(u.Registers), true
		}
	}

	ack = ConfigAck{Version: u.Version, Accepted: []FieldChange{}, Rejected: []FieldRejected{}, Unchanged: []string{}}
	for _, p := range ConfigParams {
		switch {
		case rejected[p] != "":
			ack.Rejected = append(ack.Rejected, FieldRejected{Parameter: p, Reason: rejected[p]})
		case changed[p]:
			ack.Accepted = append(ack.Accepted, FieldChange{Parameter: p, Old: paramValue(cur, p), New: paramValue(next, p)})
		default:
			ack.Unchanged = append(ack.Unchanged, p)
		}
	}
	// Parameters rejected while parsing that are not config parameters
	// (unknown fields), in name order after the known ones.
	var extra []string
	for p := range rejected {
		if !slices.Contains(ConfigParams, p) {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	for _, p := range extra {
		ack.Rejected = append(ack.Rejected, FieldRejected{Parameter: p, Reason: rejected[p]})
	}
	return next, ack
}

func paramValue(c Config, p string) any {
	switch p {
	case ParamSamplingInterval:
		return c.SamplingInterval
	case ParamUploadInterval:
		return c.UploadInterval
	}
	return slices.Clone(c.Registers)
}

// ApplyPatch is the backend's all-or-nothing form of ValidateUpdate: it
// returns the config that u makes of cur when no field is rejected, and
// otherwise a FieldErrors listing every rejected field (cur is then not to
// be changed and no version created).
func ApplyPatch(cur Config, u ConfigUpdate) (Config, error) {
	next, ack := ValidateUpdate(cur, u)
	if len(ack.Rejected) == 0 {
		return next, nil
	}
	errs := make(FieldErrors, len(ack.Rejected))
	for i, r := range ack.Rejected {
		errs[i] = &FieldError{Field: r.Parameter, Reason: r.Reason}
	}
	return cur, errs
}

// FieldError says which input field is wrong and why.
type FieldError struct {
	Field  string // JSON field name; empty for the document as a whole
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return "invalid input: " + e.Reason
	}
	return e.Field + ": " + e.Reason
}

// FieldErrors is several FieldErrors; errors.As finds the first.
type FieldErrors []*FieldError

func (es FieldErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap returns the errors, for errors.Is and errors.As.
func (es FieldErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// ParseConfigPatch parses an operator's partial config document, e.g.
// {"sampling_interval":10,"registers":["voltage","current"]} from the
// HTTP API or ecowatt/v1/ops/{id}/config. It is strict: the document must
// be one JSON object of at most MaxConfigPatchSize bytes holding at least
// one of the three parameters and nothing else, with an integer for each
// interval and an array of strings for registers (null is a wrong type).
// It also checks each field on its own (ranges, known and distinct
// registers); the cross-field rule needs the current config, so run
// ApplyPatch on the result. Every error is a *FieldError. The returned
// update has Version 0: the backend assigns versions.
func ParseConfigPatch(data []byte) (ConfigUpdate, error) {
	if len(data) > MaxConfigPatchSize {
		return ConfigUpdate{}, &FieldError{"", fmt.Sprintf("document is %d bytes, limit %d", len(data), MaxConfigPatchSize)}
	}
	fields, err := decodeObject(data)
	if err != nil {
		return ConfigUpdate{}, err
	}
	u, rejected := decodeConfigFields(fields)
	if len(rejected) > 0 {
		return ConfigUpdate{}, &rejected[0]
	}
	if u.SamplingInterval == nil && u.UploadInterval == nil && u.Registers == nil {
		return ConfigUpdate{}, &FieldError{"", "no parameter given: set at least one of " + strings.Join(ConfigParams, ", ")}
	}
	if u.SamplingInterval != nil {
		if r := checkSampling(*u.SamplingInterval); r != "" {
			return ConfigUpdate{}, &FieldError{ParamSamplingInterval, r}
		}
	}
	if u.UploadInterval != nil {
		if r := checkUpload(*u.UploadInterval); r != "" {
			return ConfigUpdate{}, &FieldError{ParamUploadInterval, r}
		}
	}
	if u.SamplingInterval != nil && u.UploadInterval != nil {
		if r := checkPair(*u.SamplingInterval, *u.UploadInterval); r != "" {
			return ConfigUpdate{}, &FieldError{ParamUploadInterval, r}
		}
	}
	if u.Registers != nil {
		if r := checkRegisters(u.Registers); r != "" {
			return ConfigUpdate{}, &FieldError{ParamRegisters, r}
		}
	}
	return u, nil
}

// ErrNoVersion is returned by ValidateConfigMessage for a config message
// without a usable version: it cannot be acknowledged.
var ErrNoVersion = errors.New("config_update has no valid version")

// ValidateConfigMessage is the device's check of a down/config body
// {"config_update":{...}}: it parses the body as strictly as
// ParseConfigPatch, but a bad field does not stop the others. A field of
// the wrong type and an unknown field are rejected in the ack (under their
// own name); the rest goes through ValidateUpdate. It returns an error
// (wrapping ErrNoVersion or a *FieldError) only when there is nothing to
// acknowledge: the body is not a config_update object or its version is
// missing or not a positive integer.
func ValidateConfigMessage(cur Config, body []byte) (next Config, ack ConfigAck, err error) {
	outer, err := decodeObject(body)
	if err != nil {
		return cur, ConfigAck{}, err
	}
	raw, ok := outer["config_update"]
	if !ok || len(outer) != 1 {
		return cur, ConfigAck{}, &FieldError{"", `want exactly one member, "config_update"`}
	}
	fields, err := decodeObject(raw)
	if err != nil {
		return cur, ConfigAck{}, err
	}
	var version int64
	if err := strictUnmarshal(fields["version"], &version); err != nil || version <= 0 {
		return cur, ConfigAck{}, fmt.Errorf("%w: version must be a positive integer", ErrNoVersion)
	}
	delete(fields, "version")
	u, rejected := decodeConfigFields(fields)
	u.Version = version
	pre := make(map[string]string, len(rejected))
	for _, r := range rejected {
		pre[r.Field] = r.Reason
	}
	next, ack = validateUpdate(cur, u, pre)
	return next, ack, nil
}

// decodeObject decodes one JSON object into its members, refusing null,
// other JSON types, trailing data and repeated member names.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, &FieldError{"", "want a JSON object"}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &m); err != nil {
		return nil, &FieldError{"", "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	if dup := duplicateKey(trimmed); dup != "" {
		return nil, &FieldError{dup, "given more than once"}
	}
	return m, nil
}

// duplicateKey returns a member name repeated at the top level of the
// (valid) JSON object obj, or "".
func duplicateKey(obj []byte) string {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if _, err := dec.Token(); err != nil { // {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := tok.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// strictUnmarshal decodes raw into v, refusing a missing value and null.
func strictUnmarshal(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return errors.New("missing")
	}
	if string(raw) == "null" {
		return errors.New("null")
	}
	return json.Unmarshal(raw, v)
}

// decodeConfigFields decodes the parameters among fields; unknown members
// and wrong types come back as rejections, in name order.
func decodeConfigFields(fields map[string]json.RawMessage) (ConfigUpdate, []FieldError) {
	var u ConfigUpdate
	var rejected []FieldError
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		raw := fields[name]
		switch name {
		case ParamSamplingInterval, ParamUploadInterval:
			var n int
			if err := strictUnmarshal(raw, &n); err != nil {
				rejected = append(rejected, FieldError{name, "wrong type: want an integer number of seconds, got " + jsonKind(raw)})
				continue
			}
			if name == ParamSamplingInterval {
				u.SamplingInterval = &n
			} else {
				u.UploadInterval = &n
			}
		case ParamRegisters:
			var regs []string
			if err := strictUnmarshal(raw, &regs); err != nil {
				rejected = append(rejected, FieldError{name, "wrong type: want an array of register names, got " + jsonKind(raw)})
				continue
			}
			if regs == nil {
				regs = []string{}
			}
			u.Registers = regs
		default:
			rejected = append(rejected, FieldError{name, "unknown field; want " + strings.Join(ConfigParams, ", ")})
		}
	}
	return u, rejected
}

// jsonKind names the JSON type of raw for error messages.
func jsonKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array with a non-string element"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "the number " + truncate(string(t), 24)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
