package flash

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteAt writes data at offset off of the raw file, creating it if needed,
// and fsyncs it. Unlike WriteFile it is not atomic: it is a partition write
// (esp_partition_write), as firmware does for an OTA slot. A power cut
// (a Fault at StepWrite) leaves half of data written at off and the rest of
// the file as it was, so callers must record separately, and only after
// WriteAt returns, that the range is good (FOTA keeps a chunk bitmap).
func (s *Store) WriteAt(file string, off int64, data []byte) (err error) {
	if err := checkName(file); err != nil {
		return fmt.Errorf("flash write at: %w", err)
	}
	if off < 0 {
		return fmt.Errorf("flash write at %s: negative offset %d", file, off)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.dir, file), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("flash write at %s: %w", file, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("flash write at %s: %w", file, cerr)
		}
	}()
	if herr := s.hook(file, StepWrite); herr != nil {
		_, _ = f.WriteAt(data[:len(data)/2], off) // a torn write
		return fmt.Errorf("flash write at %s offset %d: %w", file, off, herr)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("flash write at %s offset %d: %w", file, off, err)
	}
	if herr := s.hook(file, StepSync); herr != nil {
		return fmt.Errorf("flash write at %s offset %d: %w", file, off, herr)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flash write at %s offset %d: %w", file, off, err)
	}
	return nil
}
