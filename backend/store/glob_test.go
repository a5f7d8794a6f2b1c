package store

import "testing"

func TestGlobEscape(t *testing.T) {
	if got, want := GlobEscape(`p*?[x]\:`), `p\*\?\[x\]\\:`; got != want {
		t.Fatalf("GlobEscape = %q, want %q", got, want)
	}
}
