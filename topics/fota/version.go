package fota

import (
	"fmt"
	"strconv"
	"strings"
)

// checkVersionString checks what every version on the wire must be: 1 to
// MaxVersionLen bytes of printable ASCII (it must fit esp_app_desc_t.version).
func checkVersionString(v string) error {
	if v == "" || len(v) > MaxVersionLen {
		return fmt.Errorf("%w: version %q must be 1..%d bytes", ErrMalformed, v, MaxVersionLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= 0x20 || c > 0x7e {
			return fmt.Errorf("%w: version %q: byte %#02x is not printable ASCII", ErrMalformed, v, c)
		}
	}
	return nil
}

// ValidVersion reports whether v can be a firmware version in a manifest:
// 1..31 printable ASCII bytes that CompareVersions understands.
func ValidVersion(v string) error {
	if err := checkVersionString(v); err != nil {
		return err
	}
	if _, err := parseVersion(v); err != nil {
		return err
	}
	return nil
}

// version is a parsed semver-ish version.
type version struct {
	core [3]uint64
	pre  []string // pre-release identifiers; empty for a release
}

// parseVersion reads [v]MAJOR[.MINOR[.PATCH]][-PRE][+BUILD]: numeric
// components without leading zeros (missing ones count as 0), pre-release
// identifiers of [0-9A-Za-z-] as in semver 2.0, build metadata ignored.
func parseVersion(s string) (version, error) {
	var v version
	bad := func(why string) (version, error) {
		return version{}, fmt.Errorf("%w: version %q: %s", ErrMalformed, s, why)
	}
	rest := strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		if !validIdents(rest[i+1:], false) {
			return bad("bad build metadata")
		}
		rest = rest[:i]
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		if !validIdents(rest[i+1:], true) {
			return bad("bad pre-release")
		}
		v.pre = strings.Split(rest[i+1:], ".")
		rest = rest[:i]
	}
	parts := strings.Split(rest, ".")
	if len(parts) > 3 {
		return bad("more than three numeric components")
	}
	for i, p := range parts {
		if !isNumeric(p) {
			return bad("components must be decimal numbers without leading zeros")
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return bad("component out of range")
		}
		v.core[i] = n
	}
	return v, nil
}

// validIdents checks dot-separated non-empty identifiers of [0-9A-Za-z-];
// for pre-release, numeric identifiers must not have leading zeros.
func validIdents(s string, pre bool) bool {
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return false
		}
		digits := true
		for i := 0; i < len(id); i++ {
			c := id[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digits = false
			default:
				return false
			}
		}
		if pre && digits && !isNumeric(id) {
			return false
		}
	}
	return true
}

// isNumeric: decimal digits, no leading zero unless the number is 0.
func isNumeric(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// CompareVersions compares two firmware versions and returns -1, 0 or +1 as
// a is older than, equal to or newer than b. Versions are semver-ish:
// an optional "v", one to three numeric components compared as numbers
// (1.0.4 < 1.0.10; "1.2" == "1.2.0"), then an optional pre-release that
// sorts before the release (1.1.0-rc.1 < 1.1.0) with semver 2.0 precedence,
// then optional "+build" metadata that is ignored.
func CompareVersions(a, b string) (int, error) {
	va, err := parseVersion(a)
	if err != nil {
		return 0, fmt.Errorf("compare versions: %w", err)
	}
	vb, err := parseVersion(b)
	if err != nil {
		return 0, fmt.Errorf("compare versions: %w", err)
	}
	for i := range va.core {
		if c := cmpUint(va.core[i], vb.core[i]); c != 0 {
			return c, nil
		}
	}
	switch {
	case len(va.pre) == 0 && len(vb.pre) == 0:
		return 0, nil
	case len(va.pre) == 0:
		return 1, nil
	case len(vb.pre) == 0:
		return -1, nil
	}
	for i := 0; i < len(va.pre) && i < len(vb.pre); i++ {
		if c := cmpIdent(va.pre[i], vb.pre[i]); c != 0 {
			return c, nil
		}
	}
	return cmpUint(uint64(len(va.pre)), uint64(len(vb.pre))), nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpIdent orders pre-release identifiers: numeric ones numerically and
// below alphanumeric ones, alphanumeric ones in ASCII order.
func cmpIdent(a, b string) int {
	na, nb := isNumeric(a), isNumeric(b)
	switch {
	case na && nb:
		if len(a) != len(b) { // no leading zeros, so longer is larger
			return cmpUint(uint64(len(a)), uint64(len(b)))
		}
		return strings.Compare(a, b)
	case na:
		return -1
	case nb:
		return 1
	}
	return strings.Compare(a, b)
}

// CheckUpgrade is the anti-downgrade rule: offered must be strictly newer
// than running, else the error wraps ErrDowngrade. An explicit rollback
// (down/rollback) does not go through here.
func CheckUpgrade(running, offered string) error {
	c, err := CompareVersions(offered, running)
	if err != nil {
		return fmt.Errorf("check upgrade: %w", err)
	}
	if c <= 0 {
		return fmt.Errorf("check upgrade: %w: %s is not newer than running %s", ErrDowngrade, offered, running)
	}
	return nil
}
