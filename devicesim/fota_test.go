package devicesim

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// TestFOTAUpdate: a 1 MiB image downloads in a window of at most 4
// chunks, each fetched once, with progress at least every 5 %; the device
// verifies it, reboots into slot b on trial, passes its self-test, and
// reports succeeded; its birth carries the new version.
func TestFOTAUpdate(t *testing.T) {
	g := newFOTARig(t, "fota-1", 31)
	img, man := testImage(t, "1.0.4", 1<<20, fota.DefaultChunkSize, false, g.priv)
	g.be.add("1.0.4", img, man.ChunkSize)
	g.boot(nil)
	if b := g.lastBirth(); b.FirmwareVersion != DefaultFirmwareVersion || b.Slot != SlotA {
		t.Fatalf("first birth = %+v", b)
	}
	g.be.sendManifest(man)
	g.waitStatus("succeeded", stateIs(fota.StateSucceeded, "1.0.4"))

	b := g.lastBirth()
	if b.FirmwareVersion != "1.0.4" || b.Slot != SlotB || b.BootCount != 2 {
		t.Errorf("birth after the update = %+v", b.Birth)
	}
	total, distinct := g.be.sentCounts("1.0.4")
	if total != 64 || distinct != 64 {
		t.Errorf("backend sent %d chunks (%d distinct), want each of 64 once", total, distinct)
	}
	if g.be.maxReq > fota.DefaultWindow {
		t.Errorf("a request named %d chunks, window is %d", g.be.maxReq, fota.DefaultWindow)
	}
	s := g.m.Stats()
	if s.State != fota.StateSucceeded || s.Running != "1.0.4" || s.Written != 64 || s.Refetched != 0 ||
		s.BadChunks != 0 || s.Requested != 64 || s.Downloads != 1 {
		t.Errorf("stats = %+v", s)
	}

	// The states in order, and progress at least every 5 % (64/20 -> 3).
	var states []fota.State
	last := 0
	for _, st := range g.statuses() {
		if len(states) == 0 || states[len(states)-1] != st.State {
			states = append(states, st.State)
		}
		if st.State == fota.StateDownloading {
			if st.ChunkReceived-last > 3 {
				t.Errorf("progress jumped from %d to %d chunks", last, st.ChunkReceived)
			}
			last = st.ChunkReceived
			if st.TotalChunks != 64 || st.Running != DefaultFirmwareVersion {
				t.Errorf("progress status = %+v", st)
			}
		}
	}
	want := []fota.State{fota.StateDownloading, fota.StateVerifying, fota.StateVerified, fota.StateRebooting,
		fota.StatePendingVerify, fota.StateSucceeded}
	if !slices.Equal(states, want) || last != 64 {
		t.Errorf("states = %v (last progress %d), want %v", states, last, want)
	}
	for i := 1; i < len(states); i++ {
		if !fota.CanTransition(states[i-1], states[i]) {
			t.Errorf("transition %s -> %s not allowed", states[i-1], states[i])
		}
	}
	br := g.bootRecord()
	if br.ActiveSlot != SlotB || br.PendingVerify || br.PreviousSlot != SlotA ||
		br.Slots[SlotB] != (SlotInfo{Version: "1.0.4", State: SlotValid}) || br.Event != nil {
		t.Errorf("boot record = %+v", br)
	}

	// The same manifest again (a backend re-sends after a birth): the
	// device repeats succeeded rather than refusing its own image.
	n := len(g.statuses())
	g.be.sendManifest(man)
	g.waitFor("repeated status", func() bool { return len(g.statuses()) > n })
	if st := g.statuses()[n]; st.State != fota.StateSucceeded || st.Version != "1.0.4" || st.ChunkReceived != 64 {
		t.Errorf("manifest of the installed image: %+v", st)
	}
	if s := g.m.Stats(); s.Refused != 0 || s.Downloads != 1 {
		t.Errorf("stats after the repeated manifest = %+v", s)
	}
	g.r.stop(t)
	checkNoLeak(t)
}

