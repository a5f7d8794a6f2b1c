package devicesim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// errNoPrevious refuses a rollback (reason no_previous_slot).
var errNoPrevious = errors.New("no previous valid slot")

// run is the manager's task for one boot: it reports what the bootloader
// did, runs the self-test of a pending-verify image, sends statuses,
// requests chunks and times them out, and verifies a complete image.
func (m *FOTAManager) run(ctx context.Context) error {
	bootedAt := m.d.clk.Now()
	failBoot := m.startTask()
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if m.step(ctx, bootedAt, failBoot) {
			<-ctx.Done() // rebooting
			return nil
		}
		if timer != nil {
			timer.Stop()
			timer = nil
		}
		var due <-chan time.Time
		if at, ok := m.nextWake(bootedAt, failBoot); ok {
			timer = m.d.clk.NewTimer(max(at.Sub(m.d.clk.Now()), 0))
			due = timer.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
		case <-due:
		}
	}
}

// startTask persists what the boot changed and reports whether the image
// on trial is one that fails its self-test (a fail-boot test image, or an
// unreadable one).
func (m *FOTAManager) startTask() (failBoot bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.event != nil {
		m.persistLocked()
	}
	if m.selfTest != selfTestRunning {
		return false
	}
	img, err := m.d.fl.ReadFile(SlotFile(m.boot.slot))
	if err == nil {
		var d fota.Descriptor
		if d, err = fota.ParseImage(img); err == nil && !d.FailBoot {
			return false
		}
	}
	m.d.log.Warn().Err(err).Str("version", m.boot.running).Int("boot_attempt", m.boot.attempts).
		Msg("fota: image on trial will fail its self-test")
	return true
}

// nextWake is when the task must look again without being woken: a chunk
// timeout, the fail-boot crash, the self-test deadline.
func (m *FOTAManager) nextWake(bootedAt time.Time, failBoot bool) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	at, ok := m.nextDeadlineLocked()
	if m.selfTest == selfTestRunning {
		t := bootedAt.Add(m.opt.SelfTestDeadline)
		if failBoot {
			t = bootedAt.Add(m.opt.FailBootDelay)
		}
		if !ok || t.Before(at) {
			at, ok = t, true
		}
	}
	return at, ok
}

// step does whatever is due; it returns true once a reboot is under way.
func (m *FOTAManager) step(ctx context.Context, bootedAt time.Time, failBoot bool) bool {
	m.mu.Lock()
	dead := m.dead
	m.mu.Unlock()
	if dead {
		return true
	}
	if m.reportEvent(ctx) || m.selfTestStep(ctx, bootedAt, failBoot) {
		return true
	}
	m.flush(ctx)
	m.mu.Lock()
	verify := m.rec.State == fota.StateVerifying
	m.mu.Unlock()
	if !verify && m.pump(ctx) {
		m.mu.Lock()
		m.setStateLocked(fota.StateVerifying, "", "")
		m.mu.Unlock()
		m.flush(ctx)
		verify = true
	}
	if verify {
		return m.verifyAndBoot(ctx)
	}
	return false
}

// flush publishes the queued statuses in order. One that cannot be sent is
// dropped: the device repeats its current state after every connect.
func (m *FOTAManager) flush(ctx context.Context) {
	for {
		m.mu.Lock()
		if len(m.outbox) == 0 {
			m.mu.Unlock()
			return
		}
		s := m.outbox[0]
		m.outbox = m.outbox[1:]
		m.mu.Unlock()
		if err := m.publishStatus(ctx, s); err != nil {
			m.d.log.Debug().Err(err).Str("state", string(s.State)).Msg("fota status not sent")
		}
	}
}

func (m *FOTAManager) publishStatus(ctx context.Context, s fota.Status) error {
	if !m.d.Online() {
		m.statusErrors.Add(1)
		return ErrOffline
	}
	if err := m.d.Publish(ctx, topics.KindFOTAStatus, fota.StatusBody{FotaStatus: &s}); err != nil {
		m.statusErrors.Add(1)
		return err
	}
	m.statusSent.Add(1)
	return nil
}

