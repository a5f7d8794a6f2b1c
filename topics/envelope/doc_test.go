package envelope

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDocReasonNames holds the reason list of docs/PROTOCOL.md section 6.1
// to the Reason constants, so the spec, the vectors and the metrics cannot
// drift apart again.
func TestDocReasonNames(t *testing.T) {
	doc, err := os.ReadFile("../../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- reason-names")
	list, _, ok2 := strings.Cut(rest, "<!-- /reason-names -->")
	if !ok || !ok2 {
		t.Fatal("PROTOCOL.md has no reason-names block")
	}
	var names []string
	for _, m := range regexp.MustCompile("(?m)^- `([a-z_]+)`").FindAllStringSubmatch(list, -1) {
		names = append(names, m[1])
	}
	want := slices.Clone(Reasons)
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("PROTOCOL.md 6.1 lists %v, the code has %v", names, want)
	}
}