// TestFOTAManualRollback: after an update, down/rollback returns to the
// previous slot without a download; a second one has nothing to return to.
func TestFOTAManualRollback(t *testing.T) {
	g := newFOTARig(t, "fota-rb", 32)
	img, man := testImage(t, "1.0.4", 40<<10, 4<<10, false, g.priv)
	g.be.add("1.0.4", img, man.ChunkSize)
	g.boot(nil)
	g.be.sendManifest(man)
	g.waitStatus("succeeded", stateIs(fota.StateSucceeded, "1.0.4"))
	sent, _ := g.be.sentCounts("1.0.4")

	// A rollback naming another version is refused.
	g.be.send(topics.KindRollback, []byte(`{"rollback":{"reason":"wrong","version":"0.9.0"}}`))
	st := g.waitStatus("refused rollback", stateIs(fota.StateFailed, ""))
	if st.Reason != fota.ReasonNoPrevious || st.Running != "1.0.4" {
		t.Errorf("rollback to a version not held: %+v", st)
	}
	g.be.send(topics.KindRollback, []byte(`{"rollback":{"reason":"operator: bad telemetry","version":"1.0.0"}}`))
	st = g.waitStatus("rolled_back", stateIs(fota.StateRolledBack, ""))
	if st.Reason != fota.ReasonManual || st.Detail != "operator: bad telemetry" || st.Version != "1.0.4" ||
		st.Running != DefaultFirmwareVersion {
		t.Errorf("rollback status = %+v", st)
	}
	if b := g.lastBirth(); b.FirmwareVersion != DefaultFirmwareVersion || b.Slot != SlotA || b.BootCount != 3 {
		t.Errorf("birth after rollback = %+v", b.Birth)
	}
	if now, _ := g.be.sentCounts("1.0.4"); now != sent {
		t.Errorf("rollback downloaded %d chunks", now-sent)
	}
	g.waitFor("event cleared", func() bool { return g.bootRecord().Event == nil })
	br := g.bootRecord()
	if br.ActiveSlot != SlotA || br.PreviousSlot != "" || br.Slots[SlotB].State != SlotInvalid {
		t.Errorf("boot record = %+v", br)
	}
	// Nothing left to roll back to.
	n := len(g.statuses())
	g.be.send(topics.KindRollback, []byte(`{"rollback":{"reason":"again"}}`))
	g.waitFor("second rollback refused", func() bool { return len(g.statuses()) > n })
	if st := g.statuses()[n]; st.State != fota.StateFailed || st.Reason != fota.ReasonNoPrevious {
		t.Errorf("second rollback: %+v", st)
	}
	if g.d.Stats().BootCount != 3 {
		t.Errorf("refused rollback rebooted: boot count %d", g.d.Stats().BootCount)
	}
	// A newer version installs again over the invalid slot.
	img5, man5 := testImage(t, "1.0.5", 20<<10, 4<<10, false, g.priv)
	g.be.add("1.0.5", img5, man5.ChunkSize)
	g.be.sendManifest(man5)
	g.waitStatus("1.0.5 succeeded", stateIs(fota.StateSucceeded, "1.0.5"))
	if b := g.lastBirth(); b.FirmwareVersion != "1.0.5" || b.Slot != SlotB {
		t.Errorf("birth after 1.0.5 = %+v", b.Birth)
	}
}

// TestFOTADisconnectResume: a disconnect in the middle of a download
// resumes from the bitmap after reconnecting; no more than one window is
// fetched again, and a repeated manifest resumes rather than restarts.
func TestFOTADisconnectResume(t *testing.T) {
	g := newFOTARig(t, "fota-dc", 33)
	img, man := testImage(t, "1.0.4", 256<<10, 4<<10, false, g.priv)
	g.be.add("1.0.4", img, man.ChunkSize)
	g.boot(nil)
	kicked := make(chan struct{})
	g.be.setHooks(func(idx, n int, _ *fota.Chunk) bool {
		if idx == 20 && n == 0 {
			g.b.kick(g.id) // the rest of this request is lost with the connection
			close(kicked)
		}
		return true
	}, nil)
	g.be.sendManifest(man)
	<-kicked
	g.waitFor("offline", func() bool { return !g.d.Online() })
	g.advanceUntil("reconnect", 50*time.Millisecond, g.d.Online)
	g.be.sendManifest(man) // the backend re-sends after a birth: harmless
	g.waitStatus("succeeded", stateIs(fota.StateSucceeded, "1.0.4"))

	total, distinct := g.be.sentCounts("1.0.4")
	if distinct != 64 || total-distinct > fota.DefaultWindow {
		t.Errorf("sent %d chunks for 64: %d fetched again, at most one window (%d) allowed", total, total-distinct, fota.DefaultWindow)
	}
	s := g.m.Stats()
	if s.Refetched > fota.DefaultWindow || s.Downloads != 1 || s.Resumes < 2 || s.Written != 64 {
		t.Errorf("stats = %+v", s)
	}
	if g.d.Stats().Reconnects < 1 {
		t.Errorf("device stats = %+v", g.d.Stats())
	}
}

