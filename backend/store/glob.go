package store

import "strings"

// GlobEscape quotes Redis glob metacharacters in s, so that a key prefix
// can be used in SCAN MATCH or KEYS as a literal: prefixes and device IDs
// are validated, but a prefix may still hold '[' or '*'.
func GlobEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
