package flash

import (
	"bytes"
	"errors"
	"testing"
)

// TestWriteAt: partition writes land at their offset; a power cut at the
// write step tears the data (half written), and later writes fail until
// the power is restored.
func TestWriteAt(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt("slot_b", 4, []byte("wxyz")); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt("slot_b", 0, []byte("abcd")); err != nil {
		t.Fatal(err)
	}
	if b, err := s.ReadFile("slot_b"); err != nil || string(b) != "abcdwxyz" {
		t.Fatalf("ReadFile = %q, %v", b, err)
	}
	for _, tc := range []struct {
		name string
		file string
		off  int64
	}{
		{"bad name", "../slot", 0},
		{"negative offset", "slot_b", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.WriteAt(tc.file, tc.off, []byte("x")); err == nil {
				t.Fatal("WriteAt succeeded")
			}
		})
	}
	cut := &PowerCut{Prefix: "slot_", Step: StepWrite}
	s.SetFault(cut.Fault)
	if err := s.WriteAt("slot_b", 0, []byte("ABCD")); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("WriteAt under power cut = %v", err)
	}
	if b, _ := s.ReadFile("slot_b"); !bytes.Equal(b, []byte("ABcdwxyz")) {
		t.Fatalf("torn write left %q, want ABcdwxyz", b)
	}
	if err := s.WriteAt("slot_b", 0, []byte("ABCD")); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("WriteAt after power cut = %v", err)
	}
	cut.Restore()
	s.SetFault(nil)
	if err := s.WriteAt("slot_b", 0, []byte("ABCD")); err != nil {
		t.Fatal(err)
	}
}