// TestFOTAPowerCut: a power cut at each critical write of a download
// resumes correctly at the next boot, fetching at most one window again.
func TestFOTAPowerCut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prefix string // the cut hits the n-th write of this file from the manifest on
		step   flash.Step
		n      int
	}{
		{"during a chunk write", "slot_", flash.StepWrite, 10},
		{"before the chunk's bit is persisted", FileFOTABitmap, flash.StepRename, 12},
		{"entering verification", RecordFOTA + ".json", flash.StepRename, 2},
		{"recording verified", RecordFOTA + ".json", flash.StepSync, 3},
		{"committing the boot order", RecordBoot + ".json", flash.StepRename, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFOTARig(t, "fota-pc", 34)
			img, man := testImage(t, "1.0.4", 64<<10, 4<<10, false, g.priv)
			g.be.add("1.0.4", img, man.ChunkSize)
			fl, err := flash.Open(g.dir)
			if err != nil {
				t.Fatal(err)
			}
			g.boot(fl)
			cut := &flash.PowerCut{Prefix: tc.prefix, Step: tc.step, N: tc.n}
			fl.SetFault(cut.Fault)
			g.be.sendManifest(man)
			g.waitFor("power cut", cut.Hit)
			time.Sleep(50 * time.Millisecond) // let whatever was in flight land on the dead device
			g.r.stop(t)
			if g.d.Boot().FirmwareVersion != DefaultFirmwareVersion {
				t.Fatalf("switched firmware before the power cut: %+v", g.d.Boot())
			}

			g.boot(nil) // power restored: a fresh flash handle, no fault
			g.waitStatus("succeeded", stateIs(fota.StateSucceeded, "1.0.4"))
			if b := g.lastBirth(); b.FirmwareVersion != "1.0.4" || b.Slot != SlotB {
				t.Errorf("birth = %+v", b.Birth)
			}
			total, distinct := g.be.sentCounts("1.0.4")
			if distinct != 16 || total-distinct > fota.DefaultWindow {
				t.Errorf("sent %d chunks for 16: at most one window may be fetched again", total)
			}
			g.r.stop(t)
		})
	}
}

// TestFOTACorruptChunk: a chunk corrupted in transit is refused before it
// is written and fetched again: at once when it arrives with a valid MAC
// but the wrong hash, after the request timeout when the envelope itself
// is damaged (the runtime drops it).
func TestFOTACorruptChunk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		onChunk   func(int, int, *fota.Chunk) bool
		onFrame   func(int, int, []byte) []byte
		bad       int64 // chunks the FOTA manager refuses
		rejected  int64 // envelopes the runtime refuses
		advancing bool  // needs the request timeout
	}{
		{name: "bad hash, valid MAC", onChunk: func(i, n int, c *fota.Chunk) bool {
			if i == 5 && n == 0 {
				c.Data[100] ^= 0xFF
			}
			return true
		}, bad: 1},
		{name: "damaged envelope", onFrame: func(i, n int, f []byte) []byte {
			switch {
			case i == 5 && n == 0:
				f[200] ^= 0xFF
			case i == 5 && n == 1:
				// A slow resend (as under CPU load): no device time passes
				// meanwhile, so it must not be timed out and asked again.
				time.Sleep(300 * time.Millisecond)
			}
			return f
		}, rejected: 1, advancing: true},
		{name: "lost chunk", onChunk: func(i, n int, _ *fota.Chunk) bool { return i != 5 || n != 0 }, advancing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFOTARig(t, "fota-cc", 35)
			img, man := testImage(t, "1.0.4", 64<<10, 4<<10, false, g.priv)
			g.be.add("1.0.4", img, man.ChunkSize)
			g.boot(nil)
			g.be.setHooks(tc.onChunk, tc.onFrame)
			g.be.sendManifest(man)
			done := func() bool { return g.hasState(fota.StateSucceeded, "1.0.4") }
			var timeouts int64
			if tc.advancing {
				g.expireChunk(5)
				timeouts = 1
			}
			g.waitFor("succeeded", done)
			if n := g.be.sentIndex("1.0.4", 5); n != 2 {
				t.Errorf("chunk 5 sent %d times, want 2", n)
			}
			s := g.m.Stats()
			if s.BadChunks != tc.bad || s.Written != 16 {
				t.Errorf("stats = %+v", s)
			}
			if s.Timeouts != timeouts {
				t.Errorf("%d timeouts counted, want %d: %+v", s.Timeouts, timeouts, s)
			}
			if r := g.d.Stats().Rejected; r != tc.rejected {
				t.Errorf("runtime rejected %d downlinks, want %d", r, tc.rejected)
			}
			if tc.bad > 0 {
				st := g.waitStatus("bad_chunk report", func(s fota.Status) bool { return s.Reason == fota.ReasonBadChunk })
				if st.State != fota.StateDownloading {
					t.Errorf("bad chunk report = %+v", st)
				}
			}
		})
	}
}

