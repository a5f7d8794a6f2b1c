// Package selector is the fleet's addressing language: device labels
// (key=value pairs an operator attaches to a device) and selectors, a
// comma-separated conjunction of terms over those labels and over the
// device's live state (online, firmware, config, last seen, ID).
//
// The grammar is documented in docs/OPERATIONS.md ("Selectors"); the
// reason it is hand-written rather than Kubernetes' label selector is in
// docs/DECISIONS.md ("Fleet operations").
package selector

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Label limits.
const (
	MaxLabels      = 16
	MaxKeyLen      = 63
	MaxValueLen    = 63
	forbiddenChars = ",()=!"
)

// Reserved are the built-in selector fields. They cannot be label keys,
// so a term such as online=true always means the live state.
var Reserved = []string{FieldID, FieldOnline, FieldFirmware, FieldConfigDrift, FieldConfigVersion, FieldLastSeen}

// LabelError says which label is bad and why. Field is "labels" or
// "labels.KEY", the way the API names fields.
type LabelError struct {
	Field  string
	Reason string
}

func (e *LabelError) Error() string { return e.Field + ": " + e.Reason }

// ValidKey checks a label key: 1..63 bytes of [a-z0-9_.-], starting and
// ending with [a-z0-9], and not a built-in field name.
func ValidKey(k string) error {
	if _, reason := checkKey(k); reason != "" {
		return fmt.Errorf("label key %q: %s", k, reason)
	}
	return nil
}

// checkKey returns the offset of the first bad byte of a label key and
// why, or "" when k is a good key.
func checkKey(k string) (int, string) {
	if k == "" || len(k) > MaxKeyLen {
		return 0, fmt.Sprintf("a label key must be 1-%d characters", MaxKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if alnum || (c == '_' || c == '.' || c == '-') && i > 0 && i < len(k)-1 {
			continue
		}
		if c == '_' || c == '.' || c == '-' {
			return i, fmt.Sprintf("a label key must start and end with a-z or 0-9, not %q", c)
		}
		return i, fmt.Sprintf("character %q not allowed in a label key (lowercase a-z 0-9, and _ . - inside)", c)
	}
	if slices.Contains(Reserved, k) {
		return 0, fmt.Sprintf("%q is a built-in selector field, not a label key", k)
	}
	return -1, ""
}

// ValidValue checks a label value: at most 63 bytes of printable ASCII
// (space included, but not at either end), none of , ( ) = !.
func ValidValue(v string) error {
	if _, reason := checkValue(v); reason != "" {
		return fmt.Errorf("label value %q: %s", v, reason)
	}
	return nil
}

// checkValue is checkKey for values.
func checkValue(v string) (int, string) {
	if len(v) > MaxValueLen {
		return MaxValueLen, fmt.Sprintf("a label value must be at most %d characters", MaxValueLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c > 0x7e {
			return i, fmt.Sprintf("byte %#02x is not printable ASCII", c)
		}
		if strings.IndexByte(forbiddenChars, c) >= 0 {
			return i, fmt.Sprintf("character %q not allowed in a value (none of %s)", c, forbiddenChars)
		}
	}
	if v != strings.TrimSpace(v) {
		return 0, "a label value must not start or end with a space"
	}
	return -1, ""
}

// ValidateLabels checks a complete label set. It returns a *LabelError
// for the first bad key in sorted order, so the answer is deterministic.
func ValidateLabels(l map[string]string) error {
	if len(l) > MaxLabels {
		return &LabelError{Field: "labels", Reason: fmt.Sprintf("%d labels; at most %d allowed", len(l), MaxLabels)}
	}
	for _, k := range slices.Sorted(maps.Keys(l)) {
		if err := ValidKey(k); err != nil {
			return &LabelError{Field: "labels." + k, Reason: err.Error()}
		}
		if err := ValidValue(l[k]); err != nil {
			return &LabelError{Field: "labels." + k, Reason: err.Error()}
		}
	}
	return nil
}

// Patch applies a JSON merge patch (RFC 7386) to labels: a nil value
// deletes the key, any other sets it. It returns the new set and whether
// it differs from the old one; the result is validated as a whole, and on
// error labels is unchanged.
func Patch(labels map[string]string, patch map[string]*string) (map[string]string, bool, error) {
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range slices.Sorted(maps.Keys(patch)) {
		v := patch[k]
		if v == nil {
			delete(out, k)
			continue
		}
		if err := ValidKey(k); err != nil {
			return nil, false, &LabelError{Field: "labels." + k, Reason: err.Error()}
		}
		if err := ValidValue(*v); err != nil {
			return nil, false, &LabelError{Field: "labels." + k, Reason: err.Error()}
		}
		out[k] = *v
	}
	if err := ValidateLabels(out); err != nil {
		return nil, false, err
	}
	return out, !maps.Equal(out, labels), nil
}
