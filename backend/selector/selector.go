package selector

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/topics/fota"
)

// Built-in fields over a device's live state.
const (
	FieldID            = "id"             // =, !=, in, notin, ~ (prefix)
	FieldOnline        = "online"         // =, != true|false
	FieldFirmware      = "firmware"       // = != < <= > >= in notin, semver order (fota.CompareVersions)
	FieldConfigDrift   = "config_drift"   // =, != true|false
	FieldConfigVersion = "config_version" // = != < <= > >= with an integer
	FieldLastSeen      = "last_seen"      // < <= > >= with an age (1h, 30m, 7d)
)

// Op is a term's operator.
type Op uint8

// Operators. Exists and NotExists are the bare "key" and "!key" forms.
const (
	Eq Op = iota + 1
	Ne
	In
	NotIn
	Exists
	NotExists
	Lt
	Le
	Gt
	Ge
	Prefix
)

var opText = map[Op]string{Eq: "=", Ne: "!=", In: " in ", NotIn: " notin ", Lt: "<", Le: "<=", Gt: ">", Ge: ">=", Prefix: "~"}

// Term is one condition. Values holds the operand(s) as written (one for
// every operator but In/NotIn, none for Exists/NotExists).
type Term struct {
	Key    string
	Op     Op
	Values []string
	// Field reports whether Key is a built-in field rather than a label.
	Field bool

	num int64         // config_version operand
	age time.Duration // last_seen operand
	b   bool          // online / config_drift operand
}

// Selector is a conjunction of terms; the zero Selector matches every
// device.
type Selector struct {
	Terms []Term
}

// View is what a selector looks at: a device's labels and live state.
type View struct {
	ID            string
	Labels        map[string]string
	Online        bool
	Firmware      string // "" before the first birth
	ConfigVersion int64
	ConfigDrift   bool
	LastSeen      time.Time // zero when never seen
}

// Empty reports whether s has no terms (and so matches everything).
func (s Selector) Empty() bool { return len(s.Terms) == 0 }

// String is the canonical text of s; Parse(s.String()) yields s again.
func (s Selector) String() string {
	parts := make([]string, len(s.Terms))
	for i, t := range s.Terms {
		parts[i] = t.String()
	}
	return strings.Join(parts, ",")
}

// String is the canonical text of t.
func (t Term) String() string {
	switch t.Op {
	case Exists:
		return t.Key
	case NotExists:
		return "!" + t.Key
	case In, NotIn:
		return t.Key + opText[t.Op] + "(" + strings.Join(t.Values, ",") + ")"
	}
	return t.Key + opText[t.Op] + t.Values[0]
}

// Match reports whether v satisfies every term of s, with ages measured
// from now. It is the reference semantics: index-backed queries must
// return exactly the devices Match accepts.
func (s Selector) Match(v View, now time.Time) bool {
	for i := range s.Terms {
		if !s.Terms[i].match(v, now) {
			return false
		}
	}
	return true
}

func (t *Term) match(v View, now time.Time) bool {
	if !t.Field {
		val, ok := v.Labels[t.Key]
		switch t.Op {
		case Exists:
			return ok
		case NotExists:
			return !ok
		}
		return matchString(t.Op, t.Values, val, ok)
	}
	switch t.Key {
	case FieldID:
		if t.Op == Prefix {
			return strings.HasPrefix(v.ID, t.Values[0])
		}
		return matchString(t.Op, t.Values, v.ID, true)
	case FieldOnline:
		return (v.Online == t.b) == (t.Op == Eq)
	case FieldConfigDrift:
		return (v.ConfigDrift == t.b) == (t.Op == Eq)
	case FieldConfigVersion:
		return cmpOp(t.Op, cmp.Compare(v.ConfigVersion, t.num))
	case FieldLastSeen:
		// A device never seen is infinitely old.
		if v.LastSeen.IsZero() {
			return t.Op == Gt || t.Op == Ge
		}
		age := now.Sub(v.LastSeen)
		return cmpOp(t.Op, cmp.Compare(age, t.age))
	case FieldFirmware:
		return matchFirmware(t.Op, t.Values, v.Firmware)
	}
	return false
}

// matchString applies =, !=, in, notin to a value that may be absent;
// an absent label is unequal to everything.
func matchString(op Op, vals []string, val string, ok bool) bool {
	switch op {
	case Eq:
		return ok && val == vals[0]
	case Ne:
		return !ok || val != vals[0]
	case In:
		return ok && slices.Contains(vals, val)
	case NotIn:
		return !ok || !slices.Contains(vals, val)
	}
	return false
}

// matchFirmware compares in FOTA's order. A device with no version, or
// one FOTA cannot parse, equals nothing and is ordered against nothing.
func matchFirmware(op Op, vals []string, fw string) bool {
	eq := func(want string) bool {
		c, err := fota.CompareVersions(fw, want)
		return err == nil && c == 0
	}
	switch op {
	case Eq:
		return eq(vals[0])
	case Ne:
		return !eq(vals[0])
	case In:
		return slices.ContainsFunc(vals, eq)
	case NotIn:
		return !slices.ContainsFunc(vals, eq)
	}
	c, err := fota.CompareVersions(fw, vals[0])
	return err == nil && cmpOp(op, c)
}

func cmpOp(op Op, c int) bool {
	switch op {
	case Eq:
		return c == 0
	case Ne:
		return c != 0
	case Lt:
		return c < 0
	case Le:
		return c <= 0
	case Gt:
		return c > 0
	case Ge:
		return c >= 0
	}
	return false
}

// parseAge reads a last_seen operand: a Go duration (90s, 1h30m) or a
// whole number of days (7d). It must be positive.
func parseAge(s string) (time.Duration, bool) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.ParseUint(n, 10, 16)
		if err != nil || d == 0 || (len(n) > 1 && n[0] == '0') {
			return 0, false
		}
		return time.Duration(d) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(s)
	return d, err == nil && d > 0
}