// TestFOTAFailBoot: an image that fails its self-test is booted three
// times, then the bootloader returns to the previous slot and the device
// reports rolled_back (boot_failed); the bad image never reports.
func TestFOTAFailBoot(t *testing.T) {
	g := newFOTARig(t, "fota-fb", 36)
	img, man := testImage(t, "1.0.4", 32<<10, 4<<10, true, g.priv)
	g.be.add("1.0.4", img, man.ChunkSize)
	g.boot(nil)
	g.be.sendManifest(man)
	g.waitStatus("rebooting", stateIs(fota.StateRebooting, "1.0.4"))
	g.advanceUntil("rolled_back", 250*time.Millisecond, func() bool { return g.hasState(fota.StateRolledBack, "1.0.4") })
	st := g.waitStatus("rolled_back", stateIs(fota.StateRolledBack, "1.0.4"))
	if st.Reason != fota.ReasonBootFailed || st.Running != DefaultFirmwareVersion {
		t.Errorf("rollback status = %+v", st)
	}
	if g.hasState(fota.StatePendingVerify, "") || g.hasState(fota.StateSucceeded, "") {
		t.Error("the fail-boot image reported")
	}
	g.waitFor("birth of the old version", func() bool { return g.lastBirth().FirmwareVersion == DefaultFirmwareVersion })
	if b := g.lastBirth(); b.Slot != SlotA || b.BootCount != 2+fota.MaxBootAttempts {
		t.Errorf("birth after rollback = %+v (want boot %d)", b.Birth, 2+fota.MaxBootAttempts)
	}
	br := g.bootRecord()
	if br.ActiveSlot != SlotA || br.PendingVerify || br.PreviousSlot != "" ||
		br.Slots[SlotB] != (SlotInfo{Version: "1.0.4", State: SlotInvalid}) {
		t.Errorf("boot record = %+v", br)
	}
	g.waitFor("event cleared", func() bool { return g.bootRecord().Event == nil })
	if s := g.m.Stats(); s.State != fota.StateRolledBack || s.Running != DefaultFirmwareVersion {
		t.Errorf("stats = %+v", s)
	}
}