// reportEvent reports a rollback the bootloader (or an operator) made, once
// online, and then clears it from the boot record.
func (m *FOTAManager) reportEvent(ctx context.Context) bool {
	m.mu.Lock()
	ev := m.event
	s := m.statusLocked()
	m.mu.Unlock()
	if ev == nil || !m.d.Online() {
		return false
	}
	if err := m.publishStatus(ctx, s); err != nil {
		return false // again after the next connect
	}
	m.d.log.Info().Str("reason", ev.Reason).Str("from", ev.From).Str("running", s.Running).Msg("fota rollback reported")
	if err := m.d.UpdateBoot(func(b *BootRecord) error { b.Event = nil; return nil }); err != nil {
		m.d.log.Error().Err(err).Msg("fota: boot event not cleared; it will be reported again")
	}
	m.mu.Lock()
	m.event = nil
	m.mu.Unlock()
	return false
}

// selfTestStep runs the self-test of a pending-verify image: a fail-boot
// image crashes after FailBootDelay; a good one passes once it is online
// and has reported; past the deadline the device reboots (a failed boot).
func (m *FOTAManager) selfTestStep(ctx context.Context, bootedAt time.Time, failBoot bool) bool {
	m.mu.Lock()
	running := m.selfTest == selfTestRunning
	s := m.statusLocked()
	m.mu.Unlock()
	if !running {
		return false
	}
	now := m.d.clk.Now()
	switch {
	case failBoot && !now.Before(bootedAt.Add(m.opt.FailBootDelay)):
		m.d.Reboot("fota: self-test failed (crash)")
		return true
	case failBoot:
		return false
	case !now.Before(bootedAt.Add(m.opt.SelfTestDeadline)):
		s.State = fota.StateRebooting
		_ = m.publishStatus(ctx, s)
		m.d.Reboot("fota: self-test deadline passed")
		return true
	case !m.d.Online():
		return false
	}
	if err := m.publishStatus(ctx, s); err != nil {
		return false
	}
	err := m.d.UpdateBoot(func(b *BootRecord) error {
		if !b.PendingVerify {
			return errors.New("not pending verify")
		}
		si := b.Slots[b.ActiveSlot]
		si.State = SlotValid
		b.Slots[b.ActiveSlot] = si
		b.PendingVerify, b.BootAttempts = false, 0
		return nil
	})
	if err != nil {
		m.d.log.Error().Err(err).Msg("fota: image not marked valid")
		m.noteWriteError(err)
		return false
	}
	m.mu.Lock()
	m.selfTest = selfTestPassed
	m.boot.pending = false
	m.setStateLocked(fota.StateSucceeded, "", "")
	m.mu.Unlock()
	m.d.log.Info().Str("version", s.Version).Msg("fota self-test passed: image marked valid")
	return false
}

// verifyAndBoot checks the assembled image (PROTOCOL.md 12.8) and, if it
// is good, commits the boot order and reboots into the new slot.
func (m *FOTAManager) verifyAndBoot(ctx context.Context) bool {
	m.verifications.Add(1)
	m.mu.Lock()
	if m.man == nil {
		m.mu.Unlock()
		return false
	}
	man, slot := *m.man, m.rec.Slot
	m.mu.Unlock()

	if err := m.verify(man, slot); err != nil {
		m.d.log.Warn().Err(err).Str("version", man.Version).Msg("fota image refused")
		reason := fota.ReasonOf(err)
		if errors.Is(err, flash.ErrNotFound) || !errors.Is(err, fota.ErrImageHash) && reason == fota.ReasonOther {
			reason = fota.ReasonStorage
		}
		_ = m.d.UpdateBoot(func(b *BootRecord) error {
			b.Slots[slot] = SlotInfo{State: SlotInvalid, Version: man.Version}
			return nil
		})
		m.mu.Lock()
		m.setStateLocked(fota.StateFailed, reason, err.Error())
		m.man, m.bits = nil, nil
		dead := m.dead
		m.mu.Unlock()
		if dead {
			return true
		}
		m.flush(ctx)
		return false
	}
	for _, st := range []fota.State{fota.StateVerified, fota.StateRebooting} {
		m.mu.Lock()
		m.setStateLocked(st, "", "")
		dead := m.dead
		m.mu.Unlock()
		if dead {
			return true
		}
		m.flush(ctx)
	}
	err := m.d.UpdateBoot(func(b *BootRecord) error {
		prev := b.ActiveSlot
		if b.Slots[prev].State == SlotValid {
			b.PreviousSlot = prev
		} else {
			b.PreviousSlot = ""
		}
		b.Slots[slot] = SlotInfo{Version: man.Version, State: SlotPending}
		b.ActiveSlot, b.FirmwareVersion = slot, man.Version
		b.PendingVerify, b.BootAttempts, b.Event = true, 0, nil
		return nil
	})
	if err != nil {
		m.noteWriteError(err)
		if errors.Is(err, flash.ErrPowerCut) {
			return true // the device is dead until the power comes back
		}
		m.mu.Lock()
		m.setStateLocked(fota.StateFailed, fota.ReasonStorage, err.Error())
		m.mu.Unlock()
		m.flush(ctx)
		return false
	}
	m.d.log.Info().Str("version", man.Version).Str("slot", slot).Msg("fota: rebooting into the new image")
	m.d.Reboot("fota: boot " + man.Version)
	return true
}

