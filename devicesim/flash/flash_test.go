package flash

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

type rec struct {
	Count int    `json:"count"`
	Text  string `json:"text"`
}

func TestSaveLoad(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var got rec
	if err := s.Load("boot", &got); !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load missing = %v, want ErrNotFound", err)
	}
	want := rec{Count: 3, Text: "hello"}
	if err := s.Save("boot", want); err != nil {
		t.Fatal(err)
	}
	if err := s.Load("boot", &got); err != nil || got != want {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, want)
	}
	if err := s.Delete("boot"); err != nil {
		t.Fatal(err)
	}
	if err := s.Load("boot", &got); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load after Delete = %v", err)
	}
}

func TestBadNames(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "../x", "a/b", ".hidden", "x.tmp-1", `a\b`} {
		t.Run(name, func(t *testing.T) {
			if err := s.WriteFile(name, []byte("x")); err == nil {
				t.Errorf("WriteFile(%q) succeeded", name)
			}
			if _, err := s.ReadFile(name); err == nil {
				t.Errorf("ReadFile(%q) succeeded", name)
			}
		})
	}
}

// TestPowerCut cuts the power at each step of a write and checks that the
// old record survives intact (or, after the rename, the new one), that the
// device stays dead until the power returns, and that reopening the store
// cleans up the temporary file.
func TestPowerCut(t *testing.T) {
	old := rec{Count: 1, Text: "old"}
	next := rec{Count: 2, Text: strings.Repeat("new", 100)}
	for _, tc := range []struct {
		step Step
		want rec
	}{
		{StepWrite, old},
		{StepSync, old},
		{StepRename, old},
		{StepSyncDir, next}, // renamed already; only durability was at stake
	} {
		t.Run(tc.step.String(), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Save("nonce", old); err != nil {
				t.Fatal(err)
			}
			cut := &PowerCut{Prefix: "nonce", Step: tc.step}
			s.SetFault(cut.Fault)
			if err := s.Save("nonce", next); !errors.Is(err, ErrPowerCut) {
				t.Fatalf("Save during power cut = %v, want ErrPowerCut", err)
			}
			if !cut.Hit() {
				t.Fatal("cut not hit")
			}
			if err := s.Save("other", old); !errors.Is(err, ErrPowerCut) {
				t.Fatalf("Save after power cut = %v, want ErrPowerCut", err)
			}

			// Reboot: reopen the directory.
			s2, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got rec
			if err := s2.Load("nonce", &got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("after cut at %s: record = %+v, want %+v", tc.step, got, tc.want)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if strings.Contains(e.Name(), tmpMarker) {
					t.Errorf("leftover temporary file %s after reopen", e.Name())
				}
			}
			if _, err := s2.ReadFile("other.json"); !errors.Is(err, ErrNotFound) {
				t.Errorf("write after the cut reached the disk: %v", err)
			}
		})
	}
}

func TestPowerCutNth(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cut := &PowerCut{Prefix: "r", Step: StepRename, N: 3}
	s.SetFault(cut.Fault)
	for i := 1; i <= 2; i++ {
		if err := s.Save("r", rec{Count: i}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := s.Save("r", rec{Count: 3}); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("write 3 = %v, want power cut", err)
	}
	cut.Restore()
	var got rec
	if err := s.Load("r", &got); err != nil || got.Count != 2 {
		t.Fatalf("Load = %+v, %v; want count 2", got, err)
	}
	if err := s.Save("r", rec{Count: 4}); err != nil {
		t.Fatalf("write after Restore: %v", err)
	}
}

func TestBlob(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 1<<16)
	for i := range img {
		img[i] = byte(i * 7)
	}
	if err := s.WriteFile("slot_b.bin", img); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadFile("slot_b.bin")
	if err != nil || string(got) != string(img) {
		t.Fatalf("ReadFile: %v (len %d)", err, len(got))
	}
	if err := s.Remove("slot_b.bin"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("slot_b.bin"); err != nil {
		t.Fatalf("Remove twice: %v", err)
	}
}