// TestFOTABadInputs: each bad input is rejected and reported as a failure
// with its reason, and leaves the running firmware untouched.
func TestFOTABadInputs(t *testing.T) {
	_, otherPriv := fotaKey(99)
	for _, tc := range []struct {
		name   string
		opt    func(*FOTAOptions)
		send   func(g *fotaRig) // sends the bad input
		reason string
		// version is the failure's version: the refused manifest's when
		// it parsed, so the backend ends the update that offered it.
		version string
	}{
		{name: "bad signature", send: func(g *fotaRig) {
			_, m := testImage(g.t, "1.0.4", 8<<10, 4<<10, false, g.priv)
			m.Size-- // tampered after signing
			m.Chunks[1] = m.Chunks[0]
			g.be.sendManifest(m)
		}, reason: fota.ReasonBadSignature, version: "1.0.4"},
		{name: "signed by the wrong key", send: func(g *fotaRig) {
			_, m := testImage(g.t, "1.0.4", 8<<10, 4<<10, false, otherPriv)
			g.be.sendManifest(m)
		}, reason: fota.ReasonBadSignature, version: "1.0.4"},
		{name: "no firmware key on the device", opt: func(o *FOTAOptions) { o.PublicKey = nil }, send: func(g *fotaRig) {
			_, m := testImage(g.t, "1.0.4", 8<<10, 4<<10, false, g.priv)
			g.be.sendManifest(m)
		}, reason: fota.ReasonBadSignature, version: "1.0.4"},
		{name: "downgrade", send: func(g *fotaRig) {
			_, m := testImage(g.t, "0.9.9", 8<<10, 4<<10, false, g.priv)
			g.be.sendManifest(m)
		}, reason: fota.ReasonDowngrade, version: "0.9.9"},
		{name: "same version", send: func(g *fotaRig) {
			_, m := testImage(g.t, DefaultFirmwareVersion, 8<<10, 4<<10, false, g.priv)
			g.be.sendManifest(m)
		}, reason: fota.ReasonDowngrade, version: DefaultFirmwareVersion},
		{name: "oversized image", opt: func(o *FOTAOptions) { o.SlotSize = 16 << 10 }, send: func(g *fotaRig) {
			_, m := testImage(g.t, "1.0.4", 17<<10, 4<<10, false, g.priv)
			g.be.sendManifest(m)
		}, reason: fota.ReasonTooLarge, version: "1.0.4"},
		{name: "malformed manifest", send: func(g *fotaRig) {
			g.be.send(topics.KindFOTAManifest, []byte(`{"fota_manifest":{"version":"1.0.4","Size":1}}`))
		}, reason: fota.ReasonMalformed, version: DefaultFirmwareVersion},
		{name: "truncated image", send: func(g *fotaRig) {
			img, _ := testImage(g.t, "1.0.4", 16<<10, 4<<10, false, g.priv)
			img = img[:10<<10]
			g.be.add("1.0.4", img, 4<<10)
			g.be.sendManifest(rawManifest(g.t, img, "1.0.4", 4<<10, g.priv))
		}, reason: fota.ReasonBadImage, version: "1.0.4"},
		{name: "image without a valid descriptor", send: func(g *fotaRig) {
			img, _ := testImage(g.t, "1.0.4", 16<<10, 4<<10, false, g.priv)
			img[32] ^= 0xFF // esp_app_desc_t.magic_word
			g.be.add("1.0.4", img, 4<<10)
			g.be.sendManifest(rawManifest(g.t, img, "1.0.4", 4<<10, g.priv))
		}, reason: fota.ReasonBadImage, version: "1.0.4"},
		{name: "descriptor names another version", send: func(g *fotaRig) {
			img, _ := testImage(g.t, "1.0.3", 16<<10, 4<<10, false, g.priv)
			g.be.add("1.0.4", img, 4<<10)
			g.be.sendManifest(rawManifest(g.t, img, "1.0.4", 4<<10, g.priv))
		}, reason: fota.ReasonVersionMismatch, version: "1.0.4"},
		{name: "rollback with no previous slot", send: func(g *fotaRig) {
			g.be.send(topics.KindRollback, []byte(`{"rollback":{"reason":"operator"}}`))
		}, reason: fota.ReasonNoPrevious, version: DefaultFirmwareVersion},
		{name: "malformed rollback", send: func(g *fotaRig) {
			g.be.send(topics.KindRollback, []byte(`{"rollback":{"reason":"x","Version":"1"}}`))
		}, reason: fota.ReasonMalformed, version: DefaultFirmwareVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFOTARig(t, "fota-bad", 37)
			if tc.opt != nil {
				tc.opt(&g.opt)
			}
			g.boot(nil)
			tc.send(g)
			st := g.waitStatus("failure", stateIs(fota.StateFailed, ""))
			if st.Reason != tc.reason || st.Detail == "" || st.Running != DefaultFirmwareVersion || st.Version != tc.version {
				t.Errorf("status = %+v, want failed with reason %s, version %s", st, tc.reason, tc.version)
			}
			time.Sleep(50 * time.Millisecond)
			b := g.d.Boot()
			if b.FirmwareVersion != DefaultFirmwareVersion || b.ActiveSlot != SlotA || b.BootCount != 1 || b.PendingVerify {
				t.Errorf("running firmware touched: %+v", b)
			}
			if s := g.m.Stats(); s.State != fota.StateFailed || s.Reason != tc.reason {
				t.Errorf("stats = %+v", s)
			}
			if bs := g.b.signedBirths(g.id, g.keys); len(bs) != 1 {
				t.Errorf("%d births: the device rebooted", len(bs))
			}
		})
	}
}

