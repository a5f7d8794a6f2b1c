package devicesim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// errNoKey refuses manifests on a device without a firmware public key.
var errNoKey = fmt.Errorf("%w: no firmware public key configured", fota.ErrSignature)

// otherSlot returns the slot that is not s.
func otherSlot(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// handleManifest processes down/fota_manifest (PROTOCOL.md 12.3): strict
// parse, signature, anti-downgrade, slot size; then resume the download of
// the same manifest, or start a new one. A refused manifest changes
// nothing but the reported state.
func (m *FOTAManager) handleManifest(_ context.Context, msg envelope.Message) error {
	defer m.wake()
	man, err := fota.ParseManifestBody(msg.Body)
	offered := "" // the version refused, when the manifest parsed
	if err == nil {
		offered = man.Version
		err = m.checkManifest(man)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dead {
		return nil
	}
	if errors.Is(err, fota.ErrDowngrade) && man.Hash == m.rec.Hash &&
		(m.rec.State == fota.StateSucceeded || m.rec.State == fota.StatePendingVerify) {
		// The backend re-sends a manifest after a birth: this image is
		// the one installed, so repeat the state instead of refusing.
		if m.rec.State == fota.StateSucceeded {
			m.queueLocked(m.statusLocked())
		}
		return nil
	}
	if err != nil {
		m.refuseLocked(offered, err)
		return fmt.Errorf("fota manifest refused: %w", err)
	}
	if m.man != nil && m.man.Hash == man.Hash {
		switch m.rec.State {
		case fota.StateDownloading:
			m.resumes.Add(1)
			m.d.log.Info().Str("version", man.Version).Int("held", m.bits.Count()).Msg("fota manifest again: resuming")
			m.queueLocked(m.statusLocked())
			return nil
		case fota.StateVerifying, fota.StateVerified, fota.StateRebooting:
			m.queueLocked(m.statusLocked())
			return nil
		}
	}
	if !m.rec.State.Stable() && m.rec.State != fota.StateDownloading {
		err := fmt.Errorf("busy: %s %s", m.rec.State, m.rec.Version)
		m.refuseLocked(man.Version, err)
		return fmt.Errorf("fota manifest %s refused: %w", man.Version, err)
	}
	if err := m.startLocked(man); err != nil {
		m.rec = fotaRecord{State: fota.StateFailed, Version: man.Version, Reason: fota.ReasonStorage, Detail: err.Error()}
		m.man, m.bits = nil, nil
		m.persistLocked()
		m.queueLocked(m.statusLocked())
		return fmt.Errorf("fota manifest %s: %w", man.Version, err)
	}
	return nil
}

// checkManifest runs the device checks after parsing, in order.
func (m *FOTAManager) checkManifest(man fota.Manifest) error {
	if m.opt.PublicKey == nil {
		return errNoKey
	}
	if err := man.Verify(m.opt.PublicKey); err != nil {
		return err
	}
	if err := fota.CheckUpgrade(m.d.Boot().FirmwareVersion, man.Version); err != nil {
		return err
	}
	if man.Size > m.opt.SlotSize {
		return fmt.Errorf("%w: image is %d bytes, the slot holds %d", fota.ErrTooLarge, man.Size, m.opt.SlotSize)
	}
	return nil
}

// refuseLocked reports a refused manifest or rollback: a resting device
// moves to failed; a busy one repeats its state with the reason. version
// is the refused manifest's version, which the failure names so that the
// backend can end the update that offered it; "" (a rollback, or a
// manifest that did not parse) names the running version.
func (m *FOTAManager) refuseLocked(version string, err error) {
	m.refused.Add(1)
	reason := fota.ReasonOf(err)
	if errors.Is(err, errNoPrevious) {
		reason = fota.ReasonNoPrevious
	}
	m.d.log.Warn().Err(err).Str("reason", reason).Msg("fota refused")
	if m.rec.State.Stable() {
		if version == "" {
			version = m.boot.running
		}
		m.rec = fotaRecord{State: fota.StateFailed, Version: version, Reason: reason, Detail: err.Error()}
		m.man, m.bits = nil, nil
		m.persistLocked()
		m.queueLocked(m.statusLocked())
		return
	}
	s := m.statusLocked()
	s.Reason, s.Detail = reason, err.Error()
	m.queueLocked(s)
}

// startLocked starts a download: invalidate the inactive slot in the boot
// record (no rollback to it from now on), erase it, persist the manifest,
// an empty bitmap and the state, in that order: the state record names
// the manifest hash, and a bitmap counts only for the manifest whose hash
// it carries.
func (m *FOTAManager) startLocked(man fota.Manifest) error {
	slot := otherSlot(m.d.Boot().ActiveSlot)
	err := m.d.UpdateBoot(func(b *BootRecord) error {
		if b.PreviousSlot == slot {
			b.PreviousSlot = ""
		}
		if b.Slots == nil {
			b.Slots = map[string]SlotInfo{}
		}
		b.Slots[slot] = SlotInfo{State: SlotEmpty}
		return nil
	})
	if err != nil {
		return err
	}
	if err := m.d.fl.Remove(SlotFile(slot)); err != nil {
		return fmt.Errorf("erase slot %s: %w", slot, err)
	}
	if err := m.d.fl.Save(RecordFOTAManifest, fotaManifestRecord{Slot: slot, Manifest: man}); err != nil {
		return fmt.Errorf("persist manifest: %w", err)
	}
	bits, err := fota.NewBitmap(len(man.Chunks))
	if err != nil {
		return err
	}
	m.man, m.bits = &man, bits
	if err := m.saveBitmapLocked(); err != nil {
		return fmt.Errorf("persist bitmap: %w", err)
	}
	prev := m.rec.State
	m.rec = fotaRecord{State: fota.StateDownloading, Version: man.Version, Hash: man.Hash, Slot: slot, Total: len(man.Chunks)}
	if err := m.d.fl.Save(RecordFOTA, m.rec); err != nil {
		return fmt.Errorf("persist fota state: %w", err)
	}
	clear(m.inflight)
	clear(m.tries)
	m.reported = 0
	m.downloads.Add(1)
	m.d.log.Info().Str("version", man.Version).Int64("size", man.Size).Int("chunks", len(man.Chunks)).
		Str("slot", slot).Str("from_state", string(prev)).Msg("fota download started")
	m.queueLocked(m.statusLocked())
	return nil
}

// handleChunk processes one down/fota_chunk (PROTOCOL.md 12.5): the
// runtime has checked the binary envelope; decode, check against the
// manifest before writing, write at its offset in the inactive slot, then
// set its bit and persist the bitmap. A refused chunk is counted, reported
// and requested again; a duplicate is counted and dropped.
func (m *FOTAManager) handleChunk(_ context.Context, msg envelope.Message) error {
	defer m.wake()
	c, err := fota.DecodeChunk(msg.Body)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dead {
		return nil
	}
	if m.rec.State != fota.StateDownloading || m.man == nil {
		m.ignored.Add(1)
		return nil
	}
	decoded := err == nil
	if decoded {
		err = m.man.CheckChunk(c)
	}
	if err != nil {
		m.badChunks.Add(1)
		if decoded && c.Version == m.man.Version {
			// Corrupt: ask again at once. A foreign chunk leaves the real
			// one in flight (it may still come) until it times out.
			delete(m.inflight, c.Index)
		}
		s := m.statusLocked()
		s.Reason, s.Detail = fota.ReasonOf(err), err.Error()
		m.queueLocked(s)
		return fmt.Errorf("fota chunk refused: %w", err)
	}
	if m.bits.Has(c.Index) {
		m.refetched.Add(1)
		delete(m.inflight, c.Index)
		return nil
	}
	off, _, _ := m.man.ChunkBounds(c.Index)
	if err := m.d.fl.WriteAt(SlotFile(m.rec.Slot), off, c.Data); err != nil {
		m.writeErrorLocked(err)
		return fmt.Errorf("fota chunk %d: %w", c.Index, err)
	}
	_ = m.bits.Set(c.Index)
	if err := m.saveBitmapLocked(); err != nil {
		// Written but not recorded: it is fetched again, never trusted.
		m.writeErrorLocked(err)
		return fmt.Errorf("fota chunk %d: persist bitmap: %w", c.Index, err)
	}
	delete(m.inflight, c.Index)
	delete(m.tries, c.Index)
	m.written.Add(1)
	held, total := m.bits.Count(), m.bits.Len()
	if step := max(1, total/20); held == total || held-m.reported >= step {
		m.reported = held
		m.queueLocked(m.statusLocked())
	}
	return nil
}

// timeoutFor is the request timeout of a chunk asked for the n-th time.
func (m *FOTAManager) timeoutFor(n int) time.Duration {
	t := m.opt.ChunkTimeout
	for i := 1; i < n && t < m.opt.MaxChunkTimeout; i++ {
		t *= 2
	}
	return min(t, m.opt.MaxChunkTimeout)
}

// pump expires timed-out chunks and requests the lowest missing chunks
// not in flight, up to the window. It returns true when every chunk is
// held and the image should be verified.
func (m *FOTAManager) pump(ctx context.Context) bool {
	m.mu.Lock()
	if m.rec.State != fota.StateDownloading || m.man == nil {
		m.mu.Unlock()
		return false
	}
	if m.bits.Complete() {
		m.mu.Unlock()
		return true
	}
	now := m.d.clk.Now()
	for i, f := range m.inflight {
		if !now.Before(f.deadline) {
			delete(m.inflight, i)
			m.timeouts.Add(1)
		}
	}
	want := m.opt.Window - len(m.inflight)
	if want <= 0 || !m.d.Online() {
		m.mu.Unlock()
		return false
	}
	var ask []int
	for _, i := range m.bits.Missing(m.opt.Window + len(m.inflight)) {
		if _, busy := m.inflight[i]; !busy && len(ask) < want {
			ask = append(ask, i)
		}
	}
	for _, i := range ask {
		m.tries[i]++
		m.inflight[i] = inflight{deadline: now.Add(m.timeoutFor(m.tries[i]))}
	}
	version := m.man.Version
	m.mu.Unlock()
	if len(ask) == 0 {
		return false
	}
	req := fota.RequestBody{FotaRequest: &fota.Request{Version: version, Chunks: ask}}
	if err := m.d.Publish(ctx, topics.KindFOTARequest, req); err != nil {
		// Lost with the connection: OnConnect asks again.
		m.d.log.Debug().Err(err).Ints("chunks", ask).Msg("fota request not sent")
		m.mu.Lock()
		for _, i := range ask {
			delete(m.inflight, i)
		}
		m.mu.Unlock()
		return false
	}
	m.requests.Add(1)
	m.requested.Add(int64(len(ask)))
	return false
}

// nextDeadline is the earliest chunk timeout, if any.
func (m *FOTAManager) nextDeadlineLocked() (time.Time, bool) {
	var t time.Time
	for _, f := range m.inflight {
		if t.IsZero() || f.deadline.Before(t) {
			t = f.deadline
		}
	}
	return t, !t.IsZero()
}