// verify reads the slot back and checks size and SHA-256, the manifest
// signature again, and the app descriptor (version, project).
func (m *FOTAManager) verify(man fota.Manifest, slot string) error {
	img, err := m.d.fl.ReadFile(SlotFile(slot))
	if err != nil {
		return fmt.Errorf("read slot %s: %w", slot, err)
	}
	if int64(len(img)) < man.Size {
		return fmt.Errorf("%w: slot %s holds %d bytes, manifest says %d", fota.ErrImageHash, slot, len(img), man.Size)
	}
	img = img[:man.Size]
	if m.opt.PublicKey == nil {
		return errNoKey
	}
	if err := man.Verify(m.opt.PublicKey); err != nil {
		return err
	}
	d, err := man.VerifyImage(img)
	if err != nil {
		return err
	}
	switch {
	case d.ProjectName == "":
		return fmt.Errorf("verify image: %w: empty project name", fota.ErrBadImage)
	case m.opt.Project != "" && d.ProjectName != m.opt.Project:
		return fmt.Errorf("verify image: %w: project %q, this device runs %q", fota.ErrBadImage, d.ProjectName, m.opt.Project)
	}
	return nil
}

// noteWriteError counts a failed flash write.
func (m *FOTAManager) noteWriteError(err error) {
	m.mu.Lock()
	m.writeErrorLocked(err)
	m.mu.Unlock()
}

// handleRollback processes down/rollback (PROTOCOL.md 12.8): in a resting
// state, with a valid previous slot (of the named version, if any), mark
// the running slot invalid, make the previous one active and reboot; the
// rollback is reported after the boot. Otherwise report no_previous_slot
// and change nothing.
func (m *FOTAManager) handleRollback(_ context.Context, msg envelope.Message) error {
	defer m.wake()
	r, err := fota.ParseRollback(msg.Body)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dead {
		return nil
	}
	if err != nil {
		m.refuseLocked("", err)
		return fmt.Errorf("rollback refused: %w", err)
	}
	b := m.d.Boot()
	prev, ok := b.Slots[b.PreviousSlot]
	switch {
	case !m.rec.State.Stable():
		err = fmt.Errorf("%w: update in progress (%s %s)", errNoPrevious, m.rec.State, m.rec.Version)
	case b.PreviousSlot == "" || !ok || prev.State != SlotValid:
		err = fmt.Errorf("%w: running %s in slot %s, nothing to return to", errNoPrevious, b.FirmwareVersion, b.ActiveSlot)
	case r.Version != "" && r.Version != prev.Version:
		err = fmt.Errorf("%w: previous slot holds %s, not %s", errNoPrevious, prev.Version, r.Version)
	}
	if err != nil {
		m.refuseLocked("", err)
		return fmt.Errorf("rollback refused: %w", err)
	}
	err = m.d.UpdateBoot(func(b *BootRecord) error {
		from := b.FirmwareVersion
		b.Slots[b.ActiveSlot] = SlotInfo{Version: from, State: SlotInvalid}
		b.ActiveSlot, b.FirmwareVersion = b.PreviousSlot, prev.Version
		b.PreviousSlot, b.PendingVerify, b.BootAttempts = "", false, 0
		b.Event = &BootEvent{State: string(fota.StateRolledBack), Reason: fota.ReasonManual, Detail: r.Reason, From: from}
		return nil
	})
	if err != nil {
		m.writeErrorLocked(err)
		return fmt.Errorf("rollback: %w", err)
	}
	m.d.log.Info().Str("to", prev.Version).Str("reason", r.Reason).Msg("fota manual rollback: rebooting")
	m.d.Reboot("fota: manual rollback to " + prev.Version)
	return nil
}