// TestFOTAForeignChunk: a chunk of another firmware is refused before it
// is written and reported (bad_chunk, no state change); the real one is
// requested again after the timeout and the update completes.
func TestFOTAForeignChunk(t *testing.T) {
	g := newFOTARig(t, "fota-fc", 38)
	img, man := testImage(t, "1.0.4", 32<<10, 4<<10, false, g.priv)
	other, _ := testImage(t, "1.0.5", 32<<10, 4<<10, false, g.priv)
	g.be.add("1.0.4", img, man.ChunkSize)
	g.be.setHooks(func(i, n int, c *fota.Chunk) bool {
		if i == 3 && n == 0 {
			c.Version, c.Data = "1.0.5", other[3*4096:4*4096]
		}
		return true
	}, nil)
	g.boot(nil)
	g.be.sendManifest(man)
	st := g.waitStatus("bad_chunk", func(s fota.Status) bool { return s.Reason == fota.ReasonBadChunk })
	if st.State != fota.StateDownloading || !strings.Contains(st.Detail, "1.0.5") {
		t.Errorf("report = %+v", st)
	}
	if b := g.d.Boot(); b.FirmwareVersion != DefaultFirmwareVersion {
		t.Errorf("running firmware touched: %+v", b)
	}
	g.expireChunk(3)
	g.waitFor("succeeded", func() bool { return g.hasState(fota.StateSucceeded, "1.0.4") })
	if s := g.m.Stats(); s.BadChunks != 1 || s.Timeouts != 1 || s.Written != 8 {
		t.Errorf("stats = %+v", s)
	}
}

// TestBootload: the bootloader's decision table.
func TestBootload(t *testing.T) {
	valid := func(v string) SlotInfo { return SlotInfo{Version: v, State: SlotValid} }
	pending := SlotInfo{Version: "2.0", State: SlotPending}
	for _, tc := range []struct {
		name string
		in   BootRecord
		want BootRecord
	}{
		{"factory", BootRecord{ActiveSlot: SlotA, FirmwareVersion: "1.0"},
			BootRecord{ActiveSlot: SlotA, FirmwareVersion: "1.0", Slots: map[string]SlotInfo{SlotA: valid("1.0")}}},
		{"first trial boot",
			BootRecord{ActiveSlot: SlotB, FirmwareVersion: "2.0", PendingVerify: true, PreviousSlot: SlotA,
				Slots: map[string]SlotInfo{SlotA: valid("1.0"), SlotB: pending}},
			BootRecord{ActiveSlot: SlotB, FirmwareVersion: "2.0", PendingVerify: true, PreviousSlot: SlotA, BootAttempts: 1,
				Slots: map[string]SlotInfo{SlotA: valid("1.0"), SlotB: pending}}},
		{"third failure rolls back",
			BootRecord{ActiveSlot: SlotB, FirmwareVersion: "2.0", PendingVerify: true, PreviousSlot: SlotA, BootAttempts: 3,
				Slots: map[string]SlotInfo{SlotA: valid("1.0"), SlotB: pending}},
			BootRecord{ActiveSlot: SlotA, FirmwareVersion: "1.0",
				Slots: map[string]SlotInfo{SlotA: valid("1.0"), SlotB: {Version: "2.0", State: SlotInvalid}},
				Event: &BootEvent{State: "rolled_back", Reason: fota.ReasonBootFailed, From: "2.0",
					Detail: "2.0 failed its self-test 3 times"}}},
		{"no previous slot: keep trying",
			BootRecord{ActiveSlot: SlotB, FirmwareVersion: "2.0", PendingVerify: true, BootAttempts: 3,
				Slots: map[string]SlotInfo{SlotB: pending}},
			BootRecord{ActiveSlot: SlotB, FirmwareVersion: "2.0", PendingVerify: true, BootAttempts: 4,
				Slots: map[string]SlotInfo{SlotB: pending}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.Clone()
			bootload(&got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("bootload =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

// TestAttachFOTAOptions: bad options are refused.
func TestAttachFOTAOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  FOTAOptions
	}{
		{"window too large", FOTAOptions{Window: fota.MaxWindow + 1}},
		{"slot too large", FOTAOptions{SlotSize: fota.MaxImageSize + 1}},
		{"short public key", FOTAOptions{PublicKey: make([]byte, 5)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(Config{ID: "opt", Key: testKey(1), Broker: "tcp://127.0.0.1:1", StateDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := AttachFOTA(d, tc.opt); err == nil {
				t.Fatal("AttachFOTA accepted bad options")
			}
		})
	}
}
