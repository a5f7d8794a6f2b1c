// Package flash is a simulated device's non-volatile storage: one state
// directory per device holding named records. Every write is atomic in the
// way firmware does it on a real flash filesystem: write a temporary file,
// fsync it, rename it over the record, fsync the directory. A reader
// therefore sees either the old record or the new one, never a mix, even
// when power is cut in the middle (see Fault and PowerCut).
//
// Records are either JSON values (Save/Load, file NAME.json) or raw blobs
// (WriteFile/ReadFile, file NAME as given) for things such as firmware
// slots. Adding a record is a matter of choosing a name and a type.
package flash

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// ErrNotFound is returned by Load and ReadFile when a record was never
// written (it also matches fs.ErrNotExist).
var ErrNotFound = fmt.Errorf("flash record not found: %w", fs.ErrNotExist)

// ErrPowerCut is returned by every write once an injected power cut has hit.
var ErrPowerCut = errors.New("flash: power cut")

// tmpMarker is in the name of every temporary file; Open removes leftovers.
const tmpMarker = ".tmp-"

// Step is one step of an atomic write, in order.
type Step int

// The steps of an atomic write.
const (
	StepWrite   Step = iota // write the data to the temporary file
	StepSync                // fsync the temporary file
	StepRename              // rename it over the record
	StepSyncDir             // fsync the directory
)

func (s Step) String() string {
	switch s {
	case StepWrite:
		return "write"
	case StepSync:
		return "sync"
	case StepRename:
		return "rename"
	case StepSyncDir:
		return "syncdir"
	}
	return fmt.Sprintf("step(%d)", int(s))
}

// Op describes the write step about to happen.
type Op struct {
	File string // file name inside the state directory, e.g. "boot.json"
	Step Step
}

// Fault is consulted before every step of every write. A non-nil error
// aborts the write at that step, leaving the disk as a power cut would:
// at StepWrite half of the data reaches the temporary file, which is left
// behind; at later steps the temporary file is complete but may not have
// replaced the record. Tests use it to inject failures; nil means none.
type Fault func(Op) error

// Store is one device's flash. It is safe for concurrent use; writes are
// serialised, as they are on a single flash chip.
type Store struct {
	dir string

	mu    sync.Mutex // guards fault and seq, and serialises writes
	fault Fault
	seq   uint64 // temporary file counter
}

// Open opens (creating if needed) the state directory dir and removes any
// temporary files a previous power cut left behind.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("flash open %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("flash open %s: %w", dir, err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), tmpMarker) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("flash open %s: remove leftover: %w", dir, err)
			}
		}
	}
	return &Store{dir: dir}, nil
}

// SetFault installs (or, with nil, removes) a fault hook.
func (s *Store) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// Load reads the JSON record name into v. It returns an error wrapping
// ErrNotFound when the record does not exist.
func (s *Store) Load(name string, v any) error {
	b, err := s.ReadFile(name + ".json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("flash load %s: %w", name, err)
	}
	return nil
}

// Save writes v as the JSON record name, atomically.
func (s *Store) Save(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("flash save %s: %w", name, err)
	}
	if err := s.WriteFile(name+".json", b); err != nil {
		return err
	}
	return nil
}

// Delete removes the JSON record name; a missing record is not an error.
func (s *Store) Delete(name string) error { return s.Remove(name + ".json") }

// ReadFile reads the raw record file.
func (s *Store) ReadFile(file string) ([]byte, error) {
	if err := checkName(file); err != nil {
		return nil, fmt.Errorf("flash read: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(s.dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("flash read %s: %w", file, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("flash read %s: %w", file, err)
	}
	return b, nil
}

// Remove deletes the raw record file; a missing file is not an error.
func (s *Store) Remove(file string) error {
	if err := checkName(file); err != nil {
		return fmt.Errorf("flash remove: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.hook(file, StepRename); err != nil {
		return fmt.Errorf("flash remove %s: %w", file, err)
	}
	if err := os.Remove(filepath.Join(s.dir, file)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("flash remove %s: %w", file, err)
	}
	if err := s.syncDir(file); err != nil {
		return fmt.Errorf("flash remove %s: %w", file, err)
	}
	return nil
}

// WriteFile replaces the raw record file with data, atomically: temporary
// file, fsync, rename, fsync of the directory.
func (s *Store) WriteFile(file string, data []byte) (err error) {
	if err := checkName(file); err != nil {
		return fmt.Errorf("flash write: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("flash write %s: %w", file, err)
		}
	}()
	s.seq++
	tmp := filepath.Join(s.dir, fmt.Sprintf("%s%s%d", file, tmpMarker, s.seq))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	cleanup := true // remove tmp on ordinary errors; a power cut leaves it
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if err != nil && cleanup {
			_ = os.Remove(tmp)
		}
	}()
	if herr := s.hook(file, StepWrite); herr != nil {
		_, _ = f.Write(data[:len(data)/2]) // a torn write
		cleanup = false
		return herr
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if herr := s.hook(file, StepSync); herr != nil {
		cleanup = false
		return herr
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		f = nil
		return err
	}
	f = nil
	if herr := s.hook(file, StepRename); herr != nil {
		cleanup = false
		return herr
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, file)); err != nil {
		return err
	}
	return s.syncDir(file)
}

// syncDir fsyncs the directory so that a rename or removal is durable.
// Called with s.mu held.
func (s *Store) syncDir(file string) error {
	if err := s.hook(file, StepSyncDir); err != nil {
		return err
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// hook consults the fault hook. Called with s.mu held.
func (s *Store) hook(file string, step Step) error {
	if s.fault == nil {
		return nil
	}
	return s.fault(Op{File: file, Step: step})
}

// checkName allows plain file names only: no separators, no dot files, no
// temporary-file marker.
func checkName(file string) error {
	if file == "" || file == "." || file == ".." || strings.HasPrefix(file, ".") ||
		strings.ContainsAny(file, `/\`+"\x00") || strings.Contains(file, tmpMarker) {
		return fmt.Errorf("invalid record name %q", file)
	}
	return nil
}
